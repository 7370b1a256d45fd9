"""Copy detection on edit families nobody listed (evaluation/unlisted_edits.py), with the method and
thresholds exactly as published: does what was tuned on the listed families carry over?

    python -m evaluation.build_collection                  # once: var/eval/collection/{dev,test}
    python benchmarks/unlisted_families.py [--per-family 80] [--out var/eval/unlisted.json]

For each split, the same protocol as `vsearch eval` (evaluation/copy_eval.py): the split indexed
whole (closed set: is the source, or a twin, ranked first?) and half indexed (open set: the
verdict of the best answer under the published thresholds). Nothing is fitted here. Prints a
markdown table; the full per-query results go to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluation import calibrate, edits, unlisted_edits  # noqa: E402
from evaluation import copy_eval as cd  # noqa: E402
from evaluation.run import METHODS, family_ranks, verdicts_by_family  # noqa: E402
from evaluation.server import local_model_server  # noqa: E402
from services import verdicts  # noqa: E402
from services.precision import FP32  # noqa: E402
from services.tfs_client import ModelClient  # noqa: E402

SEEDS = {"dev": edits.DEV_SEED, "test": edits.TEST_SEED}


def evaluate(root: Path, client, per_family: int) -> dict:
    info = client.info()
    thresholds = verdicts.published(info.name, info.version)
    splits = {name: cd.load_split(root, name, client) for name in SEEDS}
    families = tuple(unlisted_edits.FAMILIES)
    out = {"model": {"name": info.name, "version": info.version}, "thresholds": thresholds.to_json(), "splits": {}}
    for name, other in (("dev", "test"), ("test", "dev")):
        qs = cd.run_queries(splits[name], splits[other], client, SEEDS[name], thresholds, per_family,
                            lambda m: print(m, file=sys.stderr), unlisted_edits.FAMILIES)
        ranks = family_ranks(qs, families)
        out["splits"][name] = {
            "families": ranks,
            "mean_rank1": {m: float(np.mean([f[m]["rank1"] for f in ranks.values()])) for m in METHODS},
            "open_set": calibrate.open_set_scores(qs, thresholds),
            "verdicts_by_family": verdicts_by_family(qs, thresholds, families),
            "queries": [q.to_json() for q in qs],
        }
    return out


def markdown(results: dict) -> str:
    d, t = results["splits"]["dev"], results["splits"]["test"]
    lines = ["| family | " + " | ".join(f"{METHODS[m]} dev | test" for m in METHODS)
             + " | right copy verdict, open set dev | test |", "|---" * (2 * len(METHODS) + 3) + "|"]
    for family in unlisted_edits.FAMILIES:
        cells = [f"{s['families'][family][m]['rank1']:.3f}" for m in METHODS for s in (d, t)]
        cells += [f"{s['verdicts_by_family'][family]:.2f}" for s in (d, t)]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{s['mean_rank1'][m]:.3f}**" for m in METHODS for s in (d, t))
                 + " | | |")
    for name, s in (("dev", d), ("test", t)):
        o = s["open_set"]
        lines.append(f"\n{name}, open set: copy precision {o['precision']:.3f}, recall {o['recall']:.3f}, "
                     f"unindexed -> none/similar {o['unindexed_ok']:.3f} ({o['queries']} queries)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT / "var/eval/collection")
    parser.add_argument("--models", type=Path, default=ROOT / "var/models")
    parser.add_argument("--per-family", type=int, default=cd.QUERY_SOURCES)
    parser.add_argument("--out", type=Path, default=ROOT / "var/eval/unlisted.json")
    args = parser.parse_args()
    with local_model_server(args.models, precision=FP32) as target:
        client = ModelClient(target, "effnet_lite0", timeout_s=60)
        try:
            results = evaluate(args.root, client, args.per_family)
        finally:
            client.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
