"""Building and publishing index files; coalesced rebuilds under one Redis lock."""
from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import redis
from annoy import AnnoyIndex

from services.index import compact
from services.index.filters import Attributes
from services.store import Store

logger = logging.getLogger(__name__)

# With D=1280 an Annoy leaf holds up to ~D items, so trees are shallow and the file is dominated
# by the items themselves: a tree costs little space, but build time grows linearly with the
# count. Recall comes mostly from search_k = n_trees * k * SEARCH_K_FACTOR. Measured at 30,000
# clustered 1280-d vectors (benchmarks/annoy_index.py, docs/benchmarks.md): 32 trees with factor 3
# give recall@10 0.978 at ~0.95 ms per query through the Searcher; factor 2: 0.954 at 0.6 ms;
# factor 4: 0.994 at 1.1 ms. Looser clusters need more (tests/test_index.py's set: 0.93 at 4,
# 0.96 at 8). Both are settings (VSEARCH_INDEX_TREES, VSEARCH_SEARCH_K_FACTOR).
N_TREES = 32

LOCK_TTL_S = 60.0
STALE_TMP_S = 3600.0



class IndexLoadError(Exception):
    """A published index file is missing, truncated or not what its Redis record says."""


def index_basename(model_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", model_key)


def _node_bytes(dim: int) -> int:
    # Annoy's angular node: int32 n_descendants, two int32 children, then dim float32.
    return 12 + 4 * dim


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_index(store: Store, model_key: str, index_dir, n_trees: int = N_TREES, n_jobs: int = -1,
                pca_dims: int = 0) -> dict:
    """Build an index of every live vector of model_key, publish it, return its Redis record.
    `pca_dims` (VSEARCH_INDEX_PCA) below the vectors' dimension: the file holds them projected
    (services/index/compact.py), the projection saved beside it."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    previous = store.get_index_info(model_key)
    # Read before the vectors: whatever is written from now on is scored above max_seq, so
    # searchers keep treating it as fresh even if this scan happens to include it too.
    max_seq = store.current_seq()
    version = store.reserve_index_version(model_key)
    ann, ids, records = None, [], []
    projection, chunks = _projected(_live_chunks(store, model_key), pca_dims)
    for chunk_ids, matrix in chunks:
        if ann is None:
            ann = AnnoyIndex(matrix.shape[1], "angular")
        for iid, row in zip(chunk_ids, matrix):
            ann.add_item(len(ids), row.tolist())  # a list converts ~2x faster than an array row
            ids.append(iid)
        records.extend(store.get_images(chunk_ids))  # what filtered searches select on
    dim = ann.f if ann is not None else (previous or {}).get("dim") or 1
    ann = ann if ann is not None else AnnoyIndex(dim, "angular")
    ann.build(n_trees, n_jobs=n_jobs)

    base = f"{index_basename(model_key)}.{version:08d}"
    tag = f".tmp-{uuid.uuid4().hex[:8]}"
    kinds = ("ann", "ids", "attrs") + (("pca",) if projection is not None else ())
    tmp = {kind: index_dir / f".{base}.{kind}{tag}" for kind in kinds}
    try:
        ann.save(str(tmp["ann"]))
        ann.unload()
        tmp["ids"].write_text("".join(i + "\n" for i in ids))
        Attributes.of(records).save(tmp["attrs"])
        if projection is not None:
            projection.save(tmp["pca"])
        for path in tmp.values():
            _fsync(path)
        for kind in reversed(kinds):  # the .ann last: a file that is there has its companions
            os.replace(tmp[kind], index_dir / f"{base}.{kind}")
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    info = {"version": version, "path": f"{base}.ann", "count": len(ids), "dim": dim,
            "size": (index_dir / f"{base}.ann").stat().st_size, "built_at": time.time(),
            "max_seq": max_seq, "n_trees": n_trees,
            # queries of input_dim are projected to dim (0: no projection; a field, since a publish
            # overwrites the fields it names and keeps the others)
            "input_dim": projection.input_dim if projection is not None else 0}
    if not store.publish_index(model_key, info):
        # A builder that ignored the lock published something newer while we worked.
        _remove_versions(index_dir, model_key, lambda v: v == version)
        return info | {"published": False}
    if previous:
        _remove_versions(index_dir, model_key, lambda v: v < previous["version"])
    logger.info("index %s v%d published: %d items, dim %d", model_key, version, len(ids), dim)
    return info | {"published": True}


def _live_chunks(store: Store, model_key: str):
    for chunk_ids, matrix in store.iter_vectors(model_key):
        deleted = store.deleted_among(chunk_ids)  # by construction none; cheap insurance
        kept = [j for j, gone in enumerate(deleted) if not gone]
        yield [chunk_ids[j] for j in kept], matrix[kept]


def _projected(chunks, dims: int):
    """(projection, chunks): with `dims` below the vectors' dimension, a projection fitted on the
    first FIT_SAMPLE vectors read (held meanwhile: 256 MB at D=1280) and every chunk projected by
    it; otherwise (None, the chunks as they are)."""
    if not dims:
        return None, chunks
    chunks, held, count = iter(chunks), [], 0
    for chunk_ids, matrix in chunks:
        held.append((chunk_ids, matrix))
        count += len(chunk_ids)
        if count >= compact.FIT_SAMPLE:
            break
    sample = [m for _, m in held if len(m)]
    if not sample or dims >= sample[0].shape[1]:
        return None, itertools.chain(held, chunks)
    projection = compact.fit(np.concatenate(sample), dims)
    return projection, ((i, projection.apply(m)) for i, m in itertools.chain(held, chunks))


def _remove_versions(index_dir: Path, model_key: str, doomed) -> None:
    name = re.escape(index_basename(model_key))
    published = re.compile(rf"{name}\.(\d+)\.(ann|ids|attrs|pca)")
    temporary = re.compile(rf"\.{name}\.\d+\.(ann|ids|attrs|pca)\.tmp-\w+")
    for path in index_dir.iterdir():
        m = published.fullmatch(path.name)
        # Only a crashed build leaves a temp file behind for long.
        stale = temporary.fullmatch(path.name) and time.time() - path.stat().st_mtime > STALE_TMP_S
        if (m and doomed(int(m.group(1)))) or stale:
            path.unlink(missing_ok=True)


# -- coalesced rebuilds ---------------------------------------------------------------------
def request_build(store: Store, model_key: str) -> bool:
    """Ask for a rebuild. True if no builder is running: the caller should then start one (e.g.
    enqueue the task that calls run_coalesced_build); otherwise the running builder will fold
    this request into one more build."""
    return store.request_index_build(model_key)


@contextmanager
def _held_lock(store: Store, model_key: str, token: str, ttl_s: float):
    stop = threading.Event()

    def keep_alive():
        while not stop.wait(ttl_s / 3):
            try:
                if not store.refresh_index_lock(model_key, token, ttl_s):
                    # Another builder may start; versioned names and the monotonic publish
                    # keep that safe, it only wastes work.
                    logger.warning("index %s: build lock expired during the build", model_key)
                    return
            except redis.RedisError as e:
                logger.warning("index %s: could not refresh the build lock: %s", model_key, e)

    thread = threading.Thread(target=keep_alive, name="index-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        store.release_index_lock(model_key, token)


def run_coalesced_build(store: Store, model_key: str, index_dir, *, n_trees: int = N_TREES,
                        n_jobs: int = -1, lock_ttl_s: float = LOCK_TTL_S, pca_dims: int = 0) -> list[dict]:
    """Build while a build is requested, one builder at a time. Returns the builds made here
    (none if another process holds the lock: it will see the request)."""
    builds = []
    while True:
        token = uuid.uuid4().hex
        if not store.acquire_index_lock(model_key, token, lock_ttl_s):
            return builds
        with _held_lock(store, model_key, token, lock_ttl_s):
            store.resume_abandoned_build(model_key)  # a builder died with it: serve it now
            while store.take_index_build_request(model_key):
                try:
                    builds.append(build_index(store, model_key, index_dir, n_trees, n_jobs, pca_dims))
                except BaseException:
                    store.request_index_build(model_key)  # taken but not served: put it back
                    raise
                finally:
                    store.end_index_build(model_key)
        # A request made between our last check and the release saw the lock still held and
        # counted on us: look once more now that the lock is free.
        if not store.index_build_requested(model_key):
            return builds
