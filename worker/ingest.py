"""Turning a chunk of items into searchable vectors: read, validate, resize, embed, store.

Plain functions over a `Context`, so they run the same in a Celery task and in a test. A chunk
holds up to one model batch (`Settings.ingest_chunk`): its images go to the model server in one
Predict call, and several chunks in flight on a worker keep decoding and inference overlapped.
Redis is written in a few pipelined round trips per chunk, not per image. Thumbnails are made by
the gateway when first asked for (most images are never shown), which keeps them off this path.

Idempotent: the image id is the SHA-256 of the bytes, files are written by atomic rename, vectors
and job counters ignore repeats. A chunk interrupted anywhere can simply run again.

Every item ends counted: indexed, duplicate, or failed with its reason. Whatever goes wrong with
one item (unreadable, undecodable, a label Redis cannot store, disk full on writing the original,
a model that refuses it) fails that item only; a record it left `pending` is marked `failed`; its
incoming file is removed. Only what can heal is raised to the task: the model server unreachable
(retried with backoff) and Redis unreachable (the message comes back).
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import redis

from services import copy_detection, files, images, verdicts, verify
from services.context import Context
from services.index.filters import check_collection
from services.sources import MIB, SourceError, fetch_with_settings, read_file
from services.store import check_label, image_id
from services.store.connection import UNAVAILABLE as STORE_UNAVAILABLE
from services.tfs_client import ModelServerError
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
    collection: str | None = None  # services.index.filters.check_collection

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
    s = ctx.settings
    if item.url:
        return fetch_with_settings(item.url, s)
    # Our own incoming files, or a directory job's below an allowed root; never through a symlink.
    return read_file(item.path, (*s.allowed_roots, files.incoming_dir(s.data_dir)), s.max_upload_mb * MIB)


def _decode(ctx: Context, item: Item, size: int) -> _Decoded | dict:
    """The model input and record of one item, or the job update that reports its failure."""
    try:
        data = read_bytes(ctx, item)
        array, info = images.model_input(data, size, ctx.settings.max_image_pixels)
        # keypoints for geometric verification, from the whole frame (the model input is a centre square)
        keypoints = verify.pack(verify.features(images.to_rgb(images.decode(data, ctx.settings.max_image_pixels,
                                                                             draft_for=size))))
        meta = {"source": item.source, "label": check_label(item.label), "collection": check_collection(item.collection)}
        iid = image_id(data)
        files.write_atomic(files.original_path(ctx.settings.data_dir, iid), data)
        width, height = info["original_size"]
    except (images.ImageError, SourceError) as exc:
        return failed(item, exc.message)
    except (OSError, ValueError) as exc:  # e.g. disk full writing the original; a bad label
        return failed(item, f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("item %s failed", item.key)
        return failed(item, f"unexpected error ({type(exc).__name__}: {exc})")
    meta |= {"width": width, "height": height, "format": info["source_format"], "size_bytes": len(data)}
    return _Decoded(item, iid, array, meta, keypoints)


def failed(item: Item, error: str) -> dict:
    return {"item": item.key, "failed": 1, "error": error}


def ingest_chunk(ctx: Context, job_id: str, items: list[Item]) -> dict:
    """Index `items`; returns counts. Raises only what can heal: the model server unreachable
    (ModelServerUnavailable) and Redis unreachable (redis.ConnectionError, TimeoutError)."""
    store, info = ctx.store, ctx.model.info()
    decoded, updates = [], []
    for item in items:
        result = _decode(ctx, item, info.input_size[0])
        (decoded if isinstance(result, _Decoded) else updates).append(result)
    try:
        near, embedded = _index(ctx, job_id, decoded, info, updates)
    except STORE_UNAVAILABLE:
        raise  # down or failing over (some of these are ResponseErrors): the task comes back
    except (ModelServerError, redis.ResponseError, redis.DataError, ValueError) as exc:
        if getattr(exc, "transient", False):
            raise
        # Refused for good (Redis out of memory, say): the chunk's items fail, not the job.
        log.warning("job %s: a chunk of %d items failed: %s", job_id, len(items), exc)
        counted = {u["item"] for u in updates}
        error = f"{type(exc).__name__}: {exc}"
        updates += [failed(d.item, error) for d in decoded if d.item.key not in counted]
        _mark_failed(ctx, [d.image_id for d in decoded], error)
        near, embedded = 0, 0
    store.job_progress_many(job_id, updates)
    remove_incoming(ctx, items)
    return {"embedded": embedded, "near_duplicates": near}


def _index(ctx: Context, job_id: str, decoded: list[_Decoded], info, updates: list[dict]) -> tuple[int, int]:
    """Records, vectors and layouts of the decoded items; appends each item's update."""
    store = ctx.store
    job = store.get_job(job_id) or {}
    created = store.create_images([(d.image_id, d.meta) for d in decoded], deleted_after=job.get("seq"))
    for d, new in zip(decoded, created):
        if new is None:  # deleted while this job ran: a redelivered chunk must not bring it back
            updates.append(failed(d.item, "the image was deleted while this job ran; not indexed again"))
    decoded = [d for d, new in zip(decoded, created) if new is not None]
    created = [new for new in created if new is not None]
    existing = store.get_images([d.image_id for d, new in zip(decoded, created) if not new])
    status = {r["id"]: r["status"] for r in existing if r}
    todo: dict[str, _Decoded] = {}
    for d in decoded:
        if status.get(d.image_id) == "indexed" or d.image_id in todo:  # indexed before, or twice here
            updates.append({"item": d.item.key, "done": 1, "duplicates": 1})
        else:
            todo[d.image_id] = d
    if not todo:
        return 0, 0
    ready, vectors = _embed(ctx, list(todo.values()), updates)
    if not ready:
        return 0, 0
    layouts = copy_detection.index_layouts(np.stack([d.array for d in ready]))
    return _store_vectors(ctx, job_id, ready, vectors, layouts, info.key, updates), len(ready)


def _embed(ctx: Context, ready: list[_Decoded], updates: list[dict]) -> tuple[list[_Decoded], np.ndarray]:
    """Embeddings of `ready`. When the model refuses the batch for good, each image is sent alone:
    only those it refuses again fail (their records marked so), the others go on."""
    try:
        with MODEL_SECONDS.time():
            vectors = ctx.model.embed(np.stack([d.array for d in ready]))
        BATCH_IMAGES.observe(len(ready))
        return ready, vectors
    except ModelServerError as exc:
        if exc.transient:
            raise
        if len(ready) == 1:
            updates.append(failed(ready[0].item, f"the model refused this image: {exc}"))
            _mark_failed(ctx, [ready[0].image_id], str(exc))
            return [], np.zeros((0, 0), np.float32)
    kept, parts = [], []
    for d in ready:
        alone, vectors = _embed(ctx, [d], updates)
        kept += alone
        parts += [vectors] if alone else []
    return kept, (np.concatenate(parts) if parts else np.zeros((0, 0), np.float32))


def _mark_failed(ctx: Context, ids: list[str], error: str) -> None:
    """Records created for items that then failed: `failed`, not left `pending` for ever."""
    if not ids:
        return
    try:
        records = ctx.store.get_images(ids)
        stuck = [r["id"] for r in records if r and r["status"] == "pending"]
        ctx.store.update_images([(i, {"status": "failed", "error": error[:500]}) for i in stuck])
    except (redis.RedisError, KeyError):
        log.warning("could not mark %d records failed", len(ids), exc_info=True)


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
    ids = [d.image_id for d in ready]
    added = ctx.store.put_vectors(model_key, ids, vectors, layouts, [d.features for d in ready])
    new = [i for i, a in enumerate(added) if a]
    if new:  # Milvus indexes here (Annoy reads the store's log)
        ctx.searcher.add([ids[i] for i in new], vectors[new], ctx.store.get_images([ids[i] for i in new]))
    found = []
    for d, match in zip(ready, matches):
        if match:
            found.append({"item": d.item.source, "id": d.image_id, "near_duplicate_of": match})
        updates.append({"item": d.item.key, "done": 1, "near_duplicates": int(match is not None)})
    if found:
        ctx.store.update_images([(f["id"], {"near_duplicate_of": f["near_duplicate_of"]}) for f in found])
        ctx.store.record_near_duplicates(job_id, found)
    return len(found)


def remove_incoming(ctx: Context, items: list[Item]) -> None:
    """Uploads and extracted archive members wait in incoming/ until their item is counted; an
    extracted archive's folder goes with its last file."""
    incoming = files.incoming_dir(ctx.settings.data_dir).resolve()
    folders = set()
    for item in items:
        path = Path(item.path).resolve() if item.path else None
        if path is not None and path.is_relative_to(incoming):
            path.unlink(missing_ok=True)
            if path.parent != incoming:
                folders.add(path.parent)
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # other chunks' files are still there
            pass
