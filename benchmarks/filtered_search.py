"""Filtered search on both index backends: recall@10 against exact search over what the filter keeps,
query p50/p99, with and without filters; Milvus Lite insert rate.

    python benchmarks/filtered_search.py [--n 100000] [--dim 1280] [--queries 200] [--backends annoy,milvus]

Synthetic clustered unit vectors (1,000 clusters, as benchmarks/annoy_index.py). Each image has a
collection (200 of them: one keeps 0.5 %), a label (50: 2 %) and a created time (its number). Both
backends go through the service's own code (services.index: build_index + Searcher; MilvusIndex
against `milvus-lite server`, the embedded engine behind Milvus's API), Redis included (db 14, own
prefix, cleaned afterwards).
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

from benchmarks.annoy_index import clustered  # noqa: E402
from services.index import Filter, Searcher, build_index  # noqa: E402
from services.store import Store  # noqa: E402

MODEL = "bench:1"


def filters(n: int) -> dict[str, Filter | None]:
    return {
        "none": None,
        "collection 0.5%": Filter(collections=frozenset({"c7"})),
        "label 2% + time 50%": Filter(labels=frozenset({"l3"}), created_after=n / 2),
        "collections 10%": Filter(collections=frozenset(f"c{i}" for i in range(20))),
    }


def attributes(i: int) -> dict:
    return {"collection": f"c{i % 200}", "label": f"l{(i // 7) % 50}", "created_at": float(i)}


def run(name, index, vectors, queries, ids, meta, n) -> None:
    for fname, where in filters(n).items():
        keep = np.ones(len(ids), bool) if where is None else where.mask(meta)
        sub = np.flatnonzero(keep)
        exact = np.argsort(-(queries @ vectors[sub].T), axis=1)[:, :10]
        recalls, times, all_match = [], [], True
        for q, truth in zip(queries, exact):
            t = time.perf_counter()
            hits = index.search(q, 10, where)
            times.append((time.perf_counter() - t) * 1000)
            got = {h for h, _ in hits}
            all_match &= len(hits) == 10 and all(keep[int(h, 16)] for h in got)
            recalls.append(len(got & {ids[sub[j]] for j in truth}) / 10)
        print(f"{name:7} {fname:22} {keep.mean() * 100:6.1f}% {np.mean(recalls):9.3f} "
              f"{np.percentile(times, 50):8.2f} {np.percentile(times, 99):8.2f}  {all_match}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--backends", default="annoy,milvus")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = clustered(args.n + args.queries, args.dim, 1000, rng)
    vectors, queries = data[:args.n], data[args.n:]
    ids = [f"{i:064x}" for i in range(args.n)]
    records = [attributes(i) for i in range(args.n)]
    from services.index.filters import Attributes
    meta = Attributes.of(records)

    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    vector_dir = tempfile.mkdtemp(prefix="bench-vectors-")  # the segment files (services/store/segments.py)
    store = Store(client, f"bench-{uuid.uuid4().hex[:8]}:", vector_dir)
    print(f"{args.n} x {args.dim} vectors, {args.queries} queries, k=10")
    try:
        t = time.perf_counter()
        for start in range(0, args.n, 2000):
            chunk = slice(start, start + 2000)
            store.create_images([(i, r) for i, r in zip(ids[chunk], records[chunk])])
            store.put_vectors(MODEL, ids[chunk], vectors[chunk])
        print(f"redis: {args.n} records + vectors written in {time.perf_counter() - t:.1f} s")
        print(f"{'backend':7} {'filter':22} {'keeps':>7} {'recall@10':>9} {'p50 ms':>8} {'p99 ms':>8}  all match")
        if "annoy" in args.backends:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                build_index(store, MODEL, tmp)
                print(f"annoy: build {time.perf_counter() - t:.1f} s (32 trees)", flush=True)
                searcher = Searcher(store, MODEL, tmp)
                searcher.search(queries[0], 10)
                run("annoy", searcher, vectors, queries, ids, meta, args.n)
        if "milvus" in args.backends:
            from services.index.milvus import MilvusIndex
            from tests.workers import start_milvus_lite
            from modelserver.process import stop_process
            with tempfile.TemporaryDirectory() as tmp:
                proc, uri = start_milvus_lite(Path(tmp))
                try:
                    index = MilvusIndex(store, MODEL, uri)
                    t = time.perf_counter()
                    for start in range(0, args.n, 2000):
                        chunk = slice(start, start + 2000)
                        index.add(ids[chunk], vectors[chunk], records[chunk])
                    took = time.perf_counter() - t
                    index.client.flush(index.collection)  # a bulk load ends with a flush (sealed segments)
                    flushed = time.perf_counter() - t
                    while index.client.describe_index(index.collection, "vector").get("pending_index_rows"):
                        time.sleep(1)
                    print(f"milvus: {args.n} inserted in {took:.1f} s ({args.n / took:.0f}/s), flushed at "
                          f"{flushed:.1f} s, indexed at {time.perf_counter() - t:.1f} s", flush=True)
                    index.search(queries[0], 10)
                    run("milvus", index, vectors, queries, ids, meta, args.n)
                finally:
                    stop_process(proc)
    finally:
        shutil.rmtree(vector_dir)
        keys = list(client.scan_iter(match=store.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])


if __name__ == "__main__":
    main()
