"""The published index of each model key, its build requests and builder lock, and the
active model version (the one whose vectors the index holds)."""
from __future__ import annotations

from services.store.common import _decode, _pairs

_INDEX_TYPES = {"version": int, "count": int, "dim": int, "size": int, "max_seq": int,
                "n_trees": int, "built_at": float}

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




class IndexState:
    def _register_scripts(self, script) -> None:
        self._publish_index = script(_PUBLISH_INDEX)
        self._refresh_lock = script(_REFRESH_LOCK)
        self._release_lock = script(_RELEASE_LOCK)

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
        return self.redis.getdel(self.key("index", model_key, "dirty")) is not None

    def index_build_requested(self, model_key: str) -> bool:
        return bool(self.redis.exists(self.key("index", model_key, "dirty")))

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
