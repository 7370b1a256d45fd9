"""The published index of each model key, its build requests and builder lock, and the
active model version (the one whose vectors the index holds)."""
from __future__ import annotations

from services.store.common import _decode, _pairs

_INDEX_TYPES = {"version": int, "count": int, "dim": int, "size": int, "max_seq": int,
                "n_trees": int, "built_at": float, "input_dim": int}

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
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
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




class IndexState:
    def _register_scripts(self, script) -> None:
        self._publish_index = script(_PUBLISH_INDEX)
        self._refresh_lock = script(_REFRESH_LOCK)
        self._release_lock = script(_RELEASE_LOCK)
        self._take_build_request = script(_TAKE_BUILD_REQUEST)
        self._resume_abandoned_build = script(_RESUME_ABANDONED_BUILD)

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

    # -- the active model version ------------------------------------------------------------
    def active_model(self, model_name: str) -> str | None:
        """The model key ("name:version") whose vectors the index of `model_name` holds."""
        value = self.redis.get(self.key("active_model", model_name))
        return None if value is None else value.decode()

    def adopt_model(self, model_name: str, model_key: str) -> str:
        """Records `model_key` as active unless one is already; returns the active one."""
        self.redis.set(self.key("active_model", model_name), model_key, nx=True)
        return self.active_model(model_name)
