"""Redis as the system of record: image metadata, vectors, jobs and the published index pointer.

Key layout, all under the prefix `p` (Settings.redis_prefix):

    p:image:<id>              hash    metadata (IMAGE_FIELDS); id = hex SHA-256 of the original bytes
    p:vectors:<model_key>     hash    image id -> float32 bytes, one hash per "model:version"
    p:added:<model_key>       zset    image id scored by seq: the log of vector writes
    p:deleted                 zset    deleted image id scored by seq
    p:seq                     string  one counter for vector writes and deletions (see below)
    p:models                  set     model keys that have vectors
    p:jobs                    zset    job ids by creation time, newest MAX_LISTED_JOBS kept
    p:job:<id>                hash    job state and counters
    p:job:<id>:errors         list    JSON {"item", "error"}, the first MAX_JOB_ERRORS kept
    p:job:<id>:seen           set     item keys already counted, so a retried item counts once
    p:job:<id>:near           list    JSON {"item", "id", "near_duplicate_of"}, the first 1000
    p:job:<id>:spec|:chunks   string, hash   what the job was sent as (chunk number -> items),
                                      kept until it ends for worker.watchdog
    p:jobs:active             set     ids of jobs not ended yet
    p:index:<model_key>       hash    published index: version, path, count, dim, size, built_at,
                                      max_seq, n_trees
    p:index:<model_key>:builds|:dirty|:lock   build numbers, pending request, builder lock
    p:index:<model_key>:building              a request taken by a builder, until its build ends
                                              (left behind by a builder that died: taken again)

`p:seq` is the clock of the index: a build records the seq it started from (max_seq); vectors
added and ids deleted after it are exactly the log entries scored above it. A searcher polls
that one counter per query to know whether anything changed.

Multi-key updates are Lua scripts, atomic on the server. `delete_image` touches keys derived
from `p:models` inside its script: fine on a single Redis, not cluster-safe.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Iterable, Iterator

import numpy as np
import redis

IMAGE_FIELDS = ("source", "label", "width", "height", "format", "size_bytes", "created_at",
                "status", "model", "near_duplicate_of", "error")
STATUSES = ("pending", "indexed", "failed", "deleted")
_TYPES = {"width": int, "height": int, "size_bytes": int, "created_at": float}
MAX_JOB_ERRORS = 1000
MAX_LISTED_JOBS = 10_000
JOB_TTL_S = 7 * 86400  # finished jobs, their errors and seen-sets expire after a week
_INDEX_TYPES = {"version": int, "count": int, "dim": int, "size": int, "max_seq": int,
                "n_trees": int, "built_at": float}

# A deleted image may be ingested again: it then starts over as a new record.
_CREATE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('EXISTS', KEYS[1]) == 1 and status ~= 'deleted' then return 0 end
if status then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""
_CREATE_HASH = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# -1: no such image; 0: deleted, or not changed.
_UPDATE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'deleted' then return 0 end
local n = tonumber(ARGV[1])
if n > 0 then redis.call('HSET', KEYS[1], unpack(ARGV, 2, 1 + 2 * n)) end
if #ARGV > 1 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 2 + 2 * n)) end
return 1
"""
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
_DELETE_IMAGE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'deleted' then return 1 end
redis.call('HSET', KEYS[1], 'status', 'deleted')
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
for _, model in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('HDEL', ARGV[2] .. 'vectors:' .. model, ARGV[1])
  redis.call('ZREM', ARGV[2] .. 'added:' .. model, ARGV[1])
end
return 1
"""
# Shared by job scripts (KEYS: see Store._job_keys). finish: the job ended, its record kept for
# ttl, what only the watchdog needed dropped. settle: queued -> running on any activity, which is
# also recorded as progress_at (the watchdog's clock); -> done once every item is counted.
_SETTLE_JOB = """
local function finish(state, now, ttl)
  redis.call('HSET', KEYS[1], 'state', state, 'finished_at', now)
  redis.call('SREM', KEYS[6], redis.call('HGET', KEYS[1], 'job_id'))
  redis.call('DEL', KEYS[4], KEYS[5])
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
local function settle(now, ttl)
  local h = redis.call('HMGET', KEYS[1], 'state', 'total', 'done', 'failed')
  if h[1] ~= 'queued' and h[1] ~= 'running' then return end
  local total = tonumber(h[2])
  if total >= 0 and tonumber(h[3]) + tonumber(h[4]) >= total then
    finish('done', now, ttl)
  else
    redis.call('HSET', KEYS[1], 'state', 'running', 'progress_at', now)
  end
end
"""
# ARGV: item, done, failed, duplicates, near_duplicates, error JSON, max errors, now, ttl.
# Returns 0 for an item already counted, -1 for an unknown job.
_JOB_PROGRESS = _SETTLE_JOB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' and redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
for i, field in ipairs({'done', 'failed', 'duplicates', 'near_duplicates'}) do
  if ARGV[i + 1] ~= '0' then redis.call('HINCRBY', KEYS[1], field, ARGV[i + 1]) end
end
if ARGV[6] ~= '' and redis.call('LLEN', KEYS[3]) < tonumber(ARGV[7]) then
  redis.call('RPUSH', KEYS[3], ARGV[6])
end
settle(ARGV[8], ARGV[9])
return 1
"""
# ARGV: total ('' keeps it), now, ttl, and optionally a failure message (JSON error entry).
_JOB_STATE = _SETTLE_JOB + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'total', ARGV[1]) end
if ARGV[4] then
  redis.call('RPUSH', KEYS[3], ARGV[4])
  finish('failed', ARGV[2], ARGV[3])
else
  settle(ARGV[2], ARGV[3])
end
return 1
"""
# KEYS: job, active jobs. ARGV: now, stall seconds, job id. A queued or running job with no
# progress for that long gets progress_at = now (so one caller claims it per stall period);
# returns its state, else false. A job whose record is gone leaves the active set.
_CLAIM_STALLED_JOB = """
local h = redis.call('HMGET', KEYS[1], 'state', 'progress_at', 'created_at')
if not h[1] then redis.call('SREM', KEYS[2], ARGV[3]) end
if h[1] ~= 'queued' and h[1] ~= 'running' then return false end
if tonumber(h[2] or h[3]) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then return false end
redis.call('HSET', KEYS[1], 'progress_at', ARGV[1])
return h[1]
"""
_PUBLISH_INDEX = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if tonumber(ARGV[2]) <= current then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
_REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
# A build request moves from :dirty to :building while it is served, so a builder that dies
# mid-build leaves it behind for the next one (builds never count on a message coming back).
_TAKE_BUILD_REQUEST = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
return 1
"""

_RESUME_ABANDONED_BUILD = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[1], 1)
redis.call('DEL', KEYS[2])
return 1
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def image_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


MAX_LABEL_CHARS = 200


def check_label(label) -> str | None:
    """A label as stored: None, or a string of 1 to MAX_LABEL_CHARS characters that is valid
    UTF-8 (no lone surrogates). Raises ValueError otherwise; every route and task checks here."""
    if label is None or label == "":
        return None
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"label must be a string of at most {MAX_LABEL_CHARS} characters")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("label must be valid Unicode text (it holds a lone surrogate)") from None
    return label


def _decode(raw: dict, types: dict) -> dict:
    out = {}
    for k, v in raw.items():
        k, v = k.decode(), v.decode()
        out[k] = types.get(k, str)(v)
    return out


def _job(raw: dict) -> dict:
    ints = dict.fromkeys(("total", "done", "failed", "duplicates", "near_duplicates", "resent"), int)
    floats = dict.fromkeys(("created_at", "finished_at", "progress_at"), float)
    job = {"finished_at": None, "resent": 0} | _decode(raw, ints | floats)
    return job | {"total": None if job["total"] < 0 else job["total"]}


def _progress_args(update: dict, now: float, max_errors: int = MAX_JOB_ERRORS) -> list:
    """ARGV of _JOB_PROGRESS for one update (a dict of Store.job_progress's keyword arguments)."""
    item, error = update.get("item"), update.get("error")
    err = "" if error is None else json.dumps({"item": item, "error": error})
    return [item or "", update.get("done", 0), update.get("failed", 0), update.get("duplicates", 0),
            update.get("near_duplicates", 0), err, max_errors, now, JOB_TTL_S]


def _pairs(fields: dict) -> list:
    return [x for k, v in fields.items() for x in (k, v)]


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


class Store:
    def __init__(self, client: redis.Redis, prefix: str = "vsearch:"):
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("Store needs a Redis client with decode_responses=False (vectors are bytes)")
        self.redis = client
        self.prefix = prefix
        script = client.register_script
        self._create_image, self._create_hash = script(_CREATE_IMAGE), script(_CREATE_HASH)
        self._update_image, self._put_vector = script(_UPDATE_IMAGE), script(_PUT_VECTOR)
        self._delete_image = script(_DELETE_IMAGE)
        self._job_progress, self._job_state = script(_JOB_PROGRESS), script(_JOB_STATE)
        self._claim_stalled_job = script(_CLAIM_STALLED_JOB)
        self._publish_index = script(_PUBLISH_INDEX)
        self._refresh_lock, self._release_lock = script(_REFRESH_LOCK), script(_RELEASE_LOCK)
        self._take_build_request = script(_TAKE_BUILD_REQUEST)
        self._resume_abandoned_build = script(_RESUME_ABANDONED_BUILD)

    @classmethod
    def from_settings(cls, settings, **redis_kwargs) -> "Store":
        # Explicit timeouts: a stuck Redis must fail a request, not hang a gateway thread.
        kwargs = dict(socket_timeout=5.0, socket_connect_timeout=5.0, health_check_interval=30)
        client = redis.Redis.from_url(settings.redis_url, **(kwargs | redis_kwargs))
        return cls(client, settings.redis_prefix)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- images ---------------------------------------------------------------------------
    def create_image(self, image_id: str, **meta) -> bool:
        """Create the record; False (nothing changed) if it exists and is not deleted."""
        return self.create_images([(image_id, meta)])[0]

    def create_images(self, records: list[tuple[str, dict]]) -> list[bool]:
        """create_image for many (image_id, meta) pairs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for image_id, meta in records:
            fields = {k: v for k, v in ({"status": "pending", "created_at": now} | meta).items() if v is not None}
            self._create_image(keys=[self.key("image", image_id), self.key("deleted")],
                               args=[image_id, *_pairs(fields)], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def get_image(self, image_id: str) -> dict | None:
        return self.get_images([image_id])[0]

    def get_images(self, image_ids: Iterable[str]) -> list[dict | None]:
        """Records in the order asked (None where unknown), in one round trip."""
        image_ids = list(image_ids)
        pipe = self.redis.pipeline(transaction=False)
        for iid in image_ids:
            pipe.hgetall(self.key("image", iid))
        return [{"id": iid} | dict.fromkeys(IMAGE_FIELDS) | _decode(raw, _TYPES) if raw else None
                for iid, raw in zip(image_ids, pipe.execute())]

    def update_image(self, image_id: str, **fields) -> bool:
        """Set fields (None removes one). False if the image is deleted; KeyError if unknown."""
        return self.update_images([(image_id, fields)])[0]

    def update_images(self, updates: list[tuple[str, dict]]) -> list[bool]:
        """update_image for many (image_id, fields) pairs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for image_id, fields in updates:
            if fields.get("status") == "deleted":
                raise ValueError("use delete_image() to delete an image")
            if fields.get("status", "pending") not in STATUSES:
                raise ValueError(f"unknown status {fields['status']!r}")
            sets = {k: v for k, v in fields.items() if v is not None}
            dels = [k for k, v in fields.items() if v is None]
            self._update_image(keys=[self.key("image", image_id)], args=[len(sets), *_pairs(sets), *dels], client=pipe)
        results = pipe.execute()
        for (image_id, _), result in zip(updates, results):
            if result < 0:
                raise KeyError(image_id)
        return [bool(r) for r in results]

    def delete_image(self, image_id: str) -> bool:
        """Tombstone the record and drop its vectors, layouts and log entries; False if unknown."""
        keys = [self.key("image", image_id), self.key("deleted"), self.key("seq"), self.key("models")]
        deleted = bool(self._delete_image(keys=keys, args=[image_id, self.prefix]))
        if deleted:
            pipe = self.redis.pipeline(transaction=False)
            for model_key in self.model_keys():
                pipe.hdel(self.key("layouts", model_key), image_id)
            pipe.execute()
        return deleted

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

    # -- layouts: the copy-detection thumbnails beside each vector (services/robust_search.py) ----
    def put_layouts(self, model_key: str, image_ids: list[str], layouts: np.ndarray) -> None:
        """layouts [N, V, 256], stored as float16 (2 KB an image for V=4)."""
        blobs = np.asarray(layouts, np.float16)
        self.redis.hset(self.key("layouts", model_key),
                        mapping={iid: blob.tobytes() for iid, blob in zip(image_ids, blobs)})

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

    # -- jobs -----------------------------------------------------------------------------
    def _job_keys(self, job_id: str) -> list[str]:
        """The KEYS of every job script: the job, its seen-set and errors, the chunks and spec the
        watchdog re-sends from, and the set of unfinished jobs."""
        job = self.key("job", job_id)
        return [job, job + ":seen", job + ":errors", job + ":chunks", job + ":spec", self._active_jobs_key()]

    def _active_jobs_key(self) -> str:
        return self.key("jobs", "active")

    def create_job(self, job_id: str, total: int | None, kind: str, **meta) -> bool:
        """total=None when not known yet (set it with start_job). False if the job exists."""
        fields = {k: v for k, v in meta.items() if v is not None} | {
            "job_id": job_id, "kind": kind, "state": "queued", "total": -1 if total is None else total,
            "done": 0, "failed": 0, "duplicates": 0, "near_duplicates": 0, "created_at": time.time()}
        created = bool(self._create_hash(keys=[self.key("job", job_id)], args=_pairs(fields)))
        if created:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(self._active_jobs_key(), job_id)
            pipe.zadd(self.key("jobs"), {job_id: fields["created_at"]})
            pipe.zremrangebyrank(self.key("jobs"), 0, -MAX_LISTED_JOBS - 1).execute()
            if total == 0:
                self.start_job(job_id)
        return created

    def start_job(self, job_id: str, total: int | None = None, failures: list[tuple[str, str]] = ()) -> None:
        """queued -> running (or done at once when nothing is left to count). `failures`, (item,
        error) pairs, are counted as failed in the same transaction."""
        now, keys = time.time(), self._job_keys(job_id)
        pipe = self.redis.pipeline(transaction=True)
        self._job_state(keys=keys, args=["" if total is None else total, now, JOB_TTL_S], client=pipe)
        for item, error in failures:
            self._job_progress(keys=keys, client=pipe, args=_progress_args({"item": item, "failed": 1, "error": error}, now))
        if pipe.execute()[0] < 0:
            raise KeyError(job_id)

    def fail_job(self, job_id: str, message: str) -> None:
        """The job as a whole failed (unreadable archive, missing directory...)."""
        args = ["", time.time(), JOB_TTL_S, json.dumps({"item": None, "error": message})]
        if self._job_state(keys=self._job_keys(job_id), args=args) < 0:
            raise KeyError(job_id)

    def job_progress(self, job_id: str, item: str | None = None, *, done: int = 0, failed: int = 0,
                     error: str | None = None, duplicates: int = 0, near_duplicates: int = 0,
                     max_errors: int = MAX_JOB_ERRORS) -> bool:
        """Count an item's outcome. With `item`, a retried item is counted once: returns False
        (and changes nothing) the second time. `error` is recorded as {"item", "error"}."""
        update = {"item": item, "done": done, "failed": failed, "error": error, "duplicates": duplicates,
                  "near_duplicates": near_duplicates}
        return self.job_progress_many(job_id, [update], max_errors)[0]

    def job_progress_many(self, job_id: str, updates: list[dict], max_errors: int = MAX_JOB_ERRORS) -> list[bool]:
        """job_progress for many items (each a dict of its keyword arguments) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for u in updates:
            self._job_progress(keys=self._job_keys(job_id), args=_progress_args(u, now, max_errors), client=pipe)
        results = pipe.execute()
        if any(r < 0 for r in results):
            raise KeyError(job_id)
        return [bool(r) for r in results]

    def record_near_duplicates(self, job_id: str, found: list[dict]) -> None:
        """Keep {"item", "id", "near_duplicate_of"} entries for the job's report (the first 1000)."""
        key = self.key("job", job_id) + ":near"
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(json.dumps(f) for f in found)).ltrim(key, 0, MAX_JOB_ERRORS - 1)
        pipe.expire(key, JOB_TTL_S).execute()

    # What a worker that dies can lose: kombu's Redis transport pops a message before it records it
    # as unacknowledged, so a worker killed in between loses it for good. A job keeps what it was
    # sent (its spec, then its chunks) until it ends, and worker.watchdog sends again what never
    # arrived. Items are idempotent and counted once, so a copy that did arrive after all is harmless.
    def save_job_spec(self, job_id: str, spec: dict) -> None:
        *_, spec_key, _ = self._job_keys(job_id)
        self.redis.set(spec_key, json.dumps(spec), ex=JOB_TTL_S)

    def get_job_spec(self, job_id: str) -> dict | None:
        *_, spec_key, _ = self._job_keys(job_id)
        raw = self.redis.get(spec_key)
        return None if raw is None else json.loads(raw)

    def save_job_chunks(self, job_id: str, chunks: list[list[dict]]) -> None:
        """The job's items as dispatched: chunk number -> items (dicts with a "key")."""
        *_, key, _, _ = self._job_keys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(chunks), 1000):
            pipe.hset(key, mapping={i: json.dumps(c) for i, c in enumerate(chunks[start:start + 1000], start)})
        pipe.expire(key, JOB_TTL_S).execute()

    def unfinished_chunks(self, job_id: str) -> list[list[dict]]:
        """The saved chunks that hold an item not counted yet."""
        _, seen, _, saved, *_ = self._job_keys(job_id)
        chunks = [json.loads(c) for _, c in sorted(self.redis.hgetall(saved).items(), key=lambda kv: int(kv[0]))]
        keys = [item["key"] for chunk in chunks for item in chunk]
        counted = dict(zip(keys, self.redis.smismember(seen, keys))) if keys else {}
        return [chunk for chunk in chunks if not all(counted[item["key"]] for item in chunk)]

    def active_jobs(self) -> list[str]:
        return sorted(j.decode() for j in self.redis.smembers(self._active_jobs_key()))

    def claim_stalled_job(self, job_id: str, stall_s: float) -> str | None:
        """"queued" or "running" if the job made no progress for `stall_s` (and it is now claimed
        for one stall period), else None. A job whose record is gone leaves the active set."""
        job, *_, active = self._job_keys(job_id)
        state = self._claim_stalled_job(keys=[job, active], args=[time.time(), stall_s, job_id])
        return state.decode() if state else None

    def add_resent(self, job_id: str, messages: int) -> None:
        """Count messages the watchdog sent again (shown in the job as `resent`)."""
        self.redis.hincrby(self.key("job", job_id), "resent", messages)

    def get_job(self, job_id: str) -> dict | None:
        job, _, errors, *_ = self._job_keys(job_id)
        pipe = self.redis.pipeline(transaction=False)
        raw, errs, near = pipe.hgetall(job).lrange(errors, 0, -1).lrange(job + ":near", 0, -1).execute()
        if not raw:
            return None
        return _job(raw) | {"errors": [json.loads(e) for e in errs],
                            "near_duplicate_items": [json.loads(n) for n in near]}

    def recent_jobs(self, limit: int = 20) -> list[dict]:
        """Newest first, as get_job but without the errors list."""
        job_ids = [j.decode() for j in self.redis.zrevrange(self.key("jobs"), 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key("job", job_id))
        raws = pipe.execute()
        expired = [j for j, raw in zip(job_ids, raws) if not raw]
        if expired:
            self.redis.zrem(self.key("jobs"), *expired)
        return [_job(raw) for raw in raws if raw]

    # -- the published index and its builder ----------------------------------------------
    def get_index_info(self, model_key: str) -> dict | None:
        raw = self.redis.hgetall(self.key("index", model_key))
        return _decode(raw, _INDEX_TYPES) if raw else None

    def reserve_index_version(self, model_key: str) -> int:
        """A build number, unique even among builders that did not take the lock."""
        return self.redis.incr(self.key("index", model_key, "builds"))

    def publish_index(self, model_key: str, info: dict) -> bool:
        """Make `info` the published index unless a newer version is already published."""
        args = ["version", info["version"], *_pairs({k: v for k, v in info.items() if k != "version"})]
        return bool(self._publish_index(keys=[self.key("index", model_key)], args=args))

    def request_index_build(self, model_key: str) -> bool:
        """Mark a build as wanted; True if no builder holds the lock (the caller should build)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("index", model_key, "dirty"), 1).exists(self.key("index", model_key, "lock"))
        return not pipe.execute()[1]

    def take_index_build_request(self, model_key: str) -> bool:
        """Take the pending request (the lock holder only); `end_index_build` when it is served."""
        keys = [self.key("index", model_key, "dirty"), self.key("index", model_key, "building")]
        return bool(self._take_build_request(keys=keys))

    def end_index_build(self, model_key: str) -> None:
        self.redis.delete(self.key("index", model_key, "building"))

    def resume_abandoned_build(self, model_key: str) -> bool:
        """A request taken by a builder that died is pending again (the new lock holder calls it)."""
        keys = [self.key("index", model_key, "dirty"), self.key("index", model_key, "building")]
        return bool(self._resume_abandoned_build(keys=keys))

    def index_build_requested(self, model_key: str) -> bool:
        return bool(self.redis.exists(self.key("index", model_key, "dirty")))

    def index_build_orphaned(self, model_key: str) -> bool:
        """A build is wanted (or was taken by a builder that died) and no builder holds the lock."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.exists(self.key("index", model_key, "dirty"), self.key("index", model_key, "building"))
        pipe.exists(self.key("index", model_key, "lock"))
        wanted, locked = pipe.execute()
        return bool(wanted) and not locked

    def acquire_index_lock(self, model_key: str, token: str, ttl_s: float) -> bool:
        return bool(self.redis.set(self.key("index", model_key, "lock"), token, nx=True, px=int(ttl_s * 1000)))

    def refresh_index_lock(self, model_key: str, token: str, ttl_s: float) -> bool:
        return bool(self._refresh_lock(keys=[self.key("index", model_key, "lock")], args=[token, int(ttl_s * 1000)]))

    def release_index_lock(self, model_key: str, token: str) -> bool:
        return bool(self._release_lock(keys=[self.key("index", model_key, "lock")], args=[token]))
