"""Build the evaluation collection in one command (sources and split: evaluation/collection.py).

    .venv/bin/python -m evaluation.build_collection [--out var/eval/collection] [--cache var/eval/cache]
    .venv/bin/python -m evaluation.build_collection --reselect   # rewrite the committed manifest (once)

Writes <out>/dev/<class>/<image> and <out>/test/<class>/<image>.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from evaluation import collection


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="var/eval/collection", type=Path)
    parser.add_argument("--cache", default="var/eval/cache", type=Path)
    parser.add_argument("--reselect", action="store_true", help="select the images anew and rewrite the manifest")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.reselect:
        entries = collection.select(args.cache)
        collection.write_manifest(entries)
        per = Counter((e["split"], e["source"]) for e in entries)
        for (split, source), n in sorted(per.items()):
            print(f"{split:5} {source:24} {n}")
    counts = collection.build(args.out, args.cache)
    print(f"{counts['dev']} dev and {counts['test']} test images under {args.out} "
          f"({counts['missing']} missing) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
