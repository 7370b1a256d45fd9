"""Vectors, copy-detection layouts and keypoints per model key, and the log of writes and deletions
that searchers and the builder read (the `seq` clock).

Redis keeps only where each image's data is: the field `vec:<model key>` of its record, a location
in the segment files on the data volume (services/store/segments.py), written in the same script
that logs the vector and marks the image indexed. The data itself (the vector as float16, the
layouts, the keypoints) is one record in those files, written and fsynced before that script runs.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from services.store.segments import Payload, encode

# Location, log entry and status change in one step. Returns the new seq, 0 when the image already
# has a vector of this model or is deleted (a delete that raced the worker wins), -1 if unknown.
_PUT_VECTOR = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'deleted' then return 0 end
local field = 'vec:' .. ARGV[3]
if redis.call('HEXISTS', KEYS[1], field) == 1 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'indexed', 'model', ARGV[3], field, ARGV[2])
redis.call('HDEL', KEYS[1], 'error')
return seq
"""
# Point an image's field ARGV[1] at a new record (ARGV[3]) if it still points at ARGV[2] ('': at
# nothing) and the image is not deleted: 1 if moved.
_MOVE_RECORD = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'deleted' then return 0 end
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
# Where the records of many images are, in one command (a query's re-rank reads 30 at once):
# field ARGV[1] of each image (KEYS); with no ARGV, of the model key each is indexed by, as
# model key and location in turn. false (nil) where there is none.
_LOCATE = """
local out = {}
for i, key in ipairs(KEYS) do
  local model = ARGV[1]
  if model then
    out[i] = redis.call('HGET', key, 'vec:' .. model) or false
  else
    model = redis.call('HGET', key, 'model')
    local location = model and redis.call('HGET', key, 'vec:' .. model)
    out[2 * i - 1], out[2 * i] = location and model or false, location or false
  end
end
return out
"""
F16_MAX = 65504.0


def location_field(model_key: str) -> str:
    return "vec:" + model_key


def _checked(vector) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim != 1 or not v.any() or not np.isfinite(v).all():
        raise ValueError(f"a vector must be 1-d, non-zero and finite (shape {v.shape})")
    return v


def _storage_dtype(v: np.ndarray) -> np.dtype:
    # float16 halves the files; cosine ranks are unchanged at its precision (docs/benchmarks.md,
    # "Vectors on the data volume"). A vector beyond its range keeps float32.
    return np.dtype(np.float16) if np.abs(v).max() < F16_MAX else np.dtype(np.float32)


def _to_matrix(vectors: list[np.ndarray]) -> np.ndarray:
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    if len({len(v) for v in vectors}) != 1:
        raise ValueError("stored vectors of one model key have different lengths")
    return np.stack(vectors).astype(np.float32, copy=False)


class VectorStore:
    def _register_scripts(self, script) -> None:
        self._put_vector = script(_PUT_VECTOR)
        self._move_record = script(_MOVE_RECORD)
        self._locate = script(_LOCATE)

    # -- writes ---------------------------------------------------------------------------
    def put_vector(self, model_key: str, image_id: str, vector) -> bool:
        return self.put_vectors(model_key, [image_id], [vector])[0]

    def put_vectors(self, model_key: str, image_ids: Iterable[str], vectors, layouts=None,
                    features: list[bytes] | None = None) -> list[bool]:
        """Store vectors (with their images' layouts [N, V, 256] and packed keypoints, when given)
        and mark the images indexed: one record each in the segment files, then one round trip.
        True where newly added; False where already stored or deleted meanwhile; KeyError if an
        image is unknown."""
        image_ids = list(image_ids)
        checked = [_checked(v) for v in vectors]
        if len(checked) != len(image_ids):
            raise ValueError(f"{len(image_ids)} ids, {len(checked)} vectors")
        lay = [b""] * len(image_ids) if layouts is None else [np.asarray(x, np.float16).tobytes() for x in layouts]
        keys = [b""] * len(image_ids) if features is None else [f or b"" for f in features]
        records = [encode(iid, model_key, v, _storage_dtype(v), a, k)
                   for iid, v, a, k in zip(image_ids, checked, lay, keys, strict=True)]
        locations = self.segments.append(records)
        pipe = self.redis.pipeline(transaction=False)
        static = [self.key("added", model_key), self.key("seq"), self.key("models")]
        for iid, location in zip(image_ids, locations):
            self._put_vector(keys=[self.key("image", iid), *static], args=[iid, location, model_key], client=pipe)
        results = pipe.execute()
        for iid, r in zip(image_ids, results):
            if r < 0:
                raise KeyError(f"no image record for {iid}")
        return [r > 0 for r in results]

    def put_layouts(self, model_key: str, image_ids: list[str], layouts: np.ndarray) -> None:
        """Replace the layouts [N, V, 256] (stored float16) of images that have a vector of
        model_key. Layouts ride on the vector's record: before it exists, pass them to put_vectors
        (ValueError here; deleted and unknown images are skipped)."""
        blobs = [np.asarray(x, np.float16).tobytes() for x in layouts]
        self._check_located(image_ids, self._locations(model_key, image_ids))
        self._rewrite(model_key, image_ids, lambda p, i: Payload(p.vector, blobs[i], p.keypoints))

    def put_features(self, image_ids: list[str], blobs: list[bytes]) -> None:
        """Replace the packed keypoints (services/verify.py) of images with a vector, on the record
        of the model key they are indexed by (before they have one: ValueError, as in put_layouts)."""
        by_model: dict[str, list[int]] = {}
        current = self._locate_current_many(image_ids)
        self._check_located(image_ids, current)
        for i, located in enumerate(current):
            if located:
                by_model.setdefault(located[0], []).append(i)
        for model_key, rows in by_model.items():
            self._rewrite(model_key, [image_ids[i] for i in rows],
                          lambda p, i, rows=rows: Payload(p.vector, p.layouts, blobs[rows[i]]))

    def _check_located(self, image_ids: list[str], located: list) -> None:
        missing = [iid for iid, loc in zip(image_ids, located) if not loc]
        live = [r["id"] for r in self.get_images(missing) if r and r["status"] != "deleted"] if missing else []
        if live:
            raise ValueError(f"{len(live)} images (e.g. {live[0]}) have no vector record yet: layouts and keypoints "
                             "ride on it, pass them to put_vectors")

    def _rewrite(self, model_key: str, image_ids: list[str], change) -> None:
        """Append a changed copy of each image's record and point the image at it (the old copy
        becomes garbage in its segment)."""
        field = location_field(model_key)
        old = self._locations(model_key, image_ids)
        payloads = self.segments.read([(iid, model_key, loc) for iid, loc in zip(image_ids, old)])
        todo = [(i, change(p, i)) for i, p in enumerate(payloads) if p is not None]
        records = [encode(image_ids[i], model_key, p.vector, _storage_dtype(p.vector), p.layouts, p.keypoints)
                   for i, p in todo]
        pipe = self.redis.pipeline(transaction=False)
        for (i, _), location in zip(todo, self.segments.append(records)):
            self._move_record(keys=[self.key("image", image_ids[i])], args=[field, old[i], location], client=pipe)
        pipe.execute()

    # -- reads ----------------------------------------------------------------------------
    def _locations(self, model_key: str, image_ids: list[str]) -> list[str | None]:
        if not image_ids:
            return []
        found = self._locate(keys=[self.key("image", iid) for iid in image_ids], args=[model_key])
        return [None if loc is None else loc.decode() for loc in found]

    def _locate_current_many(self, image_ids: list[str]) -> list[tuple[str, str] | None]:
        if not image_ids:
            return []
        found = self._locate(keys=[self.key("image", iid) for iid in image_ids])
        return [(m.decode(), loc.decode()) if loc else None for m, loc in zip(found[::2], found[1::2])]

    def _payloads(self, model_key: str, image_ids: list[str], whole: bool = True) -> list[Payload | None]:
        if not image_ids:
            return []
        locations = self._locations(model_key, image_ids)
        return self.segments.read([(iid, model_key, loc) for iid, loc in zip(image_ids, locations)], whole)

    def get_vectors(self, model_key: str, image_ids: Iterable[str]) -> tuple[list[str], np.ndarray]:
        """(ids found, matrix with one row each), in the order asked; missing ids are left out."""
        image_ids = list(image_ids)
        found = [(i, p) for i, p in zip(image_ids, self._payloads(model_key, image_ids, whole=False)) if p is not None]
        return [i for i, _ in found], _to_matrix([p.vector for _, p in found])

    def get_vectors_and_layouts(self, model_key: str, image_ids: list[str], shape: tuple[int, int]
                                ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """get_vectors() plus each found image's layouts [N, *shape] float32 (zeros where none is
        stored: then no layout bonus): a query's re-rank reads both."""
        found = [(i, p) for i, p in zip(image_ids, self._payloads(model_key, image_ids)) if p is not None]
        out = np.zeros((len(found), *shape), np.float32)
        for row, (_, p) in enumerate(found):
            if p.layouts:
                out[row] = np.frombuffer(p.layouts, np.float16).reshape(shape)
        return [i for i, _ in found], _to_matrix([p.vector for _, p in found]), out

    def get_features(self, image_ids: list[str]) -> list[bytes | None]:
        """Packed keypoints (services/verify.py) of each image, from the record of the model key
        it is indexed by; None where it has none."""
        if not image_ids:
            return []
        located = self._locate_current_many(image_ids)
        payloads = self.segments.read([(iid, *loc) if loc else (iid, "", None)
                                       for iid, loc in zip(image_ids, located)])
        return [p.keypoints if p is not None else None for p in payloads]

    def iter_vectors(self, model_key: str, batch: int = 1000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every vector of model_key, in chunks, in the order written (the log's)."""
        after = "-inf"
        while True:
            entries = self.redis.zrangebyscore(self.key("added", model_key), after if after == "-inf" else f"({after}",
                                               "+inf", start=0, num=batch, withscores=True)
            if not entries:
                return
            after = int(entries[-1][1])
            found, matrix = self.get_vectors(model_key, [i.decode() for i, _ in entries])
            if found:
                yield found, matrix

    def count_vectors(self, model_key: str) -> int:
        return self.redis.zcard(self.key("added", model_key))

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
