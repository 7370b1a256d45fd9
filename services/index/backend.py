"""The index backend interface, and the choice between its two implementations.

`VSEARCH_INDEX_BACKEND` picks one per deployment:

- `annoy` (`searcher.Searcher`): versioned Annoy files on this host, rebuilt by the coalesced
  builder from the store's vectors; items written since the last build are searched exactly.
- `milvus` (`milvus.MilvusIndex`): a Milvus collection per model key, written at ingest and delete;
  no builds.

Both answer the same calls, each thread-safe; `where` is a `filters.Filter` (None: everything):

    add(image_ids, vectors, records)       after the store recorded the vectors (records: the images'
                                           metadata, for the filter fields)
    remove(image_ids)                      after the store tombstoned the images
    search(vector, k, where)               [(image id, cosine)], best first
    search_many(vectors, k, effort_k, where), shortlist(views, n, effort_k, where),
    search_by_id(image_id, k, where)       (KeyError if the image has no vector)
    version, status()                      {"backend", "version", "count", "built_at", "pending", "error", ...}
    name ("annoy" / "milvus"), builds (whether index builds exist at all)
"""
from __future__ import annotations

from typing import Protocol

from services.index.errors import IndexUnavailable  # noqa: F401  (part of this interface)
from services.index.filters import Filter
from services.index.searcher import Searcher
from services.store import Store

BACKENDS = ("annoy", "milvus")


class IndexBackend(Protocol):
    name: str
    builds: bool

    def add(self, image_ids: list[str], vectors, records: list[dict | None]) -> None: ...
    def remove(self, image_ids: list[str]) -> None: ...
    def search(self, vector, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]: ...
    def search_many(self, vectors, k: int = 10, effort_k: int | None = None,
                    where: Filter | None = None) -> list[list[tuple[str, float]]]: ...
    def shortlist(self, views, n: int, effort_k: int | None = None,
                  where: Filter | None = None) -> list[tuple[str, float]]: ...
    def search_by_id(self, image_id: str, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]: ...
    @property
    def version(self) -> int: ...
    def status(self) -> dict: ...


def open_index(settings, store: Store, model_key: str) -> IndexBackend:
    """The configured backend's index of `model_key` (pymilvus is imported only when chosen)."""
    if settings.index_backend == "milvus":
        from services.index.milvus import MilvusIndex
        return MilvusIndex(store, model_key, settings.milvus_uri)
    return Searcher(store, model_key, settings.index_dir, settings.search_k_factor)
