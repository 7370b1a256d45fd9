"""Copy-aware search with a verdict on every result.

1. shortlist: the CNN embedding of the query's views (copy_detection: itself or de-rotated, its
   mirror image, itself without uniform borders; one model call), SHORTLIST images from the index;
2. layout re-rank of the shortlist (copy_detection.rerank_with_layouts, the bonus from LAYOUT_GATE);
3. geometric verification (services/verify.py) of the VERIFY_TOP best whose cosine reaches the
   published `verify_cosine` (below it no copy verified on dev: verifying there costs CPU and finds
   nothing): ORB keypoints of the query against the candidate's stored ones; the mirror image's
   keypoints too, on the MIRROR_TOP best, unless the query itself verified one clearly
   (2 x RANK_INLIERS). Verification stops at the first clear copy, and when the best candidate is
   a copy by its layout already (layout and cosine reach the copy thresholds) only it is verified
   (exact or copy). On dev this cut the matches per query from 5.0 to 1.8 with the same rank-1 on
   every family. Each match costs ~0.5 ms of CPU and the query's keypoints ~4.5 ms: that, not
   accuracy, sets these numbers. A candidate with at least RANK_INLIERS inliers moves ahead of
   every unverified one (more inliers, further ahead). An indexed image as the query is its own
   exact match, unverified;
4. a verdict for each result (services/verdicts.py), from its cosine, layout similarity, inliers and
   whether the geometry is the identity.

`rank` is the whole of steps 2-4 over candidates in memory: the service and `vsearch eval` run the
same code. `search` feeds it from the index and the store.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from services import copy_detection, verdicts, verify

# 40, not the layout re-rank's 30: heavy blurs keep their layout but fall to cosine ranks 31-40
# often enough to matter (dev blur 0.90 -> 0.96, test 0.90 -> 0.91); the extra 10 vectors and
# layouts cost one pipelined store read, no verification (docs/quality.md).
SHORTLIST = 40
# The layout bonus starts at a layout similarity of 0.8 here, not the first rounds' 0.7: originals
# with merely similar silhouettes (cut-outs on white) reach 0.76-0.88 and took category searches'
# first place; edited copies that need the bonus (blur) sit at 0.95 and above (dev: copy rank-1
# unchanged, category P@1 0.634 -> 0.646).
LAYOUT_GATE = 0.8
VERIFY_TOP = 5
MIRROR_TOP = 3  # the mirror image's keypoints are tried on this many of them
RANK_INLIERS = 20
_LAYOUT_SHAPE = (len(copy_detection.LAYOUT_VIEWS), copy_detection.LAYOUT_SIDE ** 2)


@dataclass
class Query:
    embeddings: np.ndarray   # [K, D], the views' (copy_detection.query_views)
    layouts: np.ndarray      # [K, 256]
    image: Image.Image | None  # RGB, for keypoints; None for a stored image (its keypoints loaded)
    load_features: Callable[[], bytes | None] | None = None  # a stored image's packed keypoints
    model_images: int = 1    # images the views' model call embedded (copy_detection.Views)
    image_id: str | None = None  # an indexed image as the query: its own id
    primary: int = 1         # views counting without layout confirmation (copy_detection.Views)
    _features: dict = field(default_factory=dict)

    def features(self, mirrored: bool = False) -> verify.Features:
        """The query's keypoints (of its mirror image), found or loaded on first use."""
        if isinstance(self._features.get(mirrored), Future):
            self._features[mirrored] = self._features[mirrored].result()
        if mirrored not in self._features:
            if self.image is not None:
                self._features[mirrored] = verify.features(ImageOps.mirror(self.image) if mirrored else self.image)
            elif self.load_features is not None and not mirrored:
                self._features[mirrored] = verify.unpack(self.load_features())
            else:
                return verify.EMPTY
        return self._features[mirrored]


_KEYPOINTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="keypoints")


def prepare(client, image: Image.Image) -> Query:
    """The query's views embedded in one model call (the trimmed view brings its layout only); its
    keypoints are found meanwhile on another thread (OpenCV and the gRPC wait both release the GIL):
    nearly every query of a real collection verifies its best candidate."""
    image = image.convert("RGB")
    keypoints = _KEYPOINTS.submit(verify.features, image)
    views = copy_detection.query_embeddings(client, image, embed_trimmed=False)
    return Query(views.embeddings, views.layouts, image, model_images=views.model_images, primary=views.primary,
                 _features={False: keypoints})


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
    scores, cosine, layout = copy_detection.rerank_with_layouts(query.embeddings, query.layouts, emb, layouts,
                                                                threshold=LAYOUT_GATE, primary=query.primary)
    order = [int(j) for j in np.argsort(-scores, kind="stable")]
    rows = [j for j in order[:VERIFY_TOP] if cosine[j] >= thresholds.verify_cosine or ids[j] == query.image_id]
    others = [j for j in order if ids[j] != query.image_id]
    best = others[0] if others else None
    if best in rows and layout[best] >= thresholds.copy_layout \
            and cosine[best] >= thresholds.copy_cosine:
        # the best is a copy by its layout already: only exact-or-copy is left to verify
        rows = [j for j in rows if j == best or ids[j] == query.image_id]
    matches = _verify(query, rows, ids, load_features)
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
    matches = {j: SELF for j in rows if ids[j] == query.image_id}
    rows = [j for j in rows if j not in matches]
    if not rows:
        return matches
    stored = [f if isinstance(f, verify.Features) else verify.unpack(f) for f in load_features([ids[j] for j in rows])]
    found = {}
    for j, f in zip(rows, stored):
        found[j] = verify.match(query.features(), f)
        if found[j].inliers >= 2 * RANK_INLIERS:
            break
    rows = list(found)
    if not any(m.inliers >= 2 * RANK_INLIERS for m in found.values()):  # no clear copy: try mirrored
        mirrored = {j: verify.match(query.features(mirrored=True), f) for j, f in zip(rows[:MIRROR_TOP], stored)}
        found = {j: max(found[j], mirrored.get(j, verify.NO_MATCH), key=lambda m: m.inliers) for j in rows}
    return matches | found


SELF = verify.Match(10 ** 6, np.eye(2, 3))  # an image against itself: every keypoint, identity geometry


def search(searcher, store, model_key: str, query: Query, k: int, thresholds: verdicts.Thresholds,
           min_verdict: str | None = None, where=None) -> list[Hit]:
    """The service's query path: shortlist from the live index (Annoy plus fresh items, deletions
    filtered), vectors and layouts from the store, keypoints of the few verified; results below
    `min_verdict` left out; `where`: a `services.index.filters.Filter` (None: every image)."""
    candidates = searcher.shortlist(query.embeddings, max(k, SHORTLIST), effort_k=k, where=where)
    ids, emb, layouts = store.get_vectors_and_layouts(model_key, [i for i, _ in candidates], _LAYOUT_SHAPE)
    hits = rank(query, ids, emb, layouts, store.get_features, thresholds, max(k, SHORTLIST) if min_verdict else k)
    return [h for h in hits if verdicts.at_least(h.verdict, min_verdict)][:k]


def search_by_id(searcher, store, model_key: str, image_id: str, k: int, thresholds: verdicts.Thresholds,
                 min_verdict: str | None = None, where=None) -> list[Hit]:
    """The same for an indexed image as the query, from what is stored for it (its vector, its
    full-frame layout and that layout mirrored, its keypoints). KeyError if it has no vector."""
    ids, vectors, layouts = store.get_vectors_and_layouts(model_key, [image_id], _LAYOUT_SHAPE)
    if not ids:
        raise KeyError(image_id)
    full = layouts[0, 0]
    mirrored = full.reshape(copy_detection.LAYOUT_SIDE, -1)[:, ::-1].ravel()
    query = Query(np.repeat(vectors[:1], 2, axis=0), np.stack([full, mirrored]), None,
                  lambda: store.get_features([image_id])[0], image_id=image_id)
    return search(searcher, store, model_key, query, k, thresholds, min_verdict, where)


def top_verdict(hits: list[Hit]) -> str:
    """The response's verdict: the best result's, or `none` when there is none."""
    return hits[0].verdict if hits else "none"
