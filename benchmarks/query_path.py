"""CPU of an upload search before and around the model call, by JPEG draft setting (no model, no HTTP).

    .venv/bin/python benchmarks/query_path.py [--rounds 3]

The gateway's steps for each of the 20 real foolbox photos (512x512 progressive JPEGs): decode
(JPEG draft for the model size), query views (rotation and border checks), model inputs and the
views' layouts. Run with `images.DRAFT_GAP` at 2 (the short side kept >= 2x the model size, as
before) and at 1 (the setting now), alternating, in one process.
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

from services import images, copy_detection  # noqa: E402
from tests.conftest import imagenet_photos  # noqa: E402

SIZE = 224


def query_work(data: bytes) -> np.ndarray:
    """What `copy_detection.query_embeddings` does around its model call, plus the decode."""
    arrays, _, _ = copy_detection.query_arrays(images.decode(data, draft_for=SIZE), SIZE)
    return copy_detection.layout(arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    photos = [p.read_bytes() for p in imagenet_photos()]
    now = images.DRAFT_GAP
    results: dict[int, list[float]] = {2: [], 1: []}
    try:
        for _ in range(args.rounds):
            for gap in results:
                images.DRAFT_GAP = gap
                start = time.process_time()
                for _ in range(5):
                    for data in photos:
                        query_work(data)
                results[gap].append((time.process_time() - start) / (5 * len(photos)) * 1000)
    finally:
        images.DRAFT_GAP = now
    for gap, values in results.items():
        print(f"DRAFT_GAP {gap}: {statistics.median(values):.2f} ms of CPU a query (rounds: "
              f"{', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
