"""A million vectors on one machine: Annoy build time, peak RSS, file size, query p50 and recall@10 with
the model's 1280-d vectors and with compact ones (PCA, services/index/compact.py); Milvus Lite's insert
rate and query p50; Redis memory per image for the records alone.

    python benchmarks/million.py --real var/eval/embeddings.npy [--n 1000000] [--queries 200]
        [--pca 256] [--milvus-n 100000] [--records 5000] [--work /tmp/million]

Vectors: clustered (1,000 clusters, like benchmarks/annoy_index.py) but shaped like real embeddings:
the clusters live in the principal directions of `--real` (EfficientNet-Lite0 embeddings of the
evaluation collection: `python benchmarks/compact_vectors.py --embeddings-only`), each scaled by
that direction's spread, around their mean, plus a small isotropic floor. Isotropic Gaussian clusters
would have no leading directions, which no CNN's embeddings look like, and would make any PCA look
hopeless. Written once as float16 to `--work` (2.6 GB at 1M) and read back in chunks.

Each Annoy variant is built in its own process (its peak RSS is the build's), the way
services/index/builder.py builds (add_item of each row as a list, 32 trees, n_jobs=-1; the PCA
fitted on the first 50,000 vectors, every row projected), then queried the way Searcher does
(search_k = trees x 10 x factor + k). recall@10 is against exact search in the model's 1280-d space
(for PCA also against exact search in its own space: Annoy's share of the loss).

Milvus Lite: `--milvus-n` rows upserted through services.index.milvus.MilvusIndex against
`milvus-lite server` (as benchmarks/filtered_search.py), then k=10 queries with and without a
collection filter. Redis: `--records` image records written with the store's own calls as ingest
writes them (create_images with a realistic record, the vector write's log entry and status change),
then MEMORY USAGE of every key, the vector hash reported apart (it moves out of Redis).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.index import compact  # noqa: E402

DIM, CLUSTERS, CHUNK, TREES, K = 1280, 1000, 20_000, 32, 10


# -- data ----------------------------------------------------------------------------------------
def shaped_generator(real: np.ndarray, seed: int = 0):
    """chunk(start, n) -> [n, D] unit vectors, deterministic per (seed, start)."""
    real = real / np.linalg.norm(real, axis=1, keepdims=True)
    mean = real.mean(axis=0)
    _, s, vt = np.linalg.svd(real - mean, full_matrices=False)
    rank = int((s > s[0] * 1e-3).sum())
    scale = (s[:rank] / np.sqrt(len(real))).astype(np.float32)
    basis = vt[:rank].astype(np.float32)
    floor = float(scale[-1])  # the spread the sample cannot resolve, in every direction
    centres = np.random.default_rng(seed).standard_normal((CLUSTERS, rank)).astype(np.float32)

    def chunk(start: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([seed, start])
        z = centres[rng.integers(0, CLUSTERS, n)] + 0.6 * rng.standard_normal((n, rank), np.float32)
        x = mean + (z / np.sqrt(1.36) * scale) @ basis + floor * rng.standard_normal((n, DIM), np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return chunk


def write_data(work: Path, real: np.ndarray, n: int, queries: int) -> None:
    gen = shaped_generator(real)
    data = np.lib.format.open_memmap(work / "vectors.npy", "w+", np.float16, (n, DIM))
    for start in range(0, n, CHUNK):
        data[start:start + CHUNK] = gen(start, min(CHUNK, n - start))
    data.flush()
    np.save(work / "queries.npy", gen(10 ** 9, queries))


def chunks(work: Path):
    data = np.load(work / "vectors.npy", mmap_mode="r")
    for start in range(0, len(data), CHUNK):
        yield np.asarray(data[start:start + CHUNK], np.float32)


def exact_top(work: Path, queries: np.ndarray, project=None) -> np.ndarray:
    """[Q, K] ids of the exact top K (cosine), streamed over the vectors."""
    q = queries if project is None else project(queries)
    best_s = np.full((len(q), K), -np.inf, np.float32)
    best_i = np.zeros((len(q), K), np.int64)
    start = 0
    for x in chunks(work):
        x = x if project is None else project(x)
        s = q @ x.T
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + start], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
        start += len(x)
    return best_i


# -- one Annoy variant, in its own process -------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM: per address space, so not the parent's, as
    getrusage's ru_maxrss would be after fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def annoy_variant(work: Path, pca: int, factors: list[int]) -> dict:
    from annoy import AnnoyIndex
    started, cpu = time.perf_counter(), time.process_time()
    projection = None
    if pca:
        sample = np.concatenate([x for _, x in zip(range(compact.FIT_SAMPLE // CHUNK), chunks(work))])
        projection = compact.fit(sample, pca)
        del sample
    dim = pca or DIM
    ann = AnnoyIndex(dim, "angular")
    i = 0
    for x in chunks(work):
        for row in (x if projection is None else projection.apply(x)):
            ann.add_item(i, row.tolist())
            i += 1
    added, added_cpu = time.perf_counter() - started, time.process_time() - cpu
    ann.build(TREES, n_jobs=-1)
    built = time.perf_counter() - started
    path = work / f"index-{dim}.ann"
    ann.save(str(path))
    ann.unload()
    out = {"items": i, "dim": dim, "add_s": added, "add_cpu_s": added_cpu, "build_s": built,
           "build_cpu_s": time.process_time() - cpu, "file_bytes": path.stat().st_size,
           "peak_rss_mb": peak_rss_mb()}
    queries = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    ann = AnnoyIndex(dim, "angular")
    ann.load(str(path))
    q_index = queries if projection is None else projection.apply(queries)
    own_truth = truth if projection is None else exact_top(work, queries, projection.apply)
    for f in factors:
        times, cpu_times, recall, own = [], [], [], []
        for q, t, o in zip(q_index, truth, own_truth):
            t0, c0 = time.perf_counter(), time.thread_time()
            found = ann.get_nns_by_vector(q, K, search_k=TREES * K * f + K)
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.thread_time() - c0)
            recall.append(len(set(found) & set(t.tolist())) / K)
            own.append(len(set(found) & set(o.tolist())) / K)
        out[f"factor {f}"] = {"p50_ms": 1000 * float(np.median(times)), "p50_cpu_ms": 1000 * float(np.median(cpu_times)),
                              "p99_ms": 1000 * float(np.percentile(times, 99)),
                              "recall_at_10": float(np.mean(recall)), "recall_at_10_own_space": float(np.mean(own))}
    ann.unload()
    path.unlink()
    return out


# -- Milvus Lite ---------------------------------------------------------------------------------
def milvus_lite(work: Path, n: int, queries: np.ndarray) -> dict:
    import redis

    from modelserver.process import stop_process
    from services.index import Filter
    from services.index.milvus import MilvusIndex
    from services.store import Store
    from tests.workers import start_milvus_lite
    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    store = Store(client, f"bench-{uuid.uuid4().hex[:8]}:", work / "vectors-milvus")
    proc, uri = start_milvus_lite(work / "milvus")
    out = {"rows": n}
    try:
        index = MilvusIndex(store, "bench:1", uri)
        data = np.load(work / "vectors.npy", mmap_mode="r")
        t = time.perf_counter()
        for start in range(0, n, 2000):
            ids = [f"{i:064x}" for i in range(start, min(n, start + 2000))]
            index.add(ids, np.asarray(data[start:start + len(ids)], np.float32),
                      [{"collection": f"c{i % 200}", "label": f"l{i % 50}", "created_at": float(i)}
                       for i in range(start, start + len(ids))])
        out["insert_s"] = time.perf_counter() - t
        out["inserts_per_s"] = n / out["insert_s"]
        index.client.flush(index.collection)
        out["flushed_s"] = time.perf_counter() - t
        index.search(queries[0], K)
        for name, where in (("none", None), ("collection 0.5 %", Filter(collections=frozenset({"c7"})))):
            times = []
            for q in queries[1:21]:
                t0 = time.perf_counter()
                index.search(q, K, where)
                times.append(time.perf_counter() - t0)
            out[f"p50_ms {name}"] = 1000 * float(np.median(times))
    finally:
        stop_process(proc)
        keys = list(client.scan_iter(match=store.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    return out


# -- Redis records -------------------------------------------------------------------------------
def redis_records(n: int) -> dict:
    import tempfile

    import redis

    from services.store import Store
    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    store = Store(client, f"bench-{uuid.uuid4().hex[:8]}:", Path(tempfile.mkdtemp(prefix="million-vectors-")))
    rng = np.random.default_rng(0)
    try:
        for start in range(0, n, 500):
            ids = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(start, min(n, start + 500))]
            store.create_images([(iid, {"source": f"photos/2026/summer/IMG_{i:05d}.jpg", "label": f"class_{i % 257:03d}",
                                        "collection": "holidays", "width": 4000, "height": 3000, "format": "JPEG",
                                        "size_bytes": 1_200_000 + i}) for i, iid in enumerate(ids, start)])
            store.put_vectors("effnet_lite0:1", ids, rng.standard_normal((len(ids), DIM)).astype(np.float32))
        sizes: dict[str, int] = {}
        for key in client.scan_iter(match=store.prefix + "*", count=1000):
            kind = key.decode()[len(store.prefix):].split(":")[0].strip("{}")
            sizes[kind] = sizes.get(kind, 0) + client.memory_usage(key, samples=0)
    finally:
        keys = list(client.scan_iter(match=store.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    per = {k: v / n for k, v in sorted(sizes.items())}
    return {"images": n, "bytes_per_image_by_key": per,
            "bytes_per_image_without_vectors": sum(v for k, v in per.items() if k != "vectors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=ROOT / "var/eval/embeddings.npy")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pca", type=int, default=256)
    parser.add_argument("--factors", default="4,16")
    parser.add_argument("--milvus-n", type=int, default=100_000)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/million"))
    parser.add_argument("--variant", type=int, help=argparse.SUPPRESS)  # internal: one Annoy build
    parser.add_argument("--only", default="annoy,milvus,redis")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]
    if args.variant is not None:
        print(json.dumps(annoy_variant(args.work, args.variant, factors)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results = {"n": args.n, "load_before": os.getloadavg()}
    if not (args.work / "vectors.npy").exists() or len(np.load(args.work / "vectors.npy", mmap_mode="r")) != args.n:
        t = time.perf_counter()
        write_data(args.work, np.load(args.real), args.n, args.queries)
        np.save(args.work / "truth.npy", exact_top(args.work, np.load(args.work / "queries.npy")))
        print(f"data and exact top 10 in {time.perf_counter() - t:.0f} s", flush=True)
    queries = np.load(args.work / "queries.npy")
    if "annoy" in args.only:
        for pca in (0, args.pca):
            run = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--variant", str(pca),
                                  "--factors", args.factors], capture_output=True, text=True, check=True)
            results[f"annoy {pca or DIM}"] = json.loads(run.stdout.strip().splitlines()[-1])
            print(json.dumps(results[f"annoy {pca or DIM}"]), flush=True)
    if "redis" in args.only:
        results["redis"] = redis_records(args.records)
        print(json.dumps(results["redis"]), flush=True)
    if "milvus" in args.only and args.milvus_n:
        results["milvus_lite"] = milvus_lite(args.work, args.milvus_n, queries)
        print(json.dumps(results["milvus_lite"]), flush=True)
    results["load_after"] = os.getloadavg()
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
