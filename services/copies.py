"""Copy-aware search with a verdict on every result.

1. shortlist: the CNN embedding of the query's views (copy_detection: itself or de-rotated, its
   mirror image, itself without uniform borders; one model call), SHORTLIST images from the index;
2. layout re-rank of the shortlist (copy_detection.rerank_with_layouts);
3. geometric verification (services/verify.py) of the VERIFY_TOP best: ORB keypoints of the query
   against the candidate's stored ones; the mirror image's keypoints too unless the query itself
   verified one clearly (2 x RANK_INLIERS). A candidate with at least RANK_INLIERS inliers moves ahead of every
   unverified one (more inliers, further ahead);
4. a verdict for each result (services/verdicts.py), from its cosine, layout similarity, inliers and
   whether the geometry is the identity.

`rank` is the whole of steps 2-4 over candidates in memory: the service and `vsearch eval` run the
same code. `search` feeds it from the index and the store.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from services import copy_detection, verdicts, verify

SHORTLIST = copy_detection.SHORTLIST
VERIFY_TOP = 5
EXPAND_TOP = 10  # verified next when none of the first VERIFY_TOP is
RANK_INLIERS = 20
_LAYOUT_SHAPE = (len(copy_detection.LAYOUT_VIEWS), copy_detection.LAYOUT_SIDE ** 2)


@dataclass
class Query:
    embeddings: np.ndarray   # [K, D], the views' (first: the query itself or de-rotated)
    layouts: np.ndarray      # [K, 256]
    image: Image.Image | None  # RGB, for keypoints; None for a stored image (its keypoints given)
    _features: dict = field(default_factory=dict)

    def features(self, mirrored: bool = False) -> verify.Features:
        if mirrored not in self._features:
            if self.image is None:
                return verify.EMPTY
            self._features[mirrored] = verify.features(ImageOps.mirror(self.image) if mirrored else self.image)
        return self._features[mirrored]


_KEYPOINTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keypoints")


def prepare(client, image: Image.Image) -> Query:
    """The query's views embedded in one model call (the trimmed view brings its layout only); its
    keypoints are found meanwhile on another thread (OpenCV and the gRPC wait both release the GIL)."""
    image = image.convert("RGB")
    keypoints = _KEYPOINTS.submit(verify.features, image)
    emb, lay = copy_detection.query_embeddings(client, image, embed_trimmed=False)
    return Query(emb, lay, image, {False: keypoints.result()})


@dataclass(frozen=True)
class Hit:
    image_id: str
    cosine: float
    score: float
    verdict: str
    evidence: verdicts.Evidence


def rank(query: Query, ids: Sequence[str], emb: np.ndarray, layouts: np.ndarray,
         load_features: Callable[[list[str]], list], thresholds: verdicts.Thresholds, k: int) -> list[Hit]:
    """The k best of the candidates (ids, vectors [M, D], layouts [M, V, 256]) with verdicts.
    `load_features(ids)` gives the stored keypoints (verify.Features or packed bytes) of some ids."""
    if not len(ids):
        return []
    scores, cosine, layout = copy_detection.rerank_with_layouts(query.embeddings, query.layouts, emb, layouts)
    order = [int(j) for j in np.argsort(-scores, kind="stable")]
    matches = _verify(query, order[:VERIFY_TOP], ids, load_features)
    if EXPAND_TOP > VERIFY_TOP and not any(m.inliers >= RANK_INLIERS for m in matches.values()):
        matches |= _verify(query, order[VERIFY_TOP:EXPAND_TOP], ids, load_features)  # a harder copy, or none
    scores = scores.copy()
    for j, m in matches.items():
        if m.inliers >= RANK_INLIERS:
            scores[j] += 2.0 + min(m.inliers, 100) / 100
    hits = []
    for j in np.argsort(-scores, kind="stable")[:k]:
        m = matches.get(int(j), verify.NO_MATCH)
        e = verdicts.Evidence(float(min(1.0, cosine[j])), float(layout[j]), m.inliers, m.identity)
        hits.append(Hit(ids[j], e.cosine, float(scores[j]), verdicts.verdict(e, thresholds), e))
    return hits


def _verify(query: Query, rows: list[int], ids, load_features) -> dict[int, verify.Match]:
    """Matches of the query (and, unless it clearly verified one, its mirror image) to the rows."""
    stored = [f if isinstance(f, verify.Features) else verify.unpack(f) for f in load_features([ids[j] for j in rows])]
    matches = {j: verify.match(query.features(), f) for j, f in zip(rows, stored)}
    if not any(m.inliers >= 2 * RANK_INLIERS for m in matches.values()):  # no clear copy: try mirrored
        mirrored = {j: verify.match(query.features(mirrored=True), f) for j, f in zip(rows, stored)}
        matches = {j: max(matches[j], mirrored[j], key=lambda m: m.inliers) for j in rows}
    return matches


def search(searcher, store, model_key: str, query: Query, k: int, thresholds: verdicts.Thresholds,
           min_verdict: str | None = None) -> list[Hit]:
    """The service's query path: shortlist from the live index (Annoy plus fresh items, deletions
    filtered), vectors and layouts from the store, keypoints of the few verified; results below
    `min_verdict` left out."""
    candidates = searcher.shortlist(query.embeddings, max(k, SHORTLIST), effort_k=k)
    ids, emb, layouts = store.get_vectors_and_layouts(model_key, [i for i, _ in candidates], _LAYOUT_SHAPE)
    hits = rank(query, ids, emb, layouts, store.get_features, thresholds, max(k, SHORTLIST) if min_verdict else k)
    return [h for h in hits if verdicts.at_least(h.verdict, min_verdict)][:k]


def search_by_id(searcher, store, model_key: str, image_id: str, k: int, thresholds: verdicts.Thresholds,
                 min_verdict: str | None = None) -> list[Hit]:
    """The same for an indexed image as the query, from what is stored for it (its vector, its
    full-frame layout and that layout mirrored, its keypoints). KeyError if it has no vector."""
    ids, vectors, layouts = store.get_vectors_and_layouts(model_key, [image_id], _LAYOUT_SHAPE)
    if not ids:
        raise KeyError(image_id)
    full = layouts[0, 0]
    mirrored = full.reshape(copy_detection.LAYOUT_SIDE, -1)[:, ::-1].ravel()
    query = Query(np.repeat(vectors[:1], 2, axis=0), np.stack([full, mirrored]), None,
                  {False: verify.unpack(store.get_features([image_id])[0])})
    return search(searcher, store, model_key, query, k, thresholds, min_verdict)


def top_verdict(hits: list[Hit]) -> str:
    """The response's verdict: the best result's, or `none` when there is none."""
    return hits[0].verdict if hits else "none"
