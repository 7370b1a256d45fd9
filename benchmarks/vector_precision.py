"""Float16 stored vectors against float32: copy rank-1 and category retrieval on the evaluation
collection's held-out test split, the same queries scored against both, side by side.

    python benchmarks/vector_precision.py [--collection var/eval/collection] [--per-family 25]
        [--model-server HOST:PORT]   # default: starts one on $VSEARCH_MODEL_BASE (var/models)

The store keeps each image's vector as float16 (services/store/vectors.py); queries stay float32
(the model's output). Copies: every edit family (evaluation/edits.py, the test seed) applied to a
fixed sample of images; the rank of the source for the plain embedding (cosine) and for the
service's verified path (shortlist of 30 by cosine, then services/copies.py's re-rank with layouts
and ORB keypoints). Category: leave-one-out over the split, plain cosine (stored against stored, as a
search by image id). Reported: rank-1 rates and mAP with float32 and float16 vectors, and how many
queries changed their first result at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluation import copy_eval as cd  # noqa: E402
from evaluation import edits  # noqa: E402
from modelserver.process import free_port, start_model_server, stop_process  # noqa: E402
from services import copies, images, verdicts  # noqa: E402
from services.tfs_client import ModelClient  # noqa: E402


def as_stored(emb: np.ndarray) -> np.ndarray:
    return emb.astype(np.float16).astype(np.float32)


def copy_ranks(split: cd.Split, other: cd.Split, client, per_family: int) -> dict:
    stored = dataclasses.replace(split, emb=as_stored(split.emb))
    n = len(split.paths)
    rng = np.random.default_rng(edits.TEST_SEED)
    sources = np.sort(rng.choice(n, size=min(per_family, n), replace=False))
    plain = [split.original(i) if i in set(sources.tolist()) else None for i in range(n)]
    pool = [other.original(int(j)) for j in rng.choice(len(other.paths), size=40, replace=False)]
    size = client.info().input_size[0]
    thresholds = verdicts.Thresholds()
    rank1 = {(m, v): [] for m in ("baseline", "verified") for v in ("float32", "float16")}
    changed = {"baseline": 0, "verified": 0}
    for f, family in enumerate(edits.FAMILIES):
        for _, i, image, _ in edits.make_queries(plain, sources, pool, edits.TEST_SEED + 1000 * f, (family,)):
            group = split.group(i)
            q_plain = client.embed(images.prepare(image, size)[None])[0]
            q = copies.prepare(client, image)
            firsts = {}
            for version, s in (("float32", split), ("float16", stored)):
                base = s.emb @ q_plain
                hits, _ = cd._verified_rank(s, q, None, thresholds)
                top = {"baseline": int(np.argmax(base)), "verified": int(hits[0].image_id) if hits else -1}
                for m in top:
                    rank1[(m, version)].append(top[m] in group)
                firsts[version] = top
            for m in changed:
                changed[m] += firsts["float32"][m] != firsts["float16"][m]
    queries = len(rank1[("baseline", "float32")])
    return {"queries": queries, "changed_first_result": changed,
            "rank1": {f"{m} {v}": round(float(np.mean(r)), 4) for (m, v), r in rank1.items()}}


def category(split: cd.Split) -> dict:
    out = {}
    counts = np.bincount(split.labels)
    for version, emb in (("float32", split.emb), ("float16", as_stored(split.emb))):
        p1, ap = [], []
        for i in (i for i in range(len(emb)) if counts[split.labels[i]] >= 2):
            cosine = emb @ emb[i]
            cosine[i] = -np.inf
            ranking = [int(j) for j in np.argsort(-cosine, kind="stable") if j != i]
            relevant = {j for j in range(len(emb)) if j != i and split.labels[j] == split.labels[i]}
            p1.append(ranking[0] in relevant)
            ap.append(cd._average_precision(ranking, relevant))
        out[version] = {"precision_at_1": round(float(np.mean(p1)), 4), "map": round(float(np.mean(ap)), 4),
                        "queries": len(p1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", type=Path, default=ROOT / "var/eval/collection")
    parser.add_argument("--per-family", type=int, default=25)
    parser.add_argument("--model-server")
    args = parser.parse_args()
    proc = None
    target = args.model_server
    if target is None:
        port = free_port()
        proc = start_model_server(Path(os.environ.get("VSEARCH_MODEL_BASE", ROOT / "var/models")), port)
        target = f"127.0.0.1:{port}"
    try:
        client = ModelClient(target, "effnet_lite0")
        test, dev = (cd.load_split(args.collection, name, client) for name in ("test", "dev"))
        out = {"split": "test", "images": len(test.paths),
               "max_abs_cosine_change": float(np.abs(test.emb @ test.emb.T
                                                     - as_stored(test.emb) @ as_stored(test.emb).T).max()),
               "copies": copy_ranks(test, dev, client, args.per_family), "category": category(test)}
        print(json.dumps(out, indent=1))
    finally:
        if proc:
            stop_process(proc)


if __name__ == "__main__":
    main()
