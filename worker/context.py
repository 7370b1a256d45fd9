"""Per-process resources of a worker: Redis store, model client, index searcher.

Made lazily on first use in the process that uses them (gRPC channels must not cross a fork), and
dropped by `reset()`, which Celery calls in each new pool process.
"""
from __future__ import annotations

import threading
from functools import cached_property

from services.config import Settings
from services.index import Searcher
from services.store import Store
from services.tfs_client import ModelClient, ModelInfo


class WorkerContext:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def store(self) -> Store:
        return Store.from_settings(self.settings)

    @cached_property
    def model(self) -> ModelClient:
        """A client pinned to the model version whose vectors the index holds."""
        with self._lock:
            newest = ModelClient(self.settings.model_server, self.settings.model_name,
                                 self.settings.model_timeout_s, self.settings.model_batch_size)
            try:
                key = active_model_key(self.store, newest.info())
            finally:
                newest.close()
            version = int(key.rsplit(":", 1)[1])
            return ModelClient(self.settings.model_server, self.settings.model_name,
                               self.settings.model_timeout_s, self.settings.model_batch_size, version=version)

    @property
    def model_key(self) -> str:
        return self.model.info().key

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.store, self.model_key, self.settings.index_dir)


def active_model_key(store: Store, served: ModelInfo) -> str:
    """The model version the live index uses: set by the first ingest, changed only by a re-embed."""
    key = store.key("active_model", served.name)
    store.redis.set(key, served.key, nx=True)
    return store.redis.get(key).decode()


_context: WorkerContext | None = None
_context_lock = threading.Lock()


def get_context(settings: Settings | None = None) -> WorkerContext:
    global _context
    with _context_lock:
        if _context is None:
            _context = WorkerContext(settings or Settings.from_env())
        return _context


def reset() -> None:
    global _context
    with _context_lock:
        _context = None
