"""Searching the newest published index merged with the fresh items, minus deleted ids."""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from annoy import AnnoyIndex

from services.index.builder import N_TREES, IndexLoadError, _node_bytes
from services.index.compact import Projection
from services.index.filters import Attributes, Filter
from services.index.query import best_per_image, single_query, stored_vector
from services.store import Store

logger = logging.getLogger(__name__)

SEARCH_K_FACTOR = 4  # see builder.N_TREES for what it buys
# A filtered query scans exactly when the filter keeps at most this many indexed items (their
# vectors are read from the mmapped file: ~5 KB each at D=1280); otherwise it over-fetches from
# Annoy by the inverse of the share kept, times OVERFETCH, and falls back to the exact scan when
# that still leaves fewer than k (docs/benchmarks.md measures both sides).
EXACT_SCAN_MAX = 5_000
OVERFETCH = 2.0


@dataclass(frozen=True, eq=False)
class LoadedIndex:
    version: int = 0
    max_seq: int = 0
    count: int = 0
    dim: int = 0
    n_trees: int = N_TREES
    built_at: float | None = None
    ann: AnnoyIndex | None = None
    ids: list[str] = field(default_factory=list)
    attrs: Attributes | None = None  # what filters select on, item by item
    path: Path | None = None
    projection: Projection | None = None  # queries (and fresh items) are projected to `dim` by it

    @cached_property
    def position(self) -> dict[str, int]:
        return {iid: i for i, iid in enumerate(self.ids)}

    @cached_property
    def vectors(self) -> np.ndarray:
        """[count, dim] float32, read from the Annoy file itself (item i is node i: a 12-byte
        header, then its vector), without a copy; rows are read on demand."""
        node = np.dtype([("header", "<i4", 3), ("v", "<f4", self.dim)])
        return np.memmap(self.path, node, mode="r", shape=(self.count,))["v"]


def load_index(index_dir, info: dict, store: Store | None = None) -> LoadedIndex:
    """mmap a published index after checking it against its Redis record. An index built before
    filters existed has no .attrs file: its items' fields are then read from `store`."""
    path = Path(index_dir) / Path(info["path"]).name
    count, dim = info["count"], info["dim"]
    try:
        size = path.stat().st_size
        ids = path.with_suffix(".ids").read_text().split()
    except OSError as e:
        raise IndexLoadError(f"index v{info['version']}: {e}") from e
    if size != info["size"] or size % _node_bytes(dim) or size < count * _node_bytes(dim):
        raise IndexLoadError(f"index file {path} is {size} bytes, expected {info['size']} for {count} "
                             f"items of dim {dim}: truncated or corrupt, not loaded")
    if len(ids) != count:
        raise IndexLoadError(f"{path.with_suffix('.ids')} lists {len(ids)} ids, expected {count}")
    ann = AnnoyIndex(dim, "angular")
    try:
        ann.load(str(path))  # mmap: pages are shared between processes and read on demand
    except OSError as e:
        raise IndexLoadError(f"Annoy refused {path}: {e}") from e
    if ann.get_n_items() != count:
        ann.unload()
        raise IndexLoadError(f"{path} holds {ann.get_n_items()} items, expected {count}: corrupt, not loaded")
    attrs_path = path.with_suffix(".attrs")
    if attrs_path.exists():
        attrs = Attributes.load(attrs_path)
    else:
        attrs = Attributes.of([r for i in range(0, count, 1000) for r in store.get_images(ids[i:i + 1000])]
                              if store is not None else [None] * count)
    if len(attrs) != count:
        ann.unload()
        raise IndexLoadError(f"{attrs_path} describes {len(attrs)} items, expected {count}")
    projection = None
    input_dim = info.get("input_dim") or 0
    if input_dim:
        try:
            projection = Projection.load(path.with_suffix(".pca"))
        except (OSError, ValueError) as e:
            ann.unload()
            raise IndexLoadError(f"index v{info['version']}: its projection: {e}") from e
        if projection.components.shape != (dim, input_dim):
            ann.unload()
            raise IndexLoadError(f"{path.with_suffix('.pca')} projects to {projection.components.shape}, "
                                 f"expected {(dim, input_dim)}")
    return LoadedIndex(info["version"], info["max_seq"], count, dim, info.get("n_trees", N_TREES),
                       info.get("built_at"), ann, ids, attrs, path, projection)


@dataclass(frozen=True, eq=False)
class _View:
    """Everything one query needs, swapped as a whole so in-flight queries keep a coherent one."""
    index: LoadedIndex
    seq: int  # the log has been read up to here
    fresh_ids: list[str]  # items written after index.max_seq, in seq order (may grow past n)
    fresh_seqs: np.ndarray
    fresh_vecs: np.ndarray  # rows [0, n) are valid; the buffer has spare capacity
    n: int
    deleted: frozenset[str]  # deleted after index.max_seq: maybe still in the Annoy file
    fresh_records: list  # the fresh items' image records (label, collection, created_at), like fresh_ids

    @cached_property
    def fresh_attrs(self) -> Attributes:
        return Attributes.of(self.fresh_records[:self.n])


def _empty_view() -> _View:
    return _View(LoadedIndex(), 0, [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32), 0, frozenset(), [])


class Searcher:
    """A long-lived, thread-safe reader of one model key's index (one per gateway process): the
    Annoy backend (services.index.backend describes what every backend offers)."""

    name = "annoy"
    builds = True  # the index is rebuilt by the builder task; vectors reach it through the store's log

    def __init__(self, store: Store, model_key: str, index_dir, search_k_factor: int = SEARCH_K_FACTOR):
        self.store, self.model_key, self.index_dir = store, model_key, Path(index_dir)
        self.search_k_factor = search_k_factor
        self.last_error: str | None = None
        self._refused: set[int] = set()  # versions that failed to load; not retried
        self._lock = threading.Lock()
        self._view = _empty_view()

    def add(self, image_ids: list[str], vectors, records: list[dict]) -> None:
        """Nothing to do: the store's log of vector writes is what this index reads."""

    def remove(self, image_ids: list[str]) -> None:
        """Nothing to do: the store's log of deletions is what this index reads."""

    def search(self, vector, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]:
        """[(image_id, cosine similarity)], best first, at most k."""
        return self.search_many(single_query(vector, k), k, where=where)[0]

    def search_many(self, vectors, k: int = 10, effort_k: int | None = None,
                    where: Filter | None = None) -> list[list[tuple[str, float]]]:
        """search() for each row of a matrix, against one view of the index; `effort_k`: search
        Annoy as hard as for that many results (default k); `where`: only images it keeps."""
        view = self._refresh()
        queries = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(queries, axis=1) if queries.size else np.zeros(len(queries))
        valid = (norms > 0) & np.isfinite(norms)
        queries = queries / np.where(valid, norms, 1.0)[:, None]
        if view.index.projection is not None and len(queries):
            queries = view.index.projection.apply(queries)  # ValueError for the wrong dimension
        # The fresh items' scores for all queries in one product (a chunk's near-duplicate check
        # asks 32 at once); a query of the wrong dimension is refused by _search before any use.
        fresh = view.fresh_vecs[:view.n] @ queries.T if view.n and queries.shape[1] == view.fresh_vecs.shape[1] else None
        return [self._search(view, q, k, effort_k, None if fresh is None else fresh[:, j], where) if ok else []
                for j, (q, ok) in enumerate(zip(queries, valid))]

    def shortlist(self, views, n: int, effort_k: int | None = None,
                  where: Filter | None = None) -> list[tuple[str, float]]:
        """The n best images for any of several query vectors (one view of the index): each
        image with its best cosine over the views, best first. A shortlist that only feeds a
        re-rank for k results can pass `effort_k=k`: its tail then costs no extra Annoy work."""
        views = np.asarray(views, np.float32)
        # A view may repeat another's vector (the mirror view reuses the first): search it once.
        distinct = [v for i, v in enumerate(views) if not any(np.array_equal(v, w) for w in views[:i])]
        return best_per_image(self.search_many(distinct, n, effort_k, where), n)

    def search_by_id(self, image_id: str, k: int = 10, where: Filter | None = None) -> list[tuple[str, float]]:
        """Neighbours of a stored image; the image itself is included (normally first) if `where`
        keeps it."""
        return self.search(stored_vector(self.store, self.model_key, image_id), k, where)

    @property
    def version(self) -> int:
        """The version the last search used (no Redis call): the API's `index_version`."""
        return self._view.index.version

    def status(self) -> dict:
        view = self._refresh()
        return {"backend": self.name, "version": view.index.version, "count": view.index.count,
                "built_at": view.index.built_at, "fresh": view.n, "deleted_pending": len(view.deleted),
                # pending from the same view as count: read from the store, it could already be
                # counted against a newer build than the one this view serves (count + pending short)
                "pending": view.n, "error": self.last_error}

    def _search(self, view: _View, q: np.ndarray, k: int, effort_k: int | None,
                fresh_scores: np.ndarray | None, where: Filter | None = None) -> list[tuple[str, float]]:
        """One unit query against `view`; `fresh_scores`: its cosine with each fresh item."""
        idx = view.index
        for dim in (idx.dim if idx.count else 0, view.fresh_vecs.shape[1] if view.n else 0):
            if dim and dim != q.size:
                raise ValueError(f"query has {q.size} dimensions, the index {dim}")
        fetch = k + len(view.deleted)  # deleted ids are dropped after the fact: over-fetch
        best: dict[str, float] = {}
        if where is not None:
            best = self._search_where(view, q, k, effort_k, where)
            if view.n:
                fresh_scores = np.where(where.mask(view.fresh_attrs), fresh_scores, -np.inf)
        elif idx.count:
            search_k = idx.n_trees * max(effort_k or k, 10) * self.search_k_factor + fetch
            items, dists = idx.ann.get_nns_by_vector(q, min(fetch, idx.count), search_k=search_k,
                                                     include_distances=True)
            for i, d in zip(items, dists):
                best[idx.ids[i]] = 1.0 - d * d / 2.0  # angular distance is sqrt(2 - 2 cos)
        if view.n:
            top = np.argpartition(-fresh_scores, fetch - 1)[:fetch] if view.n > fetch else range(view.n)
            for j in top:
                iid, s = view.fresh_ids[j], float(fresh_scores[j])
                if s > -np.inf:
                    best[iid] = max(s, best.get(iid, -2.0))
        hits = [(i, min(1.0, max(-1.0, s))) for i, s in best.items() if i not in view.deleted]
        hits.sort(key=lambda h: h[1], reverse=True)
        return hits[:k]

    def _search_where(self, view: _View, q: np.ndarray, k: int, effort_k: int | None,
                      where: Filter) -> dict[str, float]:
        """The indexed items that `where` keeps (deletions excluded) and score best for `q`."""
        idx = view.index
        if not idx.count:
            return {}
        keep = where.mask(idx.attrs)
        gone = [idx.position[i] for i in view.deleted if i in idx.position]
        keep[gone] = False
        rows = np.flatnonzero(keep)
        if not len(rows):
            return {}
        if len(rows) > EXACT_SCAN_MAX:
            fetch = min(idx.count, math.ceil(k * OVERFETCH * idx.count / len(rows)))
            search_k = idx.n_trees * max(effort_k or k, 10) * self.search_k_factor * math.ceil(fetch / k)
            items, dists = idx.ann.get_nns_by_vector(q, fetch, search_k=search_k, include_distances=True)
            found = {idx.ids[i]: 1.0 - d * d / 2.0 for i, d in zip(items, dists) if keep[i]}
            if len(found) >= k:
                return found
        vecs = np.asarray(idx.vectors[rows], np.float32)
        scores = vecs @ q / np.linalg.norm(vecs, axis=1)
        top = np.argpartition(-scores, k - 1)[:k] if len(rows) > k else range(len(rows))
        return {idx.ids[rows[j]]: float(scores[j]) for j in top}

    def _refresh(self) -> _View:
        version, seq = self.store.poll(self.model_key)
        view = self._view
        if seq < view.seq or version < view.index.version:
            self._restart(version, seq)  # Redis went back in time: what we read from it is stale
        elif seq == view.seq and (version == view.index.version or version in self._refused):
            return view
        with self._lock:  # one thread refreshes; the others keep serving the current view
            view = self._view
            index = view.index
            if version > index.version and version not in self._refused:
                index = self._load_newest(index)
            if seq > view.seq or index is not view.index:
                self._view = self._advance(view, index, max(seq, index.max_seq))
            return self._view

    def _restart(self, version: int, seq: int) -> None:
        """Redis lost data (a restart without persistence, a failover to a late replica): its seq
        or index version is below what this searcher read. Everything read from it is dropped and
        read again from scratch, so ids that no longer exist are not served."""
        with self._lock:
            if self._view.seq > seq or self._view.index.version > version:
                logger.warning("index %s: Redis went back (seq %d -> %d, version %d -> %d): reloading",
                               self.model_key, self._view.seq, seq, self._view.index.version, version)
                self._refused.clear()
                self._view = _empty_view()

    def _load_newest(self, current: LoadedIndex) -> LoadedIndex:
        info = self.store.get_index_info(self.model_key)
        if info is None:
            return current
        try:
            loaded = load_index(self.index_dir, info, self.store)
        except IndexLoadError as e:
            self._refused.add(info["version"])
            self.last_error = str(e)
            logger.error("index %s: keeping v%d: %s", self.model_key, current.version, e)
            return current
        self.last_error = None
        logger.info("index %s: now serving v%d (%d items)", self.model_key, loaded.version, loaded.count)
        return loaded

    def _advance(self, view: _View, index: LoadedIndex, seq: int) -> _View:
        ids, seqs, vecs, n = view.fresh_ids, view.fresh_seqs, view.fresh_vecs, view.n
        records = view.fresh_records
        since = max(view.seq, index.max_seq)
        if index is not view.index and (index.projection is not None or view.index.projection is not None):
            # The fresh rows are in the old index's space: read what the new file lacks again.
            ids, seqs, vecs, n, records, since = [], np.zeros(0, np.int64), np.zeros((0, 0), np.float32), 0, [], index.max_seq
        elif index is not view.index:  # the new file holds everything up to its max_seq: drop that
            keep = int(np.searchsorted(seqs[:n], index.max_seq, side="right"))
            ids, seqs, vecs, n = ids[keep:n], seqs[keep:n].copy(), vecs[keep:n].copy(), n - keep
            records = records[keep:n + keep]
        new = self.store.added_since(self.model_key, since, seq)
        for start in range(0, len(new), 1000):
            chunk = dict(new[start:start + 1000])
            found, matrix = self.store.get_vectors(self.model_key, list(chunk))  # deleted: gone
            if not found:
                continue
            matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
            if index.projection is not None:
                matrix = index.projection.apply(matrix)
            if len(ids) != n or n + len(found) > len(seqs) or vecs.shape[1] != matrix.shape[1]:
                # Grow by doubling. Rows below n are never written again, so views that other
                # threads still hold stay valid while we append to a shared buffer.
                cap = max(2 * (n + len(found)), 64)
                ids, seqs, records = ids[:n], np.resize(seqs[:n], cap), records[:n]
                vecs = np.concatenate([vecs[:n] if n else matrix[:0],
                                       np.empty((cap - n, matrix.shape[1]), np.float32)])
            ids.extend(found)
            records.extend(self.store.get_images(found))
            seqs[n:n + len(found)] = [chunk[i] for i in found]
            vecs[n:n + len(found)] = matrix
            n += len(found)
        deleted = frozenset(self.store.deleted_since(index.max_seq))
        return _View(index, seq, ids, seqs, vecs, n, deleted, records)


def find_near_duplicate(searcher: Searcher, vector, threshold: float,
                        exclude: str | None = None) -> tuple[str, float] | None:
    """The most similar indexed image if its cosine similarity reaches threshold (`exclude`: the
    image's own id, when its vector is already stored)."""
    return near_duplicate(searcher.search(vector, k=2), threshold, exclude)


def near_duplicate(hits: list[tuple[str, float]], threshold: float,
                   exclude: str | None = None) -> tuple[str, float] | None:
    """Among search hits (best first): the best one other than `exclude`, if it reaches threshold."""
    for iid, score in hits:
        if iid != exclude:
            return (iid, score) if score >= threshold else None
    return None
