"""Copy detection on the collection (evaluation/collection.py): random edit families, closed and
open set, per split, for the plain embedding, the layout re-rank of the first rounds and the
geometric verification the service now uses.

For each split: every image is embedded (the service's model input) and its ORB features computed
from the image as the worker decodes it. Queries: each edit family (evaluation/edits.py) applied
to a fixed sample of the split's images, seeded (test: edits.TEST_SEED); collages take their
backgrounds from the other split, so they are unrelated to every indexed image.

- closed set: every image of the split is indexed; rank of the source per family and method.
- open set: half the images (a fixed hash half) are indexed; for every query the service's answer
  (best result and its verdict) is recorded, with whether the source was indexed at all. The copy
  verdict's precision-recall curve comes from that (services/verdicts.py fits the thresholds).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from evaluation import edits
from services import copies, images, verify
from services import copy_detection as robust

SHORTLIST = copies.SHORTLIST  # the service's
QUERY_SOURCES = 80  # images per split that are edited, for every family
TWIN_INLIERS = 30


@dataclass
class Split:
    name: str
    paths: list[Path]
    labels: np.ndarray
    emb: np.ndarray                  # [N, D]
    feats: list                      # [N] verify.Features
    layouts: np.ndarray              # [N, 4, 256] (the layout re-rank of services/copy_detection.py)
    timings: dict = field(default_factory=dict)
    twins: dict = field(default_factory=dict)  # image -> the other images of the split sharing its content

    def group(self, i: int) -> frozenset:
        """The answers that count as right for a copy of image i: itself and its twins."""
        return frozenset({i, *self.twins.get(i, ())})

    def original(self, i: int) -> Image.Image:
        return images.to_rgb(images.decode(self.paths[i]))


def load_split(root: Path, name: str, client) -> Split:
    folder = Path(root) / name
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    classes = sorted({p.parent.name for p in paths})
    size = client.info().input_size[0]
    decoded = [images.decode(p, draft_for=size) for p in paths]  # as the worker decodes
    arrays = np.stack([images.prepare(im, size) for im in decoded])
    t0 = time.perf_counter()
    emb = client.embed(arrays)
    t1 = time.perf_counter()
    feats = [verify.features(images.to_rgb(im)) for im in decoded]
    t2 = time.perf_counter()
    return Split(name, paths, np.array([classes.index(p.parent.name) for p in paths]), emb, feats,
                 robust.index_layouts(arrays),
                 {"embed_ms": (t1 - t0) * 1000 / len(paths), "features_ms": (t2 - t1) * 1000 / len(paths),
                  "feature_bytes": float(np.mean([len(verify.pack(f)) for f in feats]))},
                 _twins(emb, feats))


def _twins(emb: np.ndarray, feats: list) -> dict:
    """Pairs of originals that share content (screenshots of one program, documentation images made
    from one another): at least TWIN_INLIERS keypoints in one geometry, among each image's 10
    nearest by cosine. A copy of one is a copy of the other's content too, so either answer counts
    as right; the strict figures (its own source only) are reported beside."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    twins: dict[int, set] = {}
    for i in range(len(emb)):
        for j in np.argsort(-sims[i])[:10]:
            if verify.match(feats[i], feats[int(j)]).inliers >= TWIN_INLIERS:
                twins.setdefault(i, set()).add(int(j))
                twins.setdefault(int(j), set()).add(i)
    return twins


def indexed_half(split: Split) -> np.ndarray:
    """[N] bool: the open-set index, a fixed half chosen by a hash of the file name."""
    return np.array([hashlib.sha256(p.name.encode()).digest()[0] % 2 == 0 for p in split.paths])


@dataclass
class Query:
    family: str
    source: int
    group: frozenset                 # the right answers: the source and its twins
    ranks: dict                      # method -> 1-based rank of the first right answer (closed set)
    strict_ranks: dict               # method -> 1-based rank of the source itself
    open_top: tuple | None           # (image index, Evidence) of the open-set answer's best result
    source_indexed: bool             # in the open set: the source or one of its twins
    strict_indexed: bool             # in the open set: the source itself
    query_ms: float                  # the adopted path's work beyond the model call (re-rank, verify)

    def to_json(self) -> dict:
        top = None if self.open_top is None else [self.open_top[0], asdict(self.open_top[1])]
        return {"family": self.family, "source": self.source, "group": sorted(self.group), "ranks": self.ranks,
                "strict_ranks": self.strict_ranks, "open_top": top, "source_indexed": self.source_indexed,
                "strict_indexed": self.strict_indexed, "query_ms": self.query_ms}


def _rank(scores: np.ndarray, group) -> float:
    """1-based rank of the best of `group` among the others (ties counted half)."""
    group = list(group)
    s = scores[group].max()
    others = np.delete(scores, group)
    return 1.0 + float((others > s).sum()) + 0.5 * float((others == s).sum())


def _verified_rank(split: Split, q, mask: np.ndarray | None, thresholds):
    """copies.rank over the split's shortlist (all images, or those in `mask`): [Hit] and indices."""
    cosine = (q.embeddings @ split.emb.T).max(axis=0)
    if mask is not None:
        cosine = np.where(mask, cosine, -np.inf)
    short = [int(j) for j in np.argsort(-cosine, kind="stable")[:SHORTLIST]]
    ids = [str(j) for j in short]
    hits = copies.rank(q, ids, split.emb[short], split.layouts[short],
                       lambda wanted: [split.feats[int(i)] for i in wanted], thresholds, SHORTLIST)
    return hits, cosine


def family_queries(split: Split, other: Split, seed: int, per_family: int = QUERY_SOURCES,
                   table: dict = edits.FAMILIES):
    """Per edit family of `table` in turn: (family, [(source index, edited image)]), the same
    `per_family` sources for every family, collage backgrounds from `other`; seeded, so reproducible."""
    n = len(split.paths)
    rng = np.random.default_rng(seed)
    sources = np.sort(rng.choice(n, size=min(per_family, n), replace=False))
    originals = {int(i): split.original(int(i)) for i in sources}
    pool = [other.original(int(j)) for j in rng.choice(len(other.paths), size=40, replace=False)]
    plain = [originals.get(i) for i in range(n)]
    for f, family in enumerate(table):
        yield family, [(i, image) for _, i, image, _ in
                       edits.make_queries(plain, sources, pool, seed + 1000 * f, (family,), table)]


def run_queries(split: Split, other: Split, client, seed: int, thresholds, per_family: int = QUERY_SOURCES,
                progress: Callable[[str], None] = print, table: dict = edits.FAMILIES) -> list[Query]:
    n = len(split.paths)
    half = indexed_half(split)
    size = client.info().input_size[0]
    out = []
    for fam, queries in family_queries(split, other, seed, per_family, table):
        progress(f"{split.name}: {fam}")
        for i, image in queries:
            group = split.group(i)
            scores = {"baseline": split.emb @ client.embed(images.prepare(image, size)[None])[0]}
            views = robust.query_embeddings(client, image)
            scores["layouts"] = robust.search(views.embeddings, views.layouts, split.emb, split.layouts,
                                              primary=views.primary)
            q = copies.prepare(client, image)
            started = time.perf_counter()
            hits, cosine = _verified_rank(split, q, None, thresholds)
            query_ms = (time.perf_counter() - started) * 1000
            order = [int(h.image_id) for h in hits]
            tail = np.where(np.isin(np.arange(n), order), -np.inf, cosine)  # the rest in cosine order
            scores["verified"] = tail
            for r, j in enumerate(order):
                scores["verified"][j] = 1e6 - r
            ranks = {m: _rank(v, group) for m, v in scores.items()}
            strict = {m: _rank(v, [i]) for m, v in scores.items()}
            open_hits, _ = _verified_rank(split, q, half, thresholds)
            top = (int(open_hits[0].image_id), open_hits[0].evidence) if open_hits else None
            out.append(Query(fam, i, group, ranks, strict, top, bool(half[list(group)].any()), bool(half[i]),
                             query_ms))
    return out


def _average_precision(ranking: list[int], relevant: set[int]) -> float:
    hits, total = 0, 0.0
    for r, j in enumerate(ranking, start=1):
        if j in relevant:
            hits += 1
            total += hits / r
    return total / len(relevant)


def category(split: Split, client, thresholds) -> dict:
    """Leave-one-out category retrieval: each image of a class with 2 or more is a query against
    the others, for the plain embedding (cosine) and the service's copy-aware path (its top
    SHORTLIST re-ranked, the rest in cosine order)."""
    n = len(split.paths)
    counts = np.bincount(split.labels)
    out = {"baseline": {"p1": [], "ap": []}, "verified": {"p1": [], "ap": []}}
    for i in (i for i in range(n) if counts[split.labels[i]] >= 2):
        relevant = {j for j in range(n) if j != i and split.labels[j] == split.labels[i]}
        cosine = split.emb @ split.emb[i]
        cosine[i] = -np.inf
        base = [int(j) for j in np.argsort(-cosine, kind="stable") if j != i]
        q = copies.prepare(client, split.original(i))
        mask = np.ones(n, bool)
        mask[i] = False
        hits, _ = _verified_rank(split, q, mask, thresholds)
        top = [int(h.image_id) for h in hits]
        verified = top + [j for j in base if j not in set(top)]
        for name, ranking in (("baseline", base), ("verified", verified)):
            out[name]["p1"].append(ranking[0] in relevant)
            out[name]["ap"].append(_average_precision(ranking, relevant))
    return {m: {"precision_at_1": float(np.mean(v["p1"])), "map": float(np.mean(v["ap"])), "queries": len(v["p1"])}
            for m, v in out.items()}
