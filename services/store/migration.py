"""`vsearch migrate`: move a deployment's vectors, layouts and keypoints out of Redis (the layout
before segment files: hashes `p:vectors:<model key>`, `p:layouts:<model key>`, `p:features`) into
the segment files, then delete the Redis copies.

Resumable and idempotent: a batch is appended to the segment files, the images pointed at their
records (only where they point at none yet: a re-run never moves an image twice), and only then
are the batch's fields deleted from the old hashes, so what is left there is what is left to do.
A run killed anywhere leaves at worst a few unreferenced records in a segment. The keypoints hash
is model-independent and goes last, once every model key's vectors are moved. The image log
(`p:added`) is unchanged: searchers see no new writes, and the Annoy files stay valid.

Run it after upgrading, before the new workers and builder start: until an image is moved, its
vector cannot be read (the re-rank skips it, a build leaves it out).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from services.store.segments import encode
from services.store.vectors import _storage_dtype, location_field


@dataclass
class Summary:
    moved: dict[str, int] = field(default_factory=dict)  # model key -> vectors moved by this run
    already: dict[str, int] = field(default_factory=dict)  # moved by an earlier, interrupted run
    dropped: dict[str, int] = field(default_factory=dict)  # of deleted or unknown images
    keypoints_deleted: int = 0
    seconds: float = 0.0


def legacy_keys(store) -> list[str]:
    """The old hashes still in Redis (empty when there is nothing to migrate)."""
    names = [store.key(kind, mk) for mk in store.model_keys() for kind in ("vectors", "layouts")]
    names.append(store.key("features"))
    return [n for n in names if store.redis.exists(n)]


def remaining(store) -> int:
    """Vectors still in Redis, over every model key."""
    return sum(store.redis.hlen(store.key("vectors", mk)) for mk in store.model_keys())


def migrate(store, batch: int = 500, progress=None) -> Summary:
    """Move everything; `progress(model_key, done, total)` after each batch."""
    t0 = time.perf_counter()
    summary = Summary()
    for mk in store.model_keys():
        _migrate_model(store, mk, batch, summary, progress)
    # keypoints rode along with every model key's records: the hash is no longer needed
    summary.keypoints_deleted = store.redis.hlen(store.key("features"))
    for mk in store.model_keys():
        store.redis.unlink(store.key("layouts", mk))  # layouts of images that had no vector
    store.redis.unlink(store.key("features"))
    summary.seconds = time.perf_counter() - t0
    return summary


def _migrate_model(store, mk: str, batch: int, summary: Summary, progress) -> None:
    vectors_key, layouts_key = store.key("vectors", mk), store.key("layouts", mk)
    total = store.redis.hlen(vectors_key)
    moved = already = dropped = 0
    cursor = 0
    while True:
        # Fields are deleted as they are moved, so a full cycle of the cursor empties the hash
        # (HSCAN may repeat a field; the location check makes a repeat harmless).
        cursor, chunk = store.redis.hscan(vectors_key, cursor, count=batch)
        if not chunk:
            if cursor == 0 and not store.redis.exists(vectors_key):
                break
            continue
        ids = [k.decode() for k in chunk]
        pipe = store.redis.pipeline(transaction=False)
        pipe.hmget(layouts_key, ids).hmget(store.key("features"), ids)
        for iid in ids:
            pipe.hmget(store.key("image", iid), "status", location_field(mk))
        layouts, keypoints, *records = pipe.execute()
        todo, gone = [], []
        for i, (iid, (status, location)) in enumerate(zip(ids, records)):
            if status in (None, b"deleted"):
                gone.append(iid)
            elif location is None:
                todo.append(i)
        records_out = []
        for i in todo:
            v = np.frombuffer(chunk[ids[i].encode()], "<f4").astype(np.float32)
            records_out.append(encode(ids[i], mk, v, _storage_dtype(v), layouts[i] or b"", keypoints[i] or b""))
        pipe = store.redis.pipeline(transaction=False)
        for i, location in zip(todo, store.segments.append(records_out)):
            store._move_record(keys=[store.key("image", ids[i])], args=[location_field(mk), "", location], client=pipe)
        done = pipe.execute()
        # only now are the Redis copies dropped: a kill before this line repeats the batch
        store.redis.pipeline(transaction=False).hdel(vectors_key, *ids).hdel(layouts_key, *ids).execute()
        moved += sum(done)
        dropped += len(gone)
        already += len(ids) - len(gone) - sum(done)
        if progress:
            progress(mk, moved + already + dropped, total)
    summary.moved[mk], summary.already[mk], summary.dropped[mk] = moved, already, dropped
