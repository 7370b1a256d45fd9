"""How long a duplicate scan takes at collection scale, and an incremental rescan after new images.

    python benchmarks/duplicate_scan.py [--n 100000] [--new 1000] [--dup-share 0.05]

Synthetic vectors (1280-d, clustered like benchmarks/annoy_index.py: neighbours within a cluster
have a cosine around 0.7, so every image brings its full set of candidate pairs to the judge) and
synthetic layouts and ORB keypoints (random: every candidate pair costs a real match); a share of
the images are planted near-copies of others (their vector and layouts perturbed, their keypoints
the original's). Written straight into Redis (db 14, own prefix, cleaned up) as ingest would,
the Annoy index built as the index builder would, then the real thing: a `vsearch worker` process
(2 threads) runs a full scan job, then --new more images arrive (half of them copies) and an
incremental scan job looks at them only. Prints the job times, the worker's CPU seconds during each
(on a shared machine the wall time depends on the neighbours; CPU / 2 is what two free cores would
take at best), the worker's peak memory, Redis' memory and how many planted pairs were found.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.store.duplicates import DuplicateStore  # noqa: E402
from services.index import build_index  # noqa: E402
from evaluation.server import local_model_server  # noqa: E402
from services import verify  # noqa: E402
from services.store import Store  # noqa: E402
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_job  # noqa: E402
from services.broker import make_celery  # noqa: E402
from services.jobs import submit_duplicate_scan  # noqa: E402

DIM, VIEWS, CELLS = 1280, 4, 256


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_images(rng, n: int, centres: np.ndarray, dup_share: float, start: int,
                pool: tuple[np.ndarray, np.ndarray] | None = None):
    """(ids, vectors, layouts, planted pairs): fresh images, a share of them copies of earlier ones
    (of `pool`, or of this batch's own originals)."""
    ids = [f"{start + i:064x}" for i in range(n)]
    vectors = unit(centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32))
    layouts = unit(rng.standard_normal((n, VIEWS, CELLS)).astype(np.float32))
    copies = rng.choice(n, int(n * dup_share), replace=False)
    planted, copied_from = [], {}
    for c in copies:
        if pool is None:
            src = int(rng.integers(0, n))
            if src in copies or src == c:
                continue
            src_vec, src_lay, src_id = vectors[src], layouts[src], ids[src]
        else:
            src = int(rng.integers(0, len(pool[0])))
            src_vec, src_lay, src_id = pool[1][src], pool[2][src], pool[0][src]
        copied_from[int(c)] = (src, pool is None)
        vectors[c] = unit(src_vec + 0.08 * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM) * 10)
        layouts[c] = unit(src_lay + 0.15 * rng.standard_normal((VIEWS, CELLS)).astype(np.float32) / 16)
        planted.append(tuple(sorted((ids[c], src_id))))
    return ids, vectors, layouts, planted, copied_from


def with_keypoints(rng, made, pool_features=None):
    """The batch's keypoints: random, a copy's those of its original (the same picture)."""
    ids, vectors, layouts, planted, copied_from = made
    features = keypoints(rng, len(ids), {})
    for c, (src, own) in copied_from.items():
        features[c] = features[src] if own else pool_features[src]
    return ids, vectors, layouts, planted, features


def keypoints(rng, n: int, planted: dict[int, bytes]) -> list[bytes]:
    """Packed ORB keypoints (services/verify.py) as ingest stores them: random ones, so that every
    candidate pair costs the judge a real match (a planted copy gets its original's)."""
    out = []
    for i in range(n):
        if i in planted:
            out.append(planted[i])
            continue
        xy = rng.integers(0, 400, (verify.MAX_KEYPOINTS, 2)).astype(np.float32)
        desc = rng.integers(0, 256, (verify.MAX_KEYPOINTS, 32), dtype=np.uint8)
        out.append(verify.pack(verify.Features(xy, desc)))
    return out


def write(store: Store, model_key: str, ids, vectors, layouts, features, batch: int = 2000) -> None:
    for s in range(0, len(ids), batch):
        chunk = ids[s:s + batch]
        store.create_images([(i, {"source": f"synthetic/{i[-8:]}.jpg", "width": 640, "height": 480,
                                  "size_bytes": 100_000, "format": "JPEG"}) for i in chunk])
        store.put_vectors(model_key, chunk, vectors[s:s + batch], layouts[s:s + batch], features[s:s + batch])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def found_pairs(store: Store) -> set[tuple[str, str]]:
    pairs, cursor = set(), None
    while True:
        page, cursor, _ = DuplicateStore(store).list_groups(after=cursor, limit=1000)
        for g in page:
            ids = sorted(m["id"] for m in g["members"])
            pairs |= {(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]}
        if cursor is None:
            return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--dup-share", type=float, default=0.05)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--model-base", default="var/models")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="dups-scan-"))
    centres = rng.standard_normal((args.clusters, DIM)).astype(np.float32)
    with local_model_server(Path(args.model_base).resolve()) as target:
        settings = isolated_settings(tmp, target)
        settings = replace(settings, redis_url=settings.redis_url.rsplit("/", 1)[0] + "/14")
        store = Store.from_settings(settings)
        model_key = "effnet_lite0:1"
        store.redis.set(store.key("active_model", settings.model_name), model_key)
        worker = None
        try:
            redis_before = store.redis.info("memory")["used_memory"]
            started = time.perf_counter()
            ids, vectors, layouts, planted, features = with_keypoints(
                rng, make_images(rng, args.n, centres, args.dup_share, 0))
            write(store, model_key, ids, vectors, layouts, features)
            written_s = time.perf_counter() - started
            started = time.perf_counter()
            build_index(store, model_key, settings.index_dir, n_trees=settings.index_trees)
            index_s = time.perf_counter() - started
            redis_mb = (store.redis.info("memory")["used_memory"] - redis_before) / 2**20
            worker = WorkerProcess(settings, tmp, concurrency=2)
            worker.wait_ready()
            app = make_celery(settings)
            cpu_before = cpu_s(worker.proc.pid)
            full = wait_for_job(store, submit_duplicate_scan(app, store, full=True), timeout_s=3600, workers=[worker])
            full_cpu = cpu_s(worker.proc.pid) - cpu_before
            full_s = full["finished_at"] - full["created_at"]
            full_rss = peak_rss_mb(worker.proc.pid)
            got = found_pairs(store)
            first = {"images": args.n, "planted_pairs": len(planted), "found_pairs": len(got),
                     "planted_found": len(set(planted) & got) / max(1, len(planted)),
                     "scan_s": round(full_s, 1), "worker_cpu_s": round(full_cpu, 1), "state": full["state"],
                     "groups": DuplicateStore(store).list_groups(limit=1)[2]}
            new_ids, new_vecs, new_lays, new_planted, new_features = with_keypoints(
                rng, make_images(rng, args.new, centres, 0.5, args.n, pool=(ids, vectors, layouts)), features)
            write(store, model_key, new_ids, new_vecs, new_lays, new_features)
            cpu_before = cpu_s(worker.proc.pid)
            inc = wait_for_job(store, submit_duplicate_scan(app, store), timeout_s=3600, workers=[worker])
            inc_cpu = cpu_s(worker.proc.pid) - cpu_before
            got = found_pairs(store)
            second = {"new_images": args.new, "planted_pairs": len(new_planted),
                      "planted_found": len(set(new_planted) & got) / max(1, len(new_planted)),
                      "scan_s": round(inc["finished_at"] - inc["created_at"], 1), "worker_cpu_s": round(inc_cpu, 1),
                      "state": inc["state"],
                      "total": inc["total"]}
            print(json.dumps({"setup": {"write_s": round(written_s, 1), "index_build_s": round(index_s, 1),
                                        "redis_mb_for_vectors_and_layouts": round(redis_mb)},
                              "full_scan": first, "incremental_scan": second,
                              "worker_peak_rss_mb": round(max(full_rss, peak_rss_mb(worker.proc.pid)))}, indent=1))
        finally:
            if worker is not None:
                worker.stop()
            drop_keys(settings)


if __name__ == "__main__":
    main()
