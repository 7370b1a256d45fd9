"""Turning a chunk of items into searchable vectors: read, validate, resize, embed, store.

Plain functions over a `Context`, so they run the same in a Celery task and in a test. A chunk
holds up to one model batch (`Settings.ingest_chunk`): its images go to the model server in one
Predict call, and several chunks in flight on a worker keep decoding and inference overlapped.
Redis is written in a few pipelined round trips per chunk, not per image. Thumbnails are made by
the gateway when first asked for (most images are never shown), which keeps them off this path.

Idempotent: the image id is the SHA-256 of the bytes, files are written by atomic rename, vectors
and job counters ignore repeats. A chunk interrupted anywhere can simply run again.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services import files, images, copy_detection
from services.context import Context
from services.index import near_duplicate
from services.sources import SourceError, fetch_with_settings
from services.store import image_id
from worker.metrics import BATCH_IMAGES, MODEL_SECONDS

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
class _Decoded:
    item: Item
    image_id: str
    array: np.ndarray
    meta: dict


def read_bytes(ctx: Context, item: Item) -> bytes:
    if item.url:
        return fetch_with_settings(item.url, ctx.settings)
    return Path(item.path).read_bytes()


def _decode(ctx: Context, item: Item, size: int) -> _Decoded | dict:
    """The model input and record of one item, or the job update that reports its failure."""
    try:
        data = read_bytes(ctx, item)
        image = images.decode(data, ctx.settings.max_image_pixels, draft_for=size)
    except (images.ImageError, SourceError, OSError) as exc:
        return {"item": item.key, "failed": 1, "error": getattr(exc, "message", None) or str(exc)}
    iid = image_id(data)
    files.write_atomic(files.original_path(ctx.settings.data_dir, iid), data)
    width, height = image.info["original_size"]
    meta = {"source": item.source, "label": item.label, "width": width, "height": height,
            "format": image.info["source_format"], "size_bytes": len(data)}
    return _Decoded(item, iid, images.prepare(image, size), meta)


def ingest_chunk(ctx: Context, job_id: str, items: list[Item]) -> dict:
    """Index `items`; returns counts. Model-server errors propagate (the task retries them)."""
    store, info = ctx.store, ctx.model.info()
    decoded, updates = [], []
    for item in items:
        result = _decode(ctx, item, info.input_size[0])
        (decoded if isinstance(result, _Decoded) else updates).append(result)

    created = store.create_images([(d.image_id, d.meta) for d in decoded])
    existing = store.get_images([d.image_id for d, new in zip(decoded, created) if not new])
    status = {r["id"]: r["status"] for r in existing if r}
    todo: dict[str, _Decoded] = {}
    for d in decoded:
        if status.get(d.image_id) == "indexed" or d.image_id in todo:  # indexed before, or twice here
            updates.append({"item": d.item.key, "done": 1, "duplicates": 1})
        else:
            todo[d.image_id] = d
    near = 0
    if todo:
        ready = list(todo.values())
        batch = np.stack([d.array for d in ready])
        with MODEL_SECONDS.time():
            vectors = ctx.model.embed(batch)
        BATCH_IMAGES.observe(len(ready))
        ctx.store.put_layouts(info.key, [d.image_id for d in ready], copy_detection.index_layouts(batch))
        near = _store_vectors(ctx, job_id, ready, vectors, info.key, updates)
    store.job_progress_many(job_id, updates)
    _remove_incoming(ctx, items)
    return {"embedded": len(todo), "near_duplicates": near}


def _near_duplicates(ctx: Context, ready: list[_Decoded], vectors: np.ndarray) -> list[str | None]:
    """For each new vector, an image it nearly duplicates: among what is searchable, or earlier in
    this chunk."""
    threshold = ctx.settings.near_duplicate_threshold
    found = []
    for i, hits in enumerate(ctx.searcher.search_many(vectors, k=2)):
        found_one = near_duplicate(hits, threshold, exclude=ready[i].image_id)
        match = found_one[0] if found_one else None
        if match is None and i:
            scores = vectors[:i] @ vectors[i]
            j = int(np.argmax(scores))
            if scores[j] >= threshold:
                match = ready[j].image_id
        found.append(match)
    return found


def _store_vectors(ctx: Context, job_id: str, ready: list[_Decoded], vectors: np.ndarray, model_key: str,
                   updates: list[dict]) -> int:
    matches = _near_duplicates(ctx, ready, vectors)
    ctx.store.put_vectors(model_key, [d.image_id for d in ready], vectors)
    found = []
    for d, match in zip(ready, matches):
        if match:
            found.append({"item": d.item.source, "id": d.image_id, "near_duplicate_of": match})
        updates.append({"item": d.item.key, "done": 1, "near_duplicates": int(match is not None)})
    if found:
        ctx.store.update_images([(f["id"], {"near_duplicate_of": f["near_duplicate_of"]}) for f in found])
        ctx.store.record_near_duplicates(job_id, found)
    return len(found)


def _remove_incoming(ctx: Context, items: list[Item]) -> None:
    """Uploads and extracted archive members wait in incoming/ until their chunk is done."""
    incoming = files.incoming_dir(ctx.settings.data_dir).resolve()
    for item in items:
        if item.path and Path(item.path).resolve().is_relative_to(incoming):
            Path(item.path).unlink(missing_ok=True)
