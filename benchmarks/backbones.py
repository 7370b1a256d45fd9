"""The model call of each EfficientNet-Lite variant, side by side in one process.

    python benchmarks/backbones.py [--model-base var/models] [--models effnet_lite0,effnet_lite1,effnet_lite2]
                                   [--calls 40] [--rounds 5]

Each variant is loaded as the model server loads it (modelserver.registry.load_signature) and run in
alternating rounds, so that the load of a shared machine hits every variant alike: a batch of 1 (a
query's model call) `--calls` times per round, then a batch of 32 (indexing). Prints the medians over
rounds of the wall time and the CPU time (process_time, all threads) per batch-1 call, the batch-32
rate, and each as a ratio of the first variant's. Export the variants first (`vsearch export-model
--model effnet_lite1 --out var/models`).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelserver.registry import load_signature  # noqa: E402
from services.images import load_for_model  # noqa: E402
from tests.conftest import imagenet_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--models", default="effnet_lite0,effnet_lite1,effnet_lite2")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    names = args.models.split(",")
    runs, batches = {}, {}
    for name in names:
        signature, run, _session = load_signature(name, args.model_base / name / "1")
        size = signature.inputs["images"].tensor_shape.dim[1].size
        photos = [load_for_model(p.read_bytes(), size) for p in imagenet_photos()]
        batches[name] = np.stack((photos * 2)[:32])
        runs[name] = (run, _session)
        run(batches[name])  # warm up
    single = {n: [] for n in names}
    cpu = {n: [] for n in names}
    rate = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            run, b = runs[name][0], batches[name]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for i in range(args.calls):
                run(b[i % 32:i % 32 + 1])
            single[name].append((time.perf_counter() - wall0) * 1000 / args.calls)
            cpu[name].append((time.process_time() - cpu0) * 1000 / args.calls)
            wall0 = time.perf_counter()
            run(b)
            run(b)
            rate[name].append(64 / (time.perf_counter() - wall0))
    first = names[0]
    med = {k: {n: statistics.median(v[n]) for n in names} for k, v in (("wall", single), ("cpu", cpu), ("rate", rate))}
    print(f"{'model':14} {'batch 1 wall ms':>16} {'batch 1 CPU ms':>15} {'batch 32 img/s':>15}   ratios to {first}")
    for n in names:
        print(f"{n:14} {med['wall'][n]:16.1f} {med['cpu'][n]:15.1f} {med['rate'][n]:15.1f}   "
              f"{med['wall'][n] / med['wall'][first]:.2f} / {med['cpu'][n] / med['cpu'][first]:.2f} / "
              f"{med['rate'][n] / med['rate'][first]:.2f}")


if __name__ == "__main__":
    main()
