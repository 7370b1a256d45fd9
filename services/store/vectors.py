"""Vectors and copy-detection layouts per model key, and the log of writes and deletions that
searchers and the builder read (the `seq` clock)."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

# Vector, log entry and status change in one step. Returns the new seq, 0 when the vector was
# already there or the image is deleted (a delete that raced the worker wins), -1 if unknown.
_PUT_VECTOR = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'deleted' then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[3], seq, ARGV[1])
redis.call('SADD', KEYS[5], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'indexed', 'model', ARGV[3])
redis.call('HDEL', KEYS[1], 'error')
return seq
"""

def _to_blob(vector) -> bytes:
    v = np.asarray(vector, dtype="<f4")
    if v.ndim != 1 or not v.any() or not np.isfinite(v).all():
        raise ValueError(f"a vector must be 1-d, non-zero and finite (shape {v.shape})")
    return v.tobytes()


def _to_matrix(blobs: list[bytes]) -> np.ndarray:
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    if len({len(b) for b in blobs}) != 1:
        raise ValueError("stored vectors of one model key have different lengths")
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1).astype(np.float32)




class VectorStore:
    def _register_scripts(self, script) -> None:
        self._put_vector = script(_PUT_VECTOR)

    # -- vectors --------------------------------------------------------------------------
    def put_vector(self, model_key: str, image_id: str, vector) -> bool:
        return self.put_vectors(model_key, [image_id], [vector])[0]

    def put_vectors(self, model_key: str, image_ids: Iterable[str], vectors) -> list[bool]:
        """Store vectors and mark images indexed, in one round trip. True where newly added;
        False where already stored or deleted meanwhile; KeyError if an image is unknown."""
        image_ids = list(image_ids)
        pipe = self.redis.pipeline(transaction=False)
        static = [self.key("vectors", model_key), self.key("added", model_key), self.key("seq"),
                  self.key("models")]
        for iid, vector in zip(image_ids, vectors, strict=True):
            keys = [self.key("image", iid), *static]
            self._put_vector(keys=keys, args=[iid, _to_blob(vector), model_key], client=pipe)
        results = pipe.execute()
        for iid, r in zip(image_ids, results):
            if r < 0:
                raise KeyError(f"no image record for {iid}")
        return [r > 0 for r in results]

    def get_vectors(self, model_key: str, image_ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """(ids found, matrix with one row each), in the order asked; missing ids are left out."""
        image_ids = list(image_ids)
        blobs = self.redis.hmget(self.key("vectors", model_key), image_ids) if image_ids else []
        found = [(i, b) for i, b in zip(image_ids, blobs) if b is not None]
        return [i for i, _ in found], _to_matrix([b for _, b in found])

    # -- layouts: the copy-detection thumbnails beside each vector (services/copy_detection.py) ----
    def put_layouts(self, model_key: str, image_ids: list[str], layouts: np.ndarray) -> None:
        """layouts [N, V, 256], stored as float16 (2 KB an image for V=4)."""
        blobs = np.asarray(layouts, np.float16)
        self.redis.hset(self.key("layouts", model_key),
                        mapping={iid: blob.tobytes() for iid, blob in zip(image_ids, blobs)})

    # -- keypoints for geometric verification (services/verify.py), independent of the model ----
    def put_features(self, image_ids: list[str], blobs: list[bytes]) -> None:
        if image_ids:
            self.redis.hset(self.key("features"), mapping=dict(zip(image_ids, blobs)))

    def get_features(self, image_ids: list[str]) -> list[bytes | None]:
        return self.redis.hmget(self.key("features"), image_ids) if image_ids else []

    def get_vectors_and_layouts(self, model_key: str, image_ids: list[str], shape: tuple[int, int]
                                ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """get_vectors() plus each found image's layouts [N, *shape] float32 (zeros where none is
        stored: then no layout bonus), in one round trip: a query's re-rank reads both."""
        if not image_ids:
            return [], _to_matrix([]), np.zeros((0, *shape), np.float32)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.key("vectors", model_key), image_ids).hmget(self.key("layouts", model_key), image_ids)
        vectors, layouts = pipe.execute()
        found = [(i, v, lay) for i, v, lay in zip(image_ids, vectors, layouts) if v is not None]
        out = np.zeros((len(found), *shape), np.float32)
        for row, (_, _, blob) in enumerate(found):
            if blob is not None:
                out[row] = np.frombuffer(blob, np.float16).reshape(shape)
        return [i for i, _, _ in found], _to_matrix([v for _, v, _ in found]), out

    def iter_vectors(self, model_key: str, batch: int = 1000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every vector of model_key, in chunks, without holding them all in Redis' reply."""
        seen: set[bytes] = set()  # HSCAN may repeat a field while the hash is being resized
        cursor = None
        while cursor != 0:
            cursor, chunk = self.redis.hscan(self.key("vectors", model_key), cursor or 0, count=batch)
            fresh = [(k, v) for k, v in chunk.items() if k not in seen]
            seen.update(k for k, _ in fresh)
            if fresh:
                yield [k.decode() for k, _ in fresh], _to_matrix([v for _, v in fresh])

    def count_vectors(self, model_key: str) -> int:
        return self.redis.hlen(self.key("vectors", model_key))

    def model_keys(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.key("models")))

    # -- the log the searcher and the builder read ----------------------------------------
    def current_seq(self) -> int:
        return int(self.redis.get(self.key("seq")) or 0)

    def poll(self, model_key: str) -> tuple[int, int]:
        """(published index version, seq) in one round trip: the searcher's per-query check."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.key("index", model_key), "version").get(self.key("seq"))
        version, seq = pipe.execute()
        return int(version or 0), int(seq or 0)

    def added_since(self, model_key: str, after: int, upto: int | str = "+inf") -> list[tuple[str, int]]:
        entries = self.redis.zrangebyscore(self.key("added", model_key), f"({after}", upto, withscores=True)
        return [(i.decode(), int(s)) for i, s in entries]

    def deleted_since(self, after: int) -> set[str]:
        return {i.decode() for i in self.redis.zrangebyscore(self.key("deleted"), f"({after}", "+inf")}

    def deleted_among(self, image_ids: list[str]) -> list[bool]:
        scores = self.redis.zmscore(self.key("deleted"), image_ids) if image_ids else []
        return [s is not None for s in scores]

    def pending_count(self, model_key: str, index_info: dict | None = None) -> int:
        """Vectors written since the published index was built (searchable, not yet in Annoy).
        A caller holding get_index_info's record passes it, saving a read."""
        if index_info is None:
            max_seq = int(self.redis.hget(self.key("index", model_key), "max_seq") or 0)
        else:
            max_seq = index_info.get("max_seq", 0)
        return self.redis.zcount(self.key("added", model_key), f"({max_seq}", "+inf")
