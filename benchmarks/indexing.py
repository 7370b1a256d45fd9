"""End-to-end indexing speed against the model-forward limit and against the seed's pipeline.

    python benchmarks/indexing.py [--small 480] [--camera 48] [--rounds 2]

Two image sets made from the real photos shipped in foolbox (see design.md, "Benchmark sets"):
  small:  about 300x250 JPEGs (Caltech-256 size): the model is the limit;
  camera: 4000x3000 JPEGs (~1 MB, 12 MP): decoding is the limit.
For each set, in alternating rounds on the same machine:
  forward:  the SavedModel in-process at batch 32 on already-resized arrays (the ceiling);
  ours:     files on disk -> searchable, through the real system: a directory job run by one
            `vsearch worker` process (threads) against `vsearch model-server` and Redis;
  seed:     the seed's pipeline on the same backbone: resize every image to disk, then decode
            and embed in batches of 100, then write features .npy and a paths file.
Also prints the CPU time per image that the worker, the model server and Redis each spent during
our job (from /proc). Needs Redis on 127.0.0.1:6379 (uses db 14 under its own key prefix, cleaned up).

With --model-core N the model gets core N to itself, as in a deployment where TF Serving has its own
machine or pod: this process (so the forward-only figure) and the model server run on core N only,
the worker on the other cores. Then ours/forward measures how well the pipeline keeps the model
busy, apart from how much CPU decoding takes away from it. The seed (one process) is left out.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.store import Store  # noqa: E402
from modelserver.process import start_model_server, stop_process  # noqa: E402
from tests.conftest import free_port, imagenet_photos  # noqa: E402
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_job  # noqa: E402
from worker.celery_app import make_celery  # noqa: E402
from services.jobs import submit_job  # noqa: E402


def make_set(root: Path, count: int, size: tuple[int, int], quality: int) -> list[Path]:
    """`count` distinct JPEGs of about `size` from the real photos (random crop, scale, brightness)."""
    rng = random.Random(0)
    photos = [Image.open(p).convert("RGB") for p in imagenet_photos()]
    root.mkdir(parents=True)
    paths = []
    for i in range(count):
        im = photos[i % len(photos)]
        w, h = im.size
        crop = rng.uniform(0.75, 1.0)
        left, top = rng.randint(0, int(w * (1 - crop))), rng.randint(0, int(h * (1 - crop)))
        im = im.crop((left, top, left + int(w * crop), top + int(h * crop))).resize(size, Image.BICUBIC)
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.9, 1.1))
        folder = root / f"class_{i % len(photos):02d}"
        folder.mkdir(exist_ok=True)
        path = folder / f"img_{i:05d}.jpg"
        im.save(path, quality=quality)
        paths.append(path)
    return paths


class Forward:
    """The exported SavedModel called in-process."""

    def __init__(self, model_dir: Path):
        import tensorflow as tf
        self.tf = tf
        self.fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.fn(images=self.tf.constant(batch))["embedding"].numpy()


def forward_only(forward: Forward, n: int) -> float:
    from services.images import load_for_model
    arrays = [load_for_model(p.read_bytes(), 224) for p in imagenet_photos()]
    batch = np.stack((arrays * 2)[:32])
    forward(batch)
    start = time.perf_counter()
    for _ in range(0, n, 32):
        forward(batch)
    return (n // 32 * 32 or 32) / (time.perf_counter() - start)


def seed_pipeline(forward: Forward, paths: list[Path], work: Path) -> float:
    """The seed: image_resize to disk, then myalexnet_feature-style batches of 100, then save."""
    start = time.perf_counter()
    resized_dir = work / "resized"
    resized_dir.mkdir()
    resized = []
    for p in paths:
        out = resized_dir / f"{len(resized):06d}.jpg"
        with Image.open(p) as im:
            im.convert("RGB").resize((224, 224)).save(out)
        resized.append(out)
    features = []
    for i in range(0, len(resized), 100):
        batch = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in resized[i:i + 100]])
        features.append(np.concatenate([forward(batch[j:j + 32]) for j in range(0, len(batch), 32)]))
    np.save(work / "features.npy", np.concatenate(features))
    (work / "paths.txt").write_text("\n".join(map(str, paths)))
    return len(paths) / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ours(model_server: str, images_dir: Path, work: Path, concurrency: int, worker_cores: set[int] | None = None,
         cpu_pids: dict[str, int] | None = None, cpu_ms: dict[str, list[float]] | None = None) -> float:
    """img/s of a directory job; with `cpu_pids`, adds each process's CPU ms per image to `cpu_ms`."""
    settings = isolated_settings(work, model_server, redis_url="redis://127.0.0.1:6379/14",
                                 allowed_roots=(images_dir.parent.resolve(),))
    store, app = Store.from_settings(settings), make_celery(settings)
    worker = WorkerProcess(settings, work, concurrency=concurrency)
    if worker_cores:  # set before the interpreter has started any thread: all of them inherit it
        os.sched_setaffinity(worker.proc.pid, worker_cores)
    try:
        worker.wait_ready()
        pids = {"worker": worker.proc.pid, **(cpu_pids or {})}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        job = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(images_dir)}),
                           timeout_s=1800, workers=[worker])
        elapsed = time.perf_counter() - start
        assert job["done"] == job["total"] and job["failed"] == 0, job
        if cpu_ms is not None:
            for name, pid in pids.items():
                cpu_ms.setdefault(name, []).append((cpu_seconds(pid) - cpu_before[name]) / job["total"] * 1000)
        return job["total"] / elapsed
    finally:
        worker.stop()
        drop_keys(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=480)
    parser.add_argument("--camera", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--model-core", type=int, help="give the model this core to itself (see above)")
    args = parser.parse_args()
    worker_cores = None
    if args.model_core is not None:
        worker_cores = os.sched_getaffinity(0) - {args.model_core}
        os.sched_setaffinity(0, {args.model_core})  # before TensorFlow sizes its thread pools
    from model_export.export import export_model
    if not (args.model_base / "effnet_lite0" / "1").exists():
        export_model(model="effnet_lite0", out=args.model_base, version=1)

    tmp = Path(tempfile.mkdtemp(prefix="vsearch-bench-"))
    sets = {"small": make_set(tmp / "sets" / "small", args.small, (300, 250), 90),
            "camera": make_set(tmp / "sets" / "camera", args.camera, (4000, 3000), 92)}
    forward = Forward(args.model_base / "effnet_lite0" / "1")
    port = free_port()
    server = start_model_server(args.model_base, port)
    results: dict[str, list[float]] = {}
    redis_pid = redis.Redis.from_url("redis://127.0.0.1:6379/14").info("server")["process_id"]
    cpu_pids = {"model server": server.pid, "redis": redis_pid}
    cpu_ms: dict[str, dict[str, list[float]]] = {}
    try:
        for r in range(args.rounds):
            for name, paths in sets.items():
                work = tmp / f"run-{r}-{name}"
                work.mkdir()
                results.setdefault(f"{name} forward", []).append(forward_only(forward, len(paths)))
                results.setdefault(f"{name} ours", []).append(
                    ours(f"127.0.0.1:{port}", paths[0].parent.parent, work, args.concurrency, worker_cores,
                         cpu_pids, cpu_ms.setdefault(name, {})))
                if worker_cores is None:
                    (work / "seed").mkdir()
                    results.setdefault(f"{name} seed", []).append(seed_pipeline(forward, paths, work / "seed"))
                print(f"round {r + 1} {name}: " + ", ".join(f"{k.split()[1]} {v[-1]:.1f}" for k, v in results.items()
                                                           if k.startswith(name)), flush=True)
    finally:
        stop_process(server)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{'set':8} {'forward img/s':>14} {'ours img/s':>11} {'seed img/s':>11} {'ours/forward':>13} {'ours/seed':>10}")
    for name, paths in sets.items():
        f, o, s = med[f"{name} forward"], med[f"{name} ours"], med.get(f"{name} seed", float("nan"))
        print(f"{name:8} {f:14.1f} {o:11.1f} {s:11.1f} {o / f:13.2f} {o / s:10.2f}   ({len(paths)} images)")
    print("\nCPU ms per image during our job (median over rounds):")
    for name, per_process in cpu_ms.items():
        print(f"  {name}: " + ", ".join(f"{p} {statistics.median(v):.2f}" for p, v in per_process.items()))
    print(json.dumps({k: [round(x, 1) for x in v] for k, v in results.items()}))


if __name__ == "__main__":
    main()
