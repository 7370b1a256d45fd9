"""Jobs: state, counters, errors, the items counted once, and what the watchdog needs."""
from __future__ import annotations

import json
import time

from services.store.common import _decode, _pairs

MAX_JOB_ERRORS = 1000
MAX_LISTED_JOBS = 10_000
JOB_TTL_S = 7 * 86400  # finished jobs, their errors and seen-sets expire after a week

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




class JobStore:
    def _register_scripts(self, script) -> None:
        self._job_progress = script(_JOB_PROGRESS)
        self._job_state = script(_JOB_STATE)
        self._claim_stalled_job = script(_CLAIM_STALLED_JOB)

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
