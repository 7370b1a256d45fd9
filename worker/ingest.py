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

from services import copy_detection, files, images, verdicts, verify
from services.context import Context
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
    features: bytes  # packed ORB keypoints (services/verify.py)


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
    return _Decoded(item, iid, images.prepare(image, size), meta, verify.pack(verify.features(images.to_rgb(image))))


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
        layouts = copy_detection.index_layouts(batch)
        ctx.store.put_layouts(info.key, [d.image_id for d in ready], layouts)
        ctx.store.put_features([d.image_id for d in ready], [d.features for d in ready])
        near = _store_vectors(ctx, job_id, ready, vectors, layouts, info.key, updates)
    store.job_progress_many(job_id, updates)
    _remove_incoming(ctx, items)
    return {"embedded": len(todo), "near_duplicates": near}


NEAR_CANDIDATES = 3  # nearest images by cosine that are judged for each new one


def _near_duplicates(ctx: Context, ready: list[_Decoded], vectors: np.ndarray, layouts: np.ndarray,
                     model_key: str) -> list[str | None]:
    """For each new image, an image it is a copy of (verdict `copy` or `exact`, services/verdicts.py):
    among the nearest searchable images, or earlier in this chunk."""
    thresholds = verdicts.for_model_key(model_key)
    hits = ctx.searcher.search_many(vectors, k=NEAR_CANDIDATES + 1)
    wanted = list(dict.fromkeys(iid for h in hits for iid, _ in h))
    ids, stored_vectors, stored_layouts = ctx.store.get_vectors_and_layouts(model_key, wanted, layouts.shape[1:])
    stored = {iid: (v, lay, verify.unpack(f)) for iid, v, lay, f in
              zip(ids, stored_vectors, stored_layouts, ctx.store.get_features(ids))}
    found = []
    for i, d in enumerate(ready):
        options = [(iid, *stored[iid]) for iid, _ in hits[i] if iid != d.image_id and iid in stored]
        if i:  # earlier in this chunk: the nearest few
            for j in np.argsort(-(vectors[:i] @ vectors[i]))[:NEAR_CANDIDATES]:
                options.append((ready[j].image_id, vectors[j], layouts[j], verify.unpack(ready[j].features)))
        mine = verify.unpack(d.features)
        match = next((iid for iid, v, lay, f in options if verdicts.at_least(verdicts.verdict(
            verdicts.evidence_between(vectors[i], v, layouts[i], lay, mine, f), thresholds), "copy")), None)
        found.append(match)
    return found


def _store_vectors(ctx: Context, job_id: str, ready: list[_Decoded], vectors: np.ndarray, layouts: np.ndarray,
                   model_key: str, updates: list[dict]) -> int:
    matches = _near_duplicates(ctx, ready, vectors, layouts, model_key)
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
