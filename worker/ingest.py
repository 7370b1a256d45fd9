"""Turning a chunk of items into searchable vectors: read, validate, resize, embed, store.

Plain functions over a `Context`, so they run the same in a Celery task and in a test. A
chunk holds up to one model batch (`Settings.ingest_chunk`): its images go to the model server in
one Predict call, and several chunks in flight on a worker keep decoding and inference overlapped.

Idempotent: the image id is the SHA-256 of the bytes, files are written by atomic rename, vectors
and job counters ignore repeats. A chunk interrupted anywhere can simply run again.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services import files, images
from services.index import find_near_duplicate
from services.sources import SourceError, fetch_url
from services.store import image_id
from services.context import Context

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One thing to index, as passed to tasks (JSON): where the bytes are and what to call them."""
    key: str                  # unique within its job: counts the item once however often it runs
    source: str               # shown to people: file name, path or URL
    path: str | None = None   # a local file (directory job, extracted archive, saved upload)
    url: str | None = None
    label: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class _Ready:
    item: Item
    image_id: str
    array: np.ndarray


def read_bytes(ctx: Context, item: Item) -> bytes:
    if item.url:
        s = ctx.settings
        return fetch_url(item.url, max_bytes=s.max_upload_mb * 1024 * 1024, timeout_s=s.url_timeout_s,
                         allow_private=s.allow_private_urls).content
    return Path(item.path).read_bytes()


def _prepare(ctx: Context, job_id: str, item: Item, size: int) -> _Ready | None:
    """Everything before the model; None when the item is finished here (failed or duplicate)."""
    store, data_dir = ctx.store, ctx.settings.data_dir
    try:
        data = read_bytes(ctx, item)
        image = images.decode(data, ctx.settings.max_image_pixels, draft_for=size)
    except (images.ImageError, SourceError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        store.job_progress(job_id, item.key, failed=1, error=message)
        return None
    iid = image_id(data)
    files.write_atomic(files.original_path(data_dir, iid), data)
    files.write_atomic(files.thumbnail_path(data_dir, iid), images.thumbnail_jpeg(image))
    width, height = image.info["original_size"]
    created = store.create_image(iid, source=item.source, label=item.label, width=width, height=height,
                                 format=images.sniff_format(data), size_bytes=len(data))
    if not created and (store.get_image(iid) or {}).get("status") == "indexed":
        store.job_progress(job_id, item.key, done=1, duplicates=1)
        return None
    return _Ready(item, iid, images.prepare(image, size))


def ingest_chunk(ctx: Context, job_id: str, items: list[Item]) -> dict:
    """Index `items`; returns counts. Model-server errors propagate (the task retries them)."""
    info = ctx.model.info()
    ready: dict[str, _Ready] = {}
    for item in items:
        r = _prepare(ctx, job_id, item, info.input_size[0])
        if r and r.image_id in ready:  # the same bytes twice in one chunk
            ctx.store.job_progress(job_id, item.key, done=1, duplicates=1)
        elif r:
            ready[r.image_id] = r
    ready = list(ready.values())
    near = 0
    if ready:
        vectors = ctx.model.embed(np.stack([r.array for r in ready]))
        near = _store_vectors(ctx, job_id, ready, vectors, info.key)
    _remove_incoming(ctx, items)
    job = ctx.store.get_job(job_id)
    if job and job["state"] == "done":
        log.info("job %s done: %d indexed, %d failed", job_id, job["done"], job["failed"])
    return {"embedded": len(ready), "near_duplicates": near}


def _remove_incoming(ctx: Context, items: list[Item]) -> None:
    """Uploads and extracted archive members wait in incoming/ until their chunk is done."""
    incoming = files.incoming_dir(ctx.settings.data_dir).resolve()
    for item in items:
        if item.path and Path(item.path).resolve().is_relative_to(incoming):
            Path(item.path).unlink(missing_ok=True)


def _store_vectors(ctx: Context, job_id: str, ready: list[_Ready], vectors: np.ndarray,
                   model_key: str) -> int:
    store, threshold = ctx.store, ctx.settings.near_duplicate_threshold
    # Near-duplicates: against what is already searchable, and within this chunk.
    matches = []
    for i, r in enumerate(ready):
        match = find_near_duplicate(ctx.searcher, vectors[i], threshold, exclude=r.image_id)
        if match is None and i:
            scores = vectors[:i] @ vectors[i]
            j = int(np.argmax(scores))
            if scores[j] >= threshold and ready[j].image_id != r.image_id:
                match = (ready[j].image_id, float(scores[j]))
        matches.append(match)
    store.put_vectors(model_key, [r.image_id for r in ready], vectors)
    near = 0
    for r, match in zip(ready, matches):
        if match:
            store.update_image(r.image_id, near_duplicate_of=match[0])
            near += 1
        store.job_progress(job_id, r.item.key, done=1, near_duplicates=int(match is not None))
    return near
