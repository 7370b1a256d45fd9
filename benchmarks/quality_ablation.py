"""Ablation of the embedding ideas tried for docs/quality.md (copy detection rank-1 per transform).

    .venv/bin/python benchmarks/quality_ablation.py [DATASET_DIR]   (default var/eval/pkgphotos)

Runs EfficientNet-Lite0 in-process (model_export's network, the same weights and graph as the
SavedModel) so that it can also read the final feature map (GeM, MAC, regional vectors) and the
last block's output: variants that the served model would need a re-export for. Originals are
decoded in full here (the harness decodes the index side as the worker does, with JPEG draft);
on the package set the baseline row comes out the same as `vsearch eval`'s. ~2 minutes on 2 cores.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import ImageOps

from services import images
from evaluation import metrics as M
from services import copy_detection as robust
from evaluation.dataset import load
from evaluation.harness import EXTRA_TRANSFORMS
from evaluation.transforms import TRANSFORMS, center_crop

T = {**TRANSFORMS, **EXTRA_TRANSFORMS}


def network():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from model_export import effnet_lite
    net = effnet_lite.build()

    @tf.function(input_signature=[tf.TensorSpec((None, 224, 224, 3), tf.uint8)])
    def run(x):
        x = (tf.cast(x, tf.float32) - 127.0) / 128.0
        x = tf.nn.relu6(net.stem(x))
        for block in net.blocks:
            x = block(x)
        return {"map": tf.nn.relu6(net.head(x)), "last": tf.reduce_mean(x, axis=(1, 2))}

    def embed(pictures):
        arrays = np.stack([images.prepare(p, 224) for p in pictures])
        outs = [run(tf.constant(arrays[i:i + 32])) for i in range(0, len(arrays), 32)]
        fmap = np.concatenate([o["map"].numpy() for o in outs])
        return {"pooled": fmap.mean(axis=(1, 2)), "map": fmap, "last": np.concatenate([o["last"].numpy() for o in outs]),
                "layout": robust.layout(arrays)}
    return embed


def gem(fmap, p):
    return np.power(np.power(np.maximum(fmap, 1e-6), p).mean(axis=(1, 2)), 1 / p)


def main() -> None:
    root = sys.argv[1] if len(sys.argv) > 1 else "var/eval/pkgphotos"
    items = load(root)
    n = len(items)
    originals = [images.decode(it.path) for it in items]
    embed = network()
    db = {"full": embed(originals), "flip": embed([ImageOps.mirror(o) for o in originals])}
    for f in (0.7, 0.5):
        db[f] = embed([center_crop(f)(o) for o in originals])
    q = {}
    for name, transform in T.items():
        pics = [transform(o) for o in originals]
        angles = [robust.estimate_rotation(p) for p in pics]
        der = [robust.derotate(p, a) if a else p for p, a in zip(pics, angles)]
        q[name] = {"plain": embed(pics), "flip": embed([ImageOps.mirror(p) for p in pics]), "der": embed(der),
                   "derflip": embed([ImageOps.mirror(d) for d in der]), "trim": embed([robust.trim_borders(d) for d in der])}
        print(f"embedded {name}", file=sys.stderr, flush=True)

    def report(label, query_fn, db_vectors, owners=None):
        owners = np.arange(n) if owners is None else owners
        dbn = M.l2n(db_vectors)
        r1 = []
        for name in T:
            hits = 0
            for i in range(n):
                s = (M.l2n(query_fn(name, i)) @ dbn.T).max(axis=0)
                best = np.full(n, -np.inf)
                np.maximum.at(best, owners, s)
                hits += int((np.delete(best, i) < best[i]).all())
            r1.append(hits / n)
        cells = " | ".join(f"{v:.3f}" for v in r1)
        print(f"| {label} | {np.mean(r1[:11]):.3f} | {min(r1[:11]):.3f} | {cells} |", flush=True)

    print("| variant | mean (11) | min (11) | " + " | ".join(T) + " |")
    print("|---" * (len(T) + 3) + "|")
    one = lambda key="pooled", view="plain": (lambda name, i: q[name][view][key][i:i + 1])
    views = lambda *vs: (lambda name, i: np.concatenate([q[name][v]["pooled"][i:i + 1] for v in vs]))
    report("baseline: pooled, L2, cosine", one(), db["full"]["pooled"])
    report("power-normalised (sqrt)", lambda nm, i: np.sqrt(q[nm]["plain"]["pooled"][i:i + 1]), np.sqrt(db["full"]["pooled"]))
    for p in (3.0,):
        report(f"GeM p={p:g} (re-export)", lambda nm, i: gem(q[nm]["plain"]["map"][i:i + 1], p), gem(db["full"]["map"], p))
    report("MAC (re-export)", lambda nm, i: q[nm]["plain"]["map"][i:i + 1].max(axis=(1, 2)), db["full"]["map"].max(axis=(1, 2)))
    report("last block, 320-d (re-export)", one("last"), db["full"]["last"])
    x = M.l2n(db["full"]["pooled"])
    mu = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mu, full_matrices=False)
    for d in (40, 80):
        w = vt[:d].T / np.sqrt(sv[:d] + 1e-6)
        report(f"PCA-whitening on the index, {d} dims", lambda nm, i: (M.l2n(q[nm]["plain"]["pooled"][i:i + 1]) - mu) @ w, (x - mu) @ w)
    report("flip-averaged both sides (2x index cost)",
           lambda nm, i: M.l2n(q[nm]["plain"]["pooled"][i:i + 1]) + M.l2n(q[nm]["flip"]["pooled"][i:i + 1]),
           M.l2n(db["full"]["pooled"]) + M.l2n(db["flip"]["pooled"]))
    report("query views: + mirror", views("plain", "flip"), db["full"]["pooled"])
    report("query views: de-rotated + mirror", views("der", "derflip"), db["full"]["pooled"])
    report("query views: de-rotated + mirror + trimmed", views("der", "derflip", "trim"), db["full"]["pooled"])
    regions = [db["full"]["map"][:, o:o + s, o:o + s].mean(axis=(1, 2)) for s, o in ((7, 0), (5, 1), (3, 2))]
    report("regional centre vectors from the map (re-export)", one(), np.concatenate(regions), np.tile(np.arange(n), 3))
    crops = np.concatenate([db["full"]["pooled"], db[0.7]["pooled"], db[0.5]["pooled"]])
    report("index centre crops 70%/50% (3x index cost)", one(), crops, np.tile(np.arange(n), 3))
    report("crops + de-rotated + mirror (3x index cost)", views("der", "derflip"), crops, np.tile(np.arange(n), 3))

    # Category retrieval (leave-one-out) for the ideas that target it.
    labels = np.array([it.label for it in items])
    queries = [i for i in range(n) if (labels == labels[i]).sum() >= 2]

    def category(label, vectors, expand=0):
        v = M.l2n(vectors)
        p1, rankings, relevant = [], [], []
        for i in queries:
            s = v @ v[i]
            s[i] = -np.inf
            if expand:  # average query expansion: the query and its top `expand` neighbours
                top = np.argsort(-s, kind="stable")[:expand]
                s = v @ M.l2n(v[i] + v[top].sum(axis=0))
                s[i] = -np.inf
            ranking = [j for j in np.argsort(-s, kind="stable") if j != i]
            rel = {j for j in range(n) if j != i and labels[j] == labels[i]}
            p1.append(M.precision_at_k(ranking, rel, 1))
            rankings.append(ranking)
            relevant.append(rel)
        print(f"| {label} | {np.mean(p1):.3f} | {M.mean_average_precision(rankings, relevant):.3f} |", flush=True)

    print("\n| category retrieval variant | P@1 | mAP |\n|---|---|---|")
    category("baseline: pooled, L2, cosine", db["full"]["pooled"])
    for k in (1, 2, 3):
        category(f"average query expansion, top {k}", db["full"]["pooled"], expand=k)
    for d in (40, 80):
        w = vt[:d].T / np.sqrt(sv[:d] + 1e-6)
        category(f"PCA-whitening on the index, {d} dims", (x - mu) @ w)
    category("GeM p=3 (re-export)", gem(db["full"]["map"], 3.0))
    category("MAC (re-export)", db["full"]["map"].max(axis=(1, 2)))
    category("last block, 320-d (re-export)", db["full"]["last"])
    category("flip-averaged", M.l2n(db["full"]["pooled"]) + M.l2n(db["flip"]["pooled"]))


if __name__ == "__main__":
    main()
