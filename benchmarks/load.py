"""Search under load while a bulk job indexes: zero 5xx, zero lost images.

    python benchmarks/load.py [--clients 8,16,32] [--seconds 15] [--images 1200]

A deployment of its own on loopback: Redis db 14 under a fresh prefix, `vsearch model-server`, one
`vsearch worker` (ingest and index queues), the gateway under gunicorn (2 processes x 8 threads).
The 20 real photos are indexed first (the search targets); then a directory job of `--images`
distinct JPEGs made from them starts, and while it runs, 8, 16 and 32 concurrent clients (one HTTP
session each) search for `--seconds` each: half by upload (decode, embed, search), half by stored
image id. Reports p50/p99 latency, throughput and 5xx per phase; at the end, whether every image of
the job was indexed exactly once (job done == total, vectors == distinct images).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelserver.process import start_model_server, stop_process
from services.store import Store, image_id
from tests.conftest import free_port, imagenet_photos
from tests.workers import (
    WorkerProcess,
    drop_keys,
    isolated_settings,
    start_gateway,
    wait_for_job,
)
from worker.celery_app import make_celery
from services.jobs import submit_job
from benchmarks.indexing import make_set

MODEL_KEY = "effnet_lite0:1"


def run_phase(base: str, clients: int, seconds: float, uploads: list[bytes], ids: list[str]) -> dict:
    latencies, statuses = {"upload": [], "id": []}, {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        session, n = requests.Session(), i
        while time.monotonic() < stop:
            started, kind = time.perf_counter(), "id" if n % 2 else "upload"
            try:
                if kind == "id":
                    r = session.post(base + "/search", json={"image_id": ids[n % len(ids)], "k": 10}, timeout=60)
                else:
                    r = session.post(base + "/search", files={"file": ("q.jpg", uploads[n % len(uploads)])},
                                     data={"k": "10"}, timeout=60)
                code = r.status_code
            except requests.RequestException:
                code = None
            elapsed = time.perf_counter() - started
            with lock:
                latencies[kind].append(elapsed)
                statuses[code] = statuses.get(code, 0) + 1
            n += clients
        session.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = {k: np.array(v) * 1000 for k, v in latencies.items()}
    ms["all"] = np.concatenate(list(ms.values()))
    pct = {f"{q}_{k}": round(float(np.percentile(v, q)), 1) if len(v) else None for k, v in ms.items() for q in (50, 99)}
    return {"clients": clients, "requests": len(ms["all"]), "per_s": round(len(ms["all"]) / seconds, 1),
            "p50_ms": pct["50_all"], "p99_ms": pct["99_all"], "p50_upload_ms": pct["50_upload"],
            "p99_upload_ms": pct["99_upload"], "p50_id_ms": pct["50_id"], "p99_id_ms": pct["99_id"],
            "5xx": sum(v for k, v in statuses.items() if k and k >= 500),
            "other_errors": sum(v for k, v in statuses.items() if k is None or (k != 200 and k < 500)),
            "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="8,16,32")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase (the whole load stays under 60 s)")
    parser.add_argument("--images", type=int, default=1200, help="images of the bulk job indexed meanwhile")
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    args = parser.parse_args()
    phases = [int(c) for c in args.clients.split(",")]
    if args.seconds * len(phases) > 60:
        parser.error("keep the load under a minute: phases x seconds <= 60")
    if not (args.model_base / "effnet_lite0").exists():
        from model_export.export import export_model
        export_model(model="effnet_lite0", out=args.model_base, version=1)

    tmp = Path(tempfile.mkdtemp(prefix="vsearch-load-"))
    port = free_port()
    server = start_model_server(args.model_base, port)
    settings = isolated_settings(tmp, f"127.0.0.1:{port}", redis_url="redis://127.0.0.1:6379/14")
    store, celery = Store.from_settings(settings), make_celery(settings)
    worker = WorkerProcess(settings, tmp, concurrency=3, name="load-worker")
    gateway = None
    try:
        photos = imagenet_photos()
        seed = tmp / "seed"
        seed.mkdir()
        for p in photos:
            (seed / p.name).write_bytes(p.read_bytes())
        paths = make_set(tmp / "bulk", args.images, (300, 250), 85)  # Caltech-sized photos
        worker.wait_ready()
        seed_job = wait_for_job(store, submit_job(celery, store, {"kind": "directory", "directory": str(seed)}),
                                workers=[worker])
        assert seed_job["done"] == len(photos), seed_job
        gateway, base = start_gateway(settings)
        uploads = [p.read_bytes() for p in photos]
        ids = [image_id(d) for d in uploads]
        run_phase(base, 4, 2, uploads, ids)  # warm both gunicorn processes

        job_id = submit_job(celery, store, {"kind": "directory", "directory": str(tmp / "bulk")})
        started = time.monotonic()
        rows = []
        for clients in phases:
            rows.append(run_phase(base, clients, args.seconds, uploads, ids))
            rows[-1]["job_done_at_end"] = (store.get_job(job_id) or {}).get("done", 0)
            print(json.dumps(rows[-1]), flush=True)
        job = wait_for_job(store, job_id, timeout_s=600, workers=[worker])
        took = time.monotonic() - started
        distinct = len({image_id(p.read_bytes()) for p in paths} | set(ids))
        vectors = store.count_vectors(MODEL_KEY)
        logged = store.redis.zcard(store.key("added", MODEL_KEY))
        lost = distinct - vectors

        print(f"\nsearch load while a directory job indexed {args.images} images (300x250 JPEGs); "
              f"{args.seconds:.0f} s per phase, half by upload, half by image id")
        print("| clients | requests | req/s | p50 ms | p99 ms | upload p50/p99 ms | by id p50/p99 ms | 5xx | other "
              "errors | job done at phase end |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['clients']} | {r['requests']} | {r['per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['p50_upload_ms']} / {r['p99_upload_ms']} | {r['p50_id_ms']} / {r['p99_id_ms']} | {r['5xx']} | "
                  f"{r['other_errors']} | {r['job_done_at_end']} / {args.images} |")
        print(f"job: {job['state']}, total {job['total']}, done {job['done']}, failed {job['failed']}, "
              f"{took:.0f} s; vectors {vectors} of {distinct} distinct images (lost {lost}), "
              f"vector writes logged {logged}")
        summary = {"phases": rows, "job": {k: job[k] for k in ("state", "total", "done", "failed")},
                   "job_seconds": round(took, 1), "vectors": vectors, "distinct_images": distinct, "lost": lost}
        print(json.dumps(summary))
        if any(r["5xx"] for r in rows) or lost or job["done"] != job["total"]:
            sys.exit(1)
    finally:
        if gateway:
            stop_process(gateway, timeout_s=20)
        worker.stop()
        stop_process(server)
        drop_keys(settings)


if __name__ == "__main__":
    main()
