"""The store's Redis layout before the segment files (vectors, layouts and keypoints in hashes), as
its put_vectors, put_layouts and put_features wrote it: what `vsearch migrate` starts from."""
from __future__ import annotations

import numpy as np


def write_legacy(store, model_key: str, ids: list[str], records: list[dict], vectors: np.ndarray,
                 layouts: np.ndarray, keypoints: list[bytes], batch: int = 1000) -> None:
    """Image records marked indexed, their log entries, and the three hashes, key by key."""
    seq = int(store.redis.get(store.key("seq")) or 0)
    for start in range(0, len(ids), batch):
        pipe = store.redis.pipeline(transaction=False)
        for i in range(start, min(start + batch, len(ids))):
            iid = ids[i]
            fields = {k: v for k, v in records[i].items() if v is not None}
            pipe.hset(store.key("image", iid), mapping=fields | {"status": "indexed", "model": model_key})
            pipe.hset(store.key("vectors", model_key), iid, np.asarray(vectors[i], "<f4").tobytes())
            pipe.hset(store.key("layouts", model_key), iid, np.asarray(layouts[i], np.float16).tobytes())
            pipe.hset(store.key("features"), iid, keypoints[i])
            pipe.zadd(store.key("added", model_key), {iid: seq + i + 1})
        pipe.execute()
    store.redis.pipeline(transaction=False).sadd(store.key("models"), model_key).set(
        store.key("seq"), seq + len(ids)).execute()
