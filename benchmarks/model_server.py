"""Model throughput in-process against the same model behind the gRPC model server, in one run.

    python benchmarks/model_server.py [--model-base var/models] [--seconds 8] [--rounds 3]

Measures, in alternating rounds so that drift on a shared machine hits every figure alike:
in-process forward img/s at batch 1 and 32; through `vsearch model-server` (a subprocess) with one
client at batch 1 and 32, 2 clients at batch 32, and 8 concurrent single-image clients. Prints medians and each figure
as a ratio of the in-process batch-32 rate (the target for batched gRPC is >= 0.9).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.tfs_client import ModelClient  # noqa: E402
from modelserver.process import start_model_server, stop_process  # noqa: E402
from tests.conftest import free_port, imagenet_photos  # noqa: E402


def rate(fn, images_per_call: int, seconds: float, threads: int = 1) -> float:
    """Images per second while `threads` callers call `fn` back to back for `seconds`."""
    count = [0] * threads
    stop = time.monotonic() + seconds

    def loop(i):
        while time.monotonic() < stop:
            fn()
            count[i] += images_per_call

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    start = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(count) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    args = parser.parse_args()

    from model_export.export import export_model
    if not (args.model_base / "effnet_lite0" / "1").exists():
        export_model(model="effnet_lite0", out=args.model_base, version=1)
    from services.images import load_for_model
    photos = [load_for_model(p.read_bytes(), 224) for p in imagenet_photos()]
    batch32 = np.stack((photos * 2)[:32])
    single = batch32[:1]

    import tensorflow as tf
    fn = tf.saved_model.load(str(args.model_base / "effnet_lite0" / "1")).signatures["serving_default"]
    forward = lambda batch: fn(images=tf.constant(batch))["embedding"].numpy()  # noqa: E731
    forward(batch32)

    port = free_port()
    server = start_model_server(args.model_base, port, "--batch-timeout-ms", str(args.batch_timeout_ms))
    client = ModelClient(f"127.0.0.1:{port}", "effnet_lite0")
    clients = [ModelClient(f"127.0.0.1:{port}", "effnet_lite0") for _ in range(8)]
    client.embed(batch32)
    cases = {
        "in-process batch 1": lambda: rate(lambda: forward(single), 1, args.seconds),
        "in-process batch 32": lambda: rate(lambda: forward(batch32), 32, args.seconds),
        "gRPC 1 client batch 1": lambda: rate(lambda: client.embed(single), 1, args.seconds),
        "gRPC 1 client batch 32": lambda: rate(lambda: client.embed(batch32), 32, args.seconds),
        "gRPC 2 clients batch 32": lambda: rate_per_client(clients[:2], batch32, args.seconds, 32),
        "gRPC 8 clients batch 1": lambda: rate_per_client(clients, single, args.seconds),
    }
    results = {name: [] for name in cases}
    try:
        for _ in range(args.rounds):
            for name, case in cases.items():
                results[name].append(case())
    finally:
        stop_process(server)
    base = statistics.median(results["in-process batch 32"])
    print(f"{'case':28} {'img/s (median)':>15} {'min':>8} {'max':>8} {'x in-process b32':>17}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:28} {med:15.1f} {min(values):8.1f} {max(values):8.1f} {med / base:17.2f}")
    print(json.dumps({k: [round(v, 1) for v in vs] for k, vs in results.items()}))


def rate_per_client(clients, images, seconds, per_call=1):
    """One thread per client (each with its own channel), sending `images` back to back."""
    index = iter(range(len(clients)))
    local = threading.local()

    def call():
        if not hasattr(local, "client"):
            local.client = clients[next(index)]
        local.client.embed(images)
    return rate(call, per_call, seconds, threads=len(clients))


if __name__ == "__main__":
    main()
