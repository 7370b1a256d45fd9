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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from evaluation import edits
from services import images, verify
from services import robust_search as robust

SHORTLIST = 30
QUERY_SOURCES = 80  # images per split that are edited, for every family


@dataclass
class Split:
    name: str
    paths: list[Path]
    labels: np.ndarray
    emb: np.ndarray                  # [N, D]
    feats: list                      # [N] verify.Features
    layouts: np.ndarray              # [N, 4, 256] (the layout re-rank of robust_search)
    timings: dict = field(default_factory=dict)

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
                  "feature_bytes": float(np.mean([len(verify.pack(f)) for f in feats]))})


def indexed_half(split: Split) -> np.ndarray:
    """[N] bool: the open-set index, a fixed half chosen by a hash of the file name."""
    return np.array([hashlib.sha256(p.name.encode()).digest()[0] % 2 == 0 for p in split.paths])


@dataclass
class Query:
    family: str
    source: int
    cosine: np.ndarray               # [N] cosine to every image of the split (first view)
    adopted: np.ndarray              # [N] robust_search scores (-inf outside its shortlist)
    matches: dict                    # image index -> verify.Match, for the shortlists checked
    query_ms: float


def run_queries(split: Split, other: Split, client, seed: int, per_family: int = QUERY_SOURCES,
                progress: Callable[[str], None] = print) -> list[Query]:
    n = len(split.paths)
    rng = np.random.default_rng(seed)
    sources = np.sort(rng.choice(n, size=min(per_family, n), replace=False))
    originals = {int(i): split.original(int(i)) for i in sources}
    pool = [other.original(int(j)) for j in rng.choice(len(other.paths), size=40, replace=False)]
    plain = [originals.get(i) for i in range(n)]
    half = indexed_half(split)
    size = client.info().input_size[0]
    out = []
    for family in edits.FAMILIES:
        progress(f"{split.name}: {family}")
        for fam, i, image, _ in edits.make_queries(plain, sources, pool, seed + len(out), (family,)):
            started = time.perf_counter()
            q = client.embed(images.prepare(image, size)[None])[0]
            views = verify.query_features(image)
            cosine = split.emb @ q
            matches = {}
            for mask in (None, half):  # closed set, open set: each verifies its own shortlist
                c = cosine if mask is None else np.where(mask, cosine, -np.inf)
                for j in np.argsort(-c, kind="stable")[:SHORTLIST]:
                    if int(j) not in matches:
                        matches[int(j)] = verify.best_match(views, split.feats[j])
            query_ms = (time.perf_counter() - started) * 1000
            q_emb, q_lay = robust.query_embeddings(client, image)
            adopted = robust.search(q_emb, q_lay, split.emb, split.layouts)
            out.append(Query(fam, i, cosine, adopted, matches, query_ms))
    return out
