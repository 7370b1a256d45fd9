"""How the adopted re-ranking depends on its two parameters (docs/quality.md, "Sensitivity").

    .venv/bin/python benchmarks/quality_grid.py [DATASET_DIR] [--model-server HOST:PORT]

Embeds the collection, every copy query and every category query once (through a model server,
started from VSEARCH_MODEL_BASE if none is given), then re-scores them for a grid of
LAYOUT_BONUS x LAYOUT_THRESHOLD. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import itertools
from contextlib import nullcontext

import numpy as np

from services.config import Settings
from services import copy_detection as robust
from evaluation import harness, metrics
from evaluation.server import local_model_server
from services.tfs_client import ModelClient

BONUSES = (0.0, 0.2, 0.3, 0.4, 0.5, 0.7)
THRESHOLDS = (0.4, 0.5, 0.55, 0.6, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default="var/eval/pkgphotos")
    parser.add_argument("--model-server")
    args = parser.parse_args()
    settings = Settings.from_env()
    server = nullcontext(args.model_server) if args.model_server else local_model_server(settings.model_base)
    with server as target:
        client = ModelClient(target, settings.model_name)
        corpus = harness.load_corpus(args.dataset, client.info().input_size[0])
        emb = client.embed(corpus.arrays)
        layouts = robust.index_layouts(corpus.arrays)
        transforms = {**harness.TRANSFORMS, **harness.EXTRA_TRANSFORMS}
        copies = {name: [robust.query_embeddings(client, t(o)) for o in corpus.originals] for name, t in transforms.items()}
        own = [robust.query_embeddings(client, o) for o in corpus.originals]
        client.close()
    n = len(corpus.items)
    counts = np.bincount(corpus.labels)
    print("| bonus | threshold | copy rank-1, mean of 11 | min of 11 | category P@1 | mAP |")
    print("|---|---|---|---|---|---|")
    for bonus, threshold in itertools.product(BONUSES, THRESHOLDS):
        if bonus == 0.0 and threshold != THRESHOLDS[0]:
            continue

        def scores(q):
            return robust.rerank_scores(q.embeddings, q.layouts, emb, layouts, bonus, threshold, q.primary)
        r1 = [np.mean([harness.rank_from_scores(scores(q), i) == 1 for i, q in enumerate(copies[t])])
              for t in harness.TRANSFORMS]
        p1, rankings, relevant = [], [], []
        for i, q in enumerate(own):
            if counts[corpus.labels[i]] < 2:
                continue
            s = scores(q)
            s[i] = -np.inf
            ranking = [j for j in np.argsort(-s, kind="stable") if j != i]
            rel = {j for j in range(n) if j != i and corpus.labels[j] == corpus.labels[i]}
            p1.append(metrics.precision_at_k(ranking, rel, 1))
            rankings.append(ranking)
            relevant.append(rel)
        label = "0 (views only)" if bonus == 0.0 else f"{bonus:g}"
        print(f"| {label} | {threshold:g} | {np.mean(r1):.3f} | {min(r1):.3f} | {np.mean(p1):.3f} | "
              f"{metrics.mean_average_precision(rankings, relevant):.3f} |", flush=True)


if __name__ == "__main__":
    main()
