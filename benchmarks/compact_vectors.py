"""Compact index vectors on the evaluation collection: copy and category quality, recall@10 against
exact search, and bytes per image, for the index holding full float32 vectors, float16 ones, or a
PCA projection (services/index/compact.py) to fewer dimensions.

    python benchmarks/compact_vectors.py [--collection var/eval/collection] [--per-family 80]
        [--model-base var/models] [--model-server HOST:PORT]

What the index holds only decides the shortlist (services/copies.py: the SHORTLIST best by cosine
over the query's views); the re-rank, verification and verdicts read the stored vectors, which stay
full float32 here except in the float16 variant (stored rounded too). So each variant is scored
through the service's own `copies.rank` on its own shortlist, with the queries of `vsearch eval`
(evaluation/copy_eval.py: every edit family, DEV_SEED / TEST_SEED, the same sources). The
projection is fitted on the *other* split's vectors (a collection it has not seen: the service
fits on the indexed vectors themselves, which can only do better) and, for one setting, on the
split itself.

Category: leave-one-out over images of classes with 2 or more, P@1 and mAP of the plain embedding
in the variant's space, and P@1 of the service's ranking for category queries without keypoints
(the variant's shortlist re-ranked by full cosine). recall@10: the variant's top 10 by cosine in
its own space (the exact search an index approximates) against the top 10 in the model's space,
over the copy queries (best over their views).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluation import copy_eval as ce  # noqa: E402
from evaluation import edits  # noqa: E402
from services import copies, verdicts  # noqa: E402
from services.index import compact  # noqa: E402

ANNOY_NODE = 12  # bytes of header per Annoy node beside the D float32


def l2n(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class Variant:
    """How the index represents vectors: `index(x)` for stored and query vectors (unit rows),
    `stored(x)`: what the re-rank reads."""

    def __init__(self, name, index, stored=lambda x: x, bytes_per_image=0):
        self.name, self.index, self.stored, self.bytes_per_image = name, index, stored, bytes_per_image


def centred(fit_on, dims):
    mean = fit_on.mean(axis=0)
    x = fit_on - mean
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:dims].astype(np.float32)
    return lambda v: l2n((np.asarray(v, np.float32) - mean) @ comps.T)


def variants(split_emb, other_emb) -> list[Variant]:
    d = split_emb.shape[1]
    out = [Variant("float32 1280 (today)", l2n, bytes_per_image=ANNOY_NODE + 4 * d),
           Variant("float16 1280", lambda x: l2n(np.asarray(x, np.float16).astype(np.float32)),
                   lambda x: np.asarray(x, np.float16).astype(np.float32), 2 * d)]
    for dims in (128, 256, 384, 512):
        p = compact.fit(other_emb, dims)
        out.append(Variant(f"PCA {dims}", p.apply, bytes_per_image=ANNOY_NODE + 4 * dims))
    p = compact.fit(split_emb, 256)
    out.append(Variant("PCA 256, fitted on the index", p.apply, bytes_per_image=ANNOY_NODE + 4 * 256))
    out.append(Variant("PCA 256 centred", centred(other_emb, 256), bytes_per_image=ANNOY_NODE + 4 * 256))
    return out


def shortlist(q_index: np.ndarray, items: np.ndarray, n: int, mask=None) -> list[int]:
    cos = (q_index @ items.T).max(axis=0)
    if mask is not None:
        cos = np.where(mask, cos, -np.inf)
    return [int(j) for j in np.argsort(-cos, kind="stable")[:n]]


def run_split(split, other, client, seed, per_family, progress) -> dict:
    vs = variants(split.emb, other.emb)
    items = {v.name: v.index(split.emb) for v in vs}
    stored = {v.name: v.stored(split.emb) for v in vs}
    thresholds = verdicts.Thresholds()
    res = {v.name: {"rank1": {}, "in_shortlist": [], "recall10": []} for v in vs}
    for family, queries in ce.family_queries(split, other, seed, per_family):
        progress(f"{split.name}: {family}")
        for v in vs:
            res[v.name]["rank1"][family] = []
        for i, image in queries:
            group = split.group(i)
            q = copies.prepare(client, image)
            exact10 = set(shortlist(l2n(q.embeddings), l2n(split.emb), 10))
            cache = {}
            for v in vs:
                qi = v.index(q.embeddings)
                short = shortlist(qi, items[v.name], ce.SHORTLIST)
                key = (frozenset(short), v.stored is vs[0].stored)
                if key not in cache:
                    hits = copies.rank(q, [str(j) for j in short], stored[v.name][short], split.layouts[short],
                                       lambda wanted: [split.feats[int(w)] for w in wanted], thresholds, 1)
                    cache[key] = int(hits[0].image_id) if hits else -1
                r = res[v.name]
                r["rank1"][family].append(cache[key] in group)
                r["in_shortlist"].append(bool(group & set(short)))
                r["recall10"].append(len(set(short[:10]) & exact10) / 10)
    out = {}
    for v in vs:
        r = res[v.name]
        fam = {k: float(np.mean(x)) for k, x in r["rank1"].items()}
        out[v.name] = {"copy_rank1_mean": float(np.mean(list(fam.values()))), "copy_rank1_min": float(min(fam.values())),
                       "copy_rank1": fam, "in_shortlist": float(np.mean(r["in_shortlist"])),
                       "recall_at_10": float(np.mean(r["recall10"])), "bytes_per_image": v.bytes_per_image,
                       **category(split, items[v.name])}
    return out


def category(split, items) -> dict:
    n = len(split.paths)
    counts = np.bincount(split.labels)
    full = l2n(split.emb)
    p1, ap, p1_service = [], [], []
    for i in (i for i in range(n) if counts[split.labels[i]] >= 2):
        relevant = {j for j in range(n) if j != i and split.labels[j] == split.labels[i]}
        cos = items @ items[i]
        cos[i] = -np.inf
        ranking = [int(j) for j in np.argsort(-cos, kind="stable") if j != i]
        p1.append(ranking[0] in relevant)
        ap.append(ce._average_precision(ranking, relevant))
        short = ranking[:ce.SHORTLIST]
        p1_service.append(short[int(np.argmax(full[short] @ full[i]))] in relevant)
    return {"category_p1": float(np.mean(p1)), "category_map": float(np.mean(ap)),
            "category_p1_shortlist_reranked": float(np.mean(p1_service))}


def markdown(results: dict) -> str:
    names = list(results["dev"])
    lines = ["| index holds | bytes/image (Annoy node) | copy rank-1 mean dev / test | min over families dev / test "
             "| original in shortlist dev / test | recall@10 dev / test | category P@1 dev / test | mAP dev / test "
             "| P@1 shortlist re-ranked dev / test |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        d, t = results["dev"][name], results["test"][name]
        cell = lambda k: f"{d[k]:.3f} / {t[k]:.3f}"  # noqa: E731
        lines.append(f"| {name} | {d['bytes_per_image']} | {cell('copy_rank1_mean')} | {cell('copy_rank1_min')} | "
                     f"{cell('in_shortlist')} | {cell('recall_at_10')} | {cell('category_p1')} | "
                     f"{cell('category_map')} | {cell('category_p1_shortlist_reranked')} |")
    return "\n".join(lines) + "\n"


def save_embeddings(root: Path, client, out: Path) -> None:
    from services import images
    size = client.info().input_size[0]
    paths = sorted(p for s in ("dev", "test") for p in (root / s).rglob("*") if p.is_file())
    emb = np.concatenate([client.embed(np.stack([images.prepare(images.decode(p, draft_for=size), size)
                                                 for p in paths[i:i + 32]])) for i in range(0, len(paths), 32)])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    print(f"{len(emb)} embeddings saved to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collection", type=Path, default=ROOT / "var/eval/collection")
    parser.add_argument("--per-family", type=int, default=ce.QUERY_SOURCES)
    parser.add_argument("--model-base", type=Path, default=ROOT / "var/models")
    parser.add_argument("--model-server")
    parser.add_argument("--out", type=Path, default=ROOT / "var/eval/compact_vectors.json")
    parser.add_argument("--embeddings-only", type=Path, metavar="NPY",
                        help="only embed both splits' images and save them here (benchmarks/million.py's --real)")
    args = parser.parse_args()
    from evaluation.server import local_model_server
    from services.tfs_client import ModelClient
    started = time.perf_counter()
    server = nullcontext(args.model_server) if args.model_server else local_model_server(args.model_base, precision="fp32")
    with server as target:
        client = ModelClient(target, "effnet_lite0", timeout_s=60)
        if args.embeddings_only:
            return save_embeddings(args.collection, client, args.embeddings_only)
        splits = {s: ce.load_split(args.collection, s, client) for s in ("dev", "test")}
        print(f"dev {len(splits['dev'].paths)} images, test {len(splits['test'].paths)}", flush=True)
        results = {"dev": run_split(splits["dev"], splits["test"], client, edits.DEV_SEED, args.per_family, print),
                   "test": run_split(splits["test"], splits["dev"], client, edits.TEST_SEED, args.per_family, print)}
        client.close()
    results["took_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    print(f"took {results['took_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
