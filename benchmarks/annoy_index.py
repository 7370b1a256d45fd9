"""Annoy at 30,000 vectors: build time, recall@10 against exact search, query time, per setting.

    python benchmarks/annoy_index.py [--n 30000] [--dim 1280] [--queries 500]

Vectors are clustered unit vectors (1,000 clusters, like many near-duplicates and classes of a real
photo collection); queries are held-out members of the same clusters. Each setting is built and
queried through the service's own code (services.index.build_index and Searcher, Redis included),
with Annoy's raw query time beside it. Needs Redis on 127.0.0.1:6379 (db 14, own prefix, cleaned).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services import index as index_mod  # noqa: E402
from services.store import Store  # noqa: E402


def clustered(n: int, dim: int, clusters: int, rng) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = clustered(args.n + args.queries, args.dim, 1000, rng)
    vectors, queries = data[:args.n], data[args.n:]
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    vector_dir = tempfile.mkdtemp(prefix="bench-vectors-")  # the segment files (services/store/segments.py)
    store = Store(client, f"bench-{uuid.uuid4().hex[:8]}:", vector_dir)
    ids = [f"{i:064x}" for i in range(args.n)]
    model_key = "bench:1"
    try:
        for start in range(0, args.n, 2000):
            for iid in ids[start:start + 2000]:
                store.create_image(iid, source="bench")
            store.put_vectors(model_key, ids[start:start + 2000], vectors[start:start + 2000])
        row = {i: n for n, i in enumerate(ids)}
        print(f"{args.n} x {args.dim} vectors, {args.queries} queries")
        print(f"{'trees':>5} {'search_k factor':>15} {'build s':>8} {'MB':>6} {'recall@10':>9} "
              f"{'annoy ms p50':>12} {'searcher ms p50':>15} {'p99':>6}")
        with tempfile.TemporaryDirectory() as tmp:
            for n_trees in (16, 32):
                started = time.perf_counter()
                info = index_mod.build_index(store, model_key, tmp, n_trees=n_trees)
                build_s = time.perf_counter() - started
                for factor in (1, 2, 3, 4, 8):
                    searcher = index_mod.Searcher(store, model_key, tmp, search_k_factor=factor)
                    searcher.search(queries[0], 10)
                    raw, timed, hits = [], [], 0
                    ann = searcher._view.index.ann
                    for q, truth in zip(queries, exact):
                        t0 = time.perf_counter()
                        ann.get_nns_by_vector(q, 10, search_k=n_trees * 10 * factor)
                        t1 = time.perf_counter()
                        found = searcher.search(q, 10)
                        t2 = time.perf_counter()
                        raw.append(t1 - t0)
                        timed.append(t2 - t1)
                        hits += len({row[i] for i, _ in found} & set(truth.tolist()))
                    p = lambda xs, q: 1000 * float(np.percentile(xs, q))  # noqa: E731
                    print(f"{n_trees:5d} {factor:15d} {build_s:8.2f} {info['size'] / 1e6:6.0f} "
                          f"{hits / (10 * len(queries)):9.3f} {p(raw, 50):12.3f} {p(timed, 50):15.3f} "
                          f"{p(timed, 99):6.2f}", flush=True)
    finally:
        shutil.rmtree(vector_dir)
        keys = list(client.scan_iter(match=store.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])


if __name__ == "__main__":
    main()
