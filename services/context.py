"""The per-process resources of every role (gateway, worker, `vsearch search --local`): Redis store,
model client, index searcher, and the Celery app that sends tasks.

Made lazily on first use in the process that uses them (gRPC channels must not cross a fork), and
dropped by `reset()`, which Celery calls in each new pool process.
"""
from __future__ import annotations

import threading
from functools import cached_property

from celery import Celery

from services.broker import make_celery
from services.config import Settings
from services.index import Searcher
from services.store import Store
from services.tfs_client import ModelClient


class Context:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()

    @cached_property
    def store(self) -> Store:
        return Store.from_settings(self.settings)

    @cached_property
    def model_key(self) -> str:
        """The model version whose vectors the index holds ("name:version"), recorded in Redis by
        the first ingest; a new version is adopted only by a re-embed. Until then: the newest."""
        active = self.store.active_model(self.settings.model_name)
        if active is None:
            newest = self._client(version=None)
            try:
                active = self.store.adopt_model(self.settings.model_name, newest.info().key)
            finally:
                newest.close()
        return active

    @cached_property
    def model(self) -> ModelClient:
        """A client pinned to the version of `model_key`."""
        return self._client(version=int(self.model_key.rsplit(":", 1)[1]))

    def _client(self, version: int | None) -> ModelClient:
        s = self.settings
        return ModelClient(s.model_server, s.model_name, s.model_timeout_s, s.model_batch_size, version=version)

    @cached_property
    def celery(self) -> Celery:
        """Sends tasks by name (services.jobs); the worker's own app adds the task code."""
        return make_celery(self.settings)

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.store, self.model_key, self.settings.index_dir, self.settings.search_k_factor)


_context: Context | None = None
_context_lock = threading.Lock()


def get_context(settings: Settings | None = None) -> Context:
    global _context
    with _context_lock:
        if _context is None:
            _context = Context(settings or Settings.from_env())
        return _context


def reset() -> None:
    global _context
    with _context_lock:
        _context = None
