"""Retrieval quality of bf16 serving against fp32, on the same images and the same model server.

    python benchmarks/precision_quality.py var/eval/pkgphotos [--copies N] [--model-base var/models]

Exports effnet_lite0 in both precisions if missing, serves both with `vsearch model-server` (the
bf16 variant only where the CPU has bf16), and runs `vsearch eval`'s harness (category retrieval,
copy detection under the transforms, Annoy recall) once per precision, without the in-process seed
baseline. Also prints the cosine similarity of each image's bf16 embedding to its fp32 one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from modelserver.process import free_port, running_model_server  # noqa: E402
from services.precision import BF16, FP32, cpu_has_bf16, served_name  # noqa: E402
from evaluation import harness  # noqa: E402
from services.tfs_client import ModelClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--copies", type=int)
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    args = parser.parse_args()
    if not cpu_has_bf16():
        sys.exit("this CPU has no bf16 instructions: nothing to compare")
    from model_export.export import export_model
    for precision in (FP32, BF16):
        if not (args.model_base / served_name("effnet_lite0", precision) / "1").exists():
            export_model(model="effnet_lite0", out=args.model_base, version=1, precision=precision)

    results = {}
    with running_model_server(args.model_base, free_port()) as target:
        clients = {p: ModelClient(target, served_name("effnet_lite0", p)) for p in (FP32, BF16)}
        corpus = harness.load_corpus(args.dataset, clients[FP32].info().input_size[0])
        vectors = {p: c.embed(corpus.arrays) for p, c in clients.items()}
        cosine = (vectors[FP32] * vectors[BF16]).sum(1)
        for precision, client in clients.items():
            results[precision] = harness.evaluate(args.dataset, client, copies=args.copies,
                                                  methods=("adopted", "baseline"), progress=print)
    print(f"\nbf16 embedding against fp32, {len(cosine)} images: cosine min {cosine.min():.4f}, "
          f"p1 {np.percentile(cosine, 1):.4f}, median {np.median(cosine):.4f}")
    print(f"\n| measure | method | {FP32} | {BF16} |\n|---|---|---|---|")
    for method in ("adopted", "baseline"):
        rows = {"category P@1": lambda r: r["category"][method]["precision_at_1"],
                "category mAP": lambda r: r["category"][method]["map"],
                "copy rank-1, mean of the issue's 11": lambda r: r["copy"][method]["mean_rank1_issue_transforms"],
                "copy rank-1, min of the issue's 11": lambda r: r["copy"][method]["min_rank1_issue_transforms"],
                "copy rank-1, mean of all": lambda r: r["copy"][method]["mean_rank1_all"]}
        for name, get in rows.items():
            print(f"| {name} | {method} | {get(results[FP32]):.3f} | {get(results[BF16]):.3f} |")
    d = results[FP32]["dataset"]
    print(f"\n({d['images']} images, {d['category_queries']} category queries, {d['copy_sources']} copy sources)")
    print(json.dumps({"cosine_min": float(cosine.min()), "cosine_median": float(np.median(cosine))}))


if __name__ == "__main__":
    main()
