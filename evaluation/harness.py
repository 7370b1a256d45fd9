"""`vsearch eval`: index a folder-per-class set, then measure category retrieval, copy detection
and Annoy's recall, for the adopted descriptor and the baselines, in one run.

Methods (names as in the report):
- `adopted`: `services.copy_detection` (query views, CNN shortlist, layout re-ranking), exact search.
- `baseline`: the model's pooled embedding, one per image, exact cosine search (the service as
  it was).
- `seed`: the seed project's method on the same backbone: images squashed to the input size
  (aspect ratio ignored), raw pooled features (not normalised), Euclidean distance. Needs the
  network in-process (`model_export`): the served model only returns normalised embeddings.
- `phash`: `imagehash.phash` (64 bits), Hamming distance; copy detection only.

Ranks are 1-based; ties count half (the expected rank under random tie-breaking), so a hash
distance tied with another image's is not a rank-1 hit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from services import images
from services import copy_detection as robust
from evaluation import metrics
from evaluation.dataset import Item, load
from evaluation.transforms import TRANSFORMS

log = logging.getLogger(__name__)

METHODS = ("adopted", "baseline", "seed", "phash")
ANNOY_SETTINGS = ((4, 1), (8, 1), (16, 2), (32, 4), (32, 16))  # (n_trees, search_k factor)
K = 10


def border(image: Image.Image) -> Image.Image:
    """A uniform black frame of 12% of the long side (an added border; not one of the issue's
    transforms, reported beside them)."""
    from PIL import ImageOps
    pad = round(0.12 * max(image.size))
    return ImageOps.expand(image, border=pad, fill=(0, 0, 0))


EXTRA_TRANSFORMS = {"border": border}


@dataclass
class Corpus:
    items: list[Item]
    labels: np.ndarray  # [N] class index
    classes: list[str]
    originals: list[Image.Image]  # full-resolution decodes: the sources of the copies
    arrays: np.ndarray  # uint8 [N, S, S, 3] model inputs, as the worker makes them
    timings: dict = field(default_factory=dict)


def rank_from_scores(scores: np.ndarray, target: int, exclude: int | None = None) -> float:
    """1-based rank of `target` by descending score; tied items count half."""
    s = np.asarray(scores, np.float64).copy()
    if exclude is not None:
        s[exclude] = -np.inf
    t = s[target]
    others = np.delete(s, target)
    return 1.0 + float((others > t).sum()) + 0.5 * float((others == t).sum())


def load_corpus(root: str | Path, size: int) -> Corpus:
    items = load(root)
    classes = sorted({it.label for it in items})
    labels = np.array([classes.index(it.label) for it in items])
    started = time.perf_counter()
    originals = [images.decode(it.path) for it in items]
    arrays = np.stack([images.load_for_model(it.path, size) for it in items])
    return Corpus(items, labels, classes, originals, arrays,
                  {"decode_s": time.perf_counter() - started})


def _phash(pictures: Sequence[Image.Image]) -> np.ndarray:
    import imagehash
    return np.stack([imagehash.phash(p).hash.ravel() for p in pictures])


def evaluate(root: str | Path, client, *, copies: int | None = None, methods: Sequence[str] = METHODS,
             seed_features: Callable | None = None, transforms: dict | None = None,
             annoy_settings=None, progress: Callable[[str], None] = log.info) -> dict:
    """Runs the whole evaluation; returns the results as a JSON-able dict (see report.py)."""
    transforms = transforms if transforms is not None else {**TRANSFORMS, **EXTRA_TRANSFORMS}
    size = client.info().input_size[0]
    corpus = load_corpus(root, size)
    n = len(corpus.items)
    progress(f"{n} images in {len(corpus.classes)} classes")
    db = _index(corpus, client, methods, seed_features)
    sample = _sample(n, copies)
    results = {"dataset": {"root": str(root), "images": n, "classes": len(corpus.classes),
                           "classes_with_2_or_more": int(sum(np.bincount(corpus.labels) >= 2)),
                           "category_queries": int(sum(np.bincount(corpus.labels)[corpus.labels] >= 2)),
                           "copy_sources": len(sample)},
               "model": {"name": client.info().name, "version": client.info().version,
                         "input_size": size, "embedding_dim": client.info().embedding_dim},
               "methods": [m for m in methods if m in db],
               "transforms": list(transforms)}
    progress("category retrieval")
    results["category"] = _category(corpus, client, db, methods)
    progress(f"copy detection: {len(sample)} sources x {len(transforms)} transforms")
    copy, queries = _copies(corpus, client, db, methods, seed_features, transforms, sample)
    results["copy"] = copy
    progress("Annoy recall")
    results["annoy"] = _annoy(db, queries, ANNOY_SETTINGS if annoy_settings is None else annoy_settings)
    results["cost"] = _cost(corpus, client, db)
    return results


def _sample(n: int, copies: int | None) -> np.ndarray:
    if copies is None or copies >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=copies, replace=False))


def _index(corpus: Corpus, client, methods, seed_features) -> dict:
    n = len(corpus.items)
    db = {}
    started = time.perf_counter()
    emb = client.embed(corpus.arrays)
    corpus.timings["embed_s"] = time.perf_counter() - started
    if "baseline" in methods:
        db["baseline"] = {"items": emb, "owners": np.arange(n)}
    if "adopted" in methods:
        started = time.perf_counter()
        layouts = robust.index_layouts(corpus.arrays)
        corpus.timings["layout_s"] = time.perf_counter() - started
        db["adopted"] = {"items": emb, "owners": np.arange(n), "layouts": layouts}
    if "seed" in methods and seed_features is not None:
        db["seed"] = {"items": seed_features(corpus.originals), "owners": np.arange(n)}
    if "phash" in methods:
        try:
            db["phash"] = {"items": _phash(corpus.originals), "owners": np.arange(n)}
        except ImportError:
            log.warning("imagehash is not installed: no pHash baseline")
    return db


def _scores(method: str, db: dict, query) -> np.ndarray:
    """[n] scores of every indexed image for one query: (embeddings, layouts) of its views for
    `adopted`, one embedding, raw feature vector or hash for the others."""
    d = db[method]
    if method == "adopted":
        return robust.search(query.embeddings, query.layouts, d["items"], d["layouts"], primary=query.primary)
    if method == "seed":
        return metrics.euclidean_scores(query[None], d["items"])[0]
    if method == "phash":
        return metrics.hamming_scores(query[None], d["items"])[0]
    return metrics.cosine_scores(np.atleast_2d(query), d["items"]).max(axis=0)


def _category(corpus: Corpus, client, db: dict, methods) -> dict:
    n = len(corpus.items)
    counts = np.bincount(corpus.labels)
    queries = [i for i in range(n) if counts[corpus.labels[i]] >= 2]
    out = {}
    for method in (m for m in methods if m in db and m != "phash"):
        rankings, relevant = [], []
        for i in queries:
            if method == "adopted":
                q = robust.query_embeddings(client, corpus.originals[i])
            else:
                q = db[method]["items"][i]
            s = _scores(method, db, q)
            s[i] = -np.inf
            rankings.append([j for j in np.argsort(-s, kind="stable") if j != i])
            relevant.append({j for j in range(n) if j != i and corpus.labels[j] == corpus.labels[i]})
        out[method] = {
            "precision_at_1": float(np.mean([metrics.precision_at_k(r, rel, 1) for r, rel in zip(rankings, relevant)])),
            "precision_at_10": float(np.mean([metrics.precision_at_k(r, rel, 10) for r, rel in zip(rankings, relevant)])),
            "map": metrics.mean_average_precision(rankings, relevant),
            "queries": len(queries),
        }
    # precision@10 cannot reach 1 when classes have fewer than 11 images: the ceiling
    out["precision_at_10_ceiling"] = float(np.mean([min(10, counts[corpus.labels[i]] - 1) / 10 for i in queries]))
    return out


def _copies(corpus: Corpus, client, db, methods, seed_features, transforms, sample):
    size = client.info().input_size[0]
    per = {m: {} for m in methods if m in db}
    annoy_queries = {"baseline": [], "adopted": []}
    for name, transform in transforms.items():
        pictures = [transform(corpus.originals[i]) for i in sample]
        qs = {}
        if "baseline" in db:
            qs["baseline"] = client.embed(np.stack([images.prepare(p, size) for p in pictures]))
        if "adopted" in db:
            qs["adopted"] = [robust.query_embeddings(client, p) for p in pictures]
        if "seed" in db:
            qs["seed"] = seed_features(pictures)
        if "phash" in db:
            qs["phash"] = _phash(pictures)
        for method, q in qs.items():
            ranks = [rank_from_scores(_scores(method, db, q[j]), int(i)) for j, i in enumerate(sample)]
            per[method][name] = {"rank1": float(np.mean(np.asarray(ranks) == 1.0)),
                                 "mean_rank": float(np.mean(ranks)), "n": len(ranks)}
            if method == "baseline":
                annoy_queries[method].extend(v[None] for v in q)
            elif method == "adopted":
                annoy_queries[method].extend(v[0] for v in q)
    out = {}
    for method, table in per.items():
        r1 = [table[t]["rank1"] for t in TRANSFORMS if t in table]
        out[method] = {"per_transform": table,
                       "mean_rank1_issue_transforms": float(np.mean(r1)) if r1 else float("nan"),
                       "min_rank1_issue_transforms": float(np.min(r1)) if r1 else float("nan"),
                       "mean_rank1_all": float(np.mean([v["rank1"] for v in table.values()]))}
    return out, annoy_queries


def _annoy(db: dict, queries: dict, settings) -> list[dict]:
    """recall@10 of Annoy (angular) against exact search, on what Annoy does in both methods: the
    best cosine per image over the query's views. The index holds the collection's embeddings
    plus, as distractors, the embeddings of every copy query (more real vectors than the
    collection alone: with fewer items than ~D, one Annoy leaf holds everything and search is
    exact)."""
    from annoy import AnnoyIndex
    if "baseline" not in db and "adopted" not in db:
        return []
    collection = db.get("baseline", db.get("adopted"))["items"]
    extra = [v for qs in queries.values() for q in qs for v in q]
    items = metrics.l2n(np.concatenate([collection, np.asarray(extra, np.float32).reshape(-1, collection.shape[1])]))
    exact = {method: [np.argsort(-(q @ items.T).max(axis=0), kind="stable")[:K] for q in qs]
             for method, qs in queries.items()}
    rows = []
    for n_trees, factor in settings:
        index = AnnoyIndex(items.shape[1], "angular")
        for j, v in enumerate(items):
            index.add_item(j, v)
        started = time.perf_counter()
        index.build(n_trees, n_jobs=1)
        build_s = time.perf_counter() - started
        for method, qs in queries.items():
            if not qs:
                continue
            started = time.perf_counter()
            approx = []
            for q in qs:
                best: dict[int, float] = {}
                for v in q:
                    found, dist = index.get_nns_by_vector(v, K, search_k=n_trees * K * factor,
                                                          include_distances=True)
                    for j, d in zip(found, dist):
                        best[j] = max(best.get(j, -2.0), 1.0 - d * d / 2.0)
                approx.append(sorted(best, key=best.get, reverse=True)[:K])
            query_ms = (time.perf_counter() - started) * 1000 / len(qs)
            rows.append({"method": method, "n_trees": n_trees, "search_k_factor": factor,
                         "recall_at_10": metrics.recall_at_k(approx, exact[method], K), "query_ms": query_ms,
                         "build_s": build_s, "items": len(items), "queries": len(qs)})
        index.unload()
    return rows


def _cost(corpus: Corpus, client, db: dict, repeats: int = 20) -> dict:
    """What the adopted method costs over the baseline: index side per image, query side per query."""
    n = len(corpus.items)
    out = {"embed_ms_per_image_batch": corpus.timings["embed_s"] * 1000 / n}
    if "layout_s" in corpus.timings:
        out["layout_ms_per_image"] = corpus.timings["layout_s"] * 1000 / n
    if "adopted" in db:
        out["layout_floats_per_image"] = int(db["adopted"]["layouts"][0].size)
    size = client.info().input_size[0]
    pictures = [corpus.originals[i % n] for i in range(repeats)]
    client.embed(images.prepare(pictures[0], size)[None])  # warm
    started = time.perf_counter()
    for p in pictures:
        client.embed(images.prepare(p, size)[None])
    out["baseline_query_ms"] = (time.perf_counter() - started) * 1000 / repeats
    started = time.perf_counter()
    views = 0
    for p in pictures:
        views += len(robust.query_embeddings(client, p).embeddings)
    out["adopted_query_ms"] = (time.perf_counter() - started) * 1000 / repeats
    out["adopted_views_per_query"] = views / repeats
    return out
