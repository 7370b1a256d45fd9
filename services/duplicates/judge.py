"""The verdict on a candidate pair, the same as search gives (services/verdicts.py): `exact` (the
same picture re-encoded or resized), `copy` (an edited copy), `similar` or `none` (never a duplicate).

A scan asks a `Judge` about many pairs at once; anything with `judge(pairs) -> [Verdict]` plugs in.
`VerdictJudge` reads what ingest stored for every image of the batch in a few round trips (vectors,
layouts, ORB keypoints, sizes), then builds each pair's `verdicts.Evidence` (cosine, layout
similarity, inliers of the geometric verification, identity) and asks `verdicts.verdict`.

One thing a scan adds, from the geometry the verification found: a copy is contained in the other
picture or contains it (a crop, a frame, a collage, a rotation with its corners filled, the same
frame resized). Two frames of one scene that each show what the other does not (a burst, a stereo
pair, a pan) share many keypoints in one geometry too, yet neither is an edit of the other: such a
pair is `similar`. The containment also says which image is the edited one (the keeper rules
prefer the other).

That check is evidence search does not have, and `scan_verdict` spends it on two second chances
for pairs the search verdict leaves `similar` or `none` (measured on the planted dev set,
docs/quality.md: recall 0.887 -> 0.938 at precision 0.95 with the published thresholds, the same
two similar pairs grouped):
- SCAN_INLIERS keypoints in one geometry in which one frame contains the other, at the copy
  cosine: a crop, a rotation or a colour edit that kept fewer keypoints than search asks for (search
  cannot tell such a match from two framings of one scene, so it asks for more);
- a layout as alike as `copy_layout` at LAYOUT_COSINE, below search's cosine: a blur keeps the
  grey layout and loses the CNN's cosine (blurred copies on dev: layout >= 0.977, cosine 0.41-0.45).
Both are refused when the verification found two framings (SCAN_INLIERS or more inliers, neither
frame inside the other), whatever the layout says.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from services import copy_detection, verdicts, verify

CONTAINED = 0.98  # share of a frame's area inside the other: true copies 0.992+ (2nd percentile), similar pairs <= 0.974 on dev
# Chosen on the planted dev set (benchmarks/duplicate_quality.py --split dev --sweep, docs/quality.md):
# 15 inliers is where recall stops rising (18-25: -0.01) before precision falls (12: -0.003 with the
# default thresholds, -0.017 with the published ones); at a layout cosine of 0.35-0.40 recall and
# precision are flat (0.30 let unrelated plain-background stamps in with the defaults; 0.45 loses
# blurred copies).
SCAN_INLIERS = 15
LAYOUT_COSINE = 0.35


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "exact", "copy", "similar" or "none"
    score: float  # orders merges: stronger first
    contains: int = 0  # +1: the first image contains the second (it is cut from it), -1: reverse


class Judge(Protocol):
    def judge(self, pairs: list[tuple[str, str]]) -> list[Verdict]: ...


def _frame(record: dict | None) -> np.ndarray | None:
    """Corners [4, 2] of an image's keypoint frame (verify: the long side at verify.SIDE)."""
    if not record or not record.get("width") or not record.get("height"):
        return None
    w, h = record["width"], record["height"]
    scale = verify.SIDE / max(w, h)
    w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)


def _inside(corners: np.ndarray, transform: np.ndarray, frame: np.ndarray) -> float:
    """The share of the quadrilateral `corners` mapped by the 2x3 `transform` that lies in `frame`."""
    mapped = (corners @ transform[:, :2].T + transform[:, 2]).astype(np.float32)
    area = abs(cv2.contourArea(mapped))
    if area <= 0:
        return 0.0
    common, _ = cv2.intersectConvexConvex(mapped, frame)
    return float(common) / area


def containment(match: verify.Match, frame_a: np.ndarray | None, frame_b: np.ndarray | None) -> int | None:
    """+1: a contains b, -1: b contains a, 0: each contains the other (one frame), None: neither."""
    if match.transform is None or frame_a is None or frame_b is None:
        return 0
    forward = np.asarray(match.transform, np.float64)  # a's frame -> b's frame
    backward = cv2.invertAffineTransform(forward)
    a_in_b = _inside(frame_a, forward, frame_b) >= CONTAINED
    b_in_a = _inside(frame_b, backward, frame_a) >= CONTAINED
    if a_in_b and b_in_a:
        return 0
    return 1 if b_in_a else -1 if a_in_b else None


class VerdictJudge:
    def __init__(self, store, model_key: str, thresholds: verdicts.Thresholds | None = None,
                 scan_inliers: int = SCAN_INLIERS, layout_cosine: float = LAYOUT_COSINE):
        self.store, self.model_key = store, model_key
        self.thresholds = thresholds or verdicts.for_model_key(model_key)
        self.scan_inliers, self.layout_cosine = scan_inliers, layout_cosine

    def judge(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if not pairs:
            return []
        ids = sorted({x for pair in pairs for x in pair})
        shape = (len(copy_detection.LAYOUT_VIEWS), copy_detection.LAYOUT_SIDE ** 2)
        found, emb, layouts = self.store.get_vectors_and_layouts(self.model_key, ids, shape)
        row = {iid: i for i, iid in enumerate(found)}
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True) if len(found) else emb
        features = dict(zip(found, map(verify.unpack, self.store.get_features(found))))
        known = [(a, b) for a, b in pairs if a in row and b in row]  # the others were deleted meanwhile
        cosines, layout_sims = pair_similarities(emb, layouts, [row[a] for a, _ in known], [row[b] for _, b in known])
        matches = [verify.match(features[a], features[b]) for a, b in known]
        # Only a pair with a geometry needs the frames' sizes: few of them, so few records read.
        geometric = [m.inliers >= min(self.thresholds.copy_inliers, self.scan_inliers) for m in matches]
        sized = sorted({x for pair, g in zip(known, geometric) if g for x in pair})
        frames = dict(zip(sized, map(_frame, self.store.get_images(sized))))
        judged = {}
        for (a, b), cosine, layout, match, g in zip(known, cosines.tolist(), layout_sims.tolist(), matches, geometric):
            e = verdicts.Evidence(cosine, layout, match.inliers, match.identity)
            contains = containment(match, frames[a], frames[b]) if g else 0
            verdict = scan_verdict(e, contains, self.thresholds, self.scan_inliers, self.layout_cosine)
            judged[a, b] = Verdict(verdict, e.cosine + min(e.inliers, 100) / 100, contains or 0)
        return [judged.get(pair, Verdict("none", 0.0)) for pair in pairs]


def pair_similarities(emb: np.ndarray, layouts: np.ndarray, i: list[int], j: list[int],
                      chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(cosines [P], layout similarities [P]) of the pairs of rows (i[p], j[p]) of unit vectors [N, D]
    and layouts [N, V, 256], a chunk of pairs per numpy call instead of two calls per pair."""
    cosines, layout_sims = np.zeros(len(i), np.float32), np.zeros(len(i), np.float32)
    for s in range(0, len(i), chunk):
        a, b = np.asarray(i[s:s + chunk], np.intp), np.asarray(j[s:s + chunk], np.intp)
        cosines[s:s + chunk] = np.einsum("pd,pd->p", emb[a], emb[b])
        layout_sims[s:s + chunk] = copy_detection.layout_similarities(layouts[a], layouts[b])
    return cosines, layout_sims


def scan_verdict(e: verdicts.Evidence, contains: int | None, t: verdicts.Thresholds,
                 scan_inliers: int = SCAN_INLIERS, layout_cosine: float = LAYOUT_COSINE) -> str:
    """A scanned pair's verdict: search's (`verdicts.verdict`), `similar` where the verified geometry
    shows two framings (`contains` None), and the two second chances of the module docstring.
    `contains`: `containment`'s answer (0 where the geometry was not looked at)."""
    v = verdicts.verdict(e, t)
    if contains is None:  # two framings of one scene: never a duplicate
        return "similar" if v in ("exact", "copy") else v
    if v in ("exact", "copy"):
        return v
    if e.inliers >= scan_inliers and e.cosine >= t.copy_cosine:
        return "copy"
    if e.layout >= t.copy_layout and e.cosine >= layout_cosine:
        return "copy"
    return v
