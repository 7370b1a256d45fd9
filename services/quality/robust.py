"""The copy-robust descriptor that the evaluation adopted (docs/quality.md has the numbers).

An image is indexed as V items (views) of one vector each, D + 256 wide:

    l2n([ l2n(cnn embedding),  LAYOUT_WEIGHT * layout(view) ])

- the CNN embedding is the model's, of the whole model input (one forward pass per image: the
  views share it);
- `layout` is a 16x16 grey thumbnail of the view, mean-removed and L2-normalised (invariant to
  brightness, contrast and colour changes), which separates near-identical scenes that pooled CNN
  features confuse. Views: the whole input square and its centre 70% and 50%, so that crops
  still match on layout. Computing them costs well under a millisecond per image.

A query is embedded in a few views (one Predict call): itself, or de-rotated when its corners
show the uniform fill that a rotation with `expand` leaves; its mirror image; and the image with
uniform borders trimmed when it has any. An indexed image scores the best similarity over all
(query view, item view) pairs: `best_per_owner`.

Plain numpy and Pillow; the model is reached through anything with `embed(uint8 [N,S,S,3])` and
`info().input_size` (a `ModelClient`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from services import images

LAYOUT_SIDE = 16
LAYOUT_WEIGHT = 0.7
INDEX_VIEWS = (1.0, 0.7, 0.5)  # centre fractions of the model input square
FILL_TOLERANCE = 24  # max channel difference from the fill colour (JPEG noise)
MAX_ANGLE_SPREAD = 1.0  # degrees between the corners that vote for one rotation


# -- indexing -----------------------------------------------------------------------------------
def layout(arrays: np.ndarray, fraction: float = 1.0, side: int = LAYOUT_SIDE) -> np.ndarray:
    """[N, side*side] grey thumbnails of the centre `fraction` of uint8 [N, S, S, 3] squares,
    mean-removed and L2-normalised (a flat view gives zeros)."""
    out = np.zeros((len(arrays), side * side), np.float32)
    for i, a in enumerate(arrays):
        grey = Image.fromarray(np.asarray(a, np.float32).mean(axis=2), mode="F")
        s = grey.width
        o = (1.0 - fraction) * s / 2
        small = np.asarray(grey.resize((side, side), Image.Resampling.BOX, box=(o, o, s - o, s - o)))
        v = small.ravel() - small.mean()
        n = float(np.linalg.norm(v))
        out[i] = v / n if n > 1e-3 else 0.0
    return out


def combine(embeddings: np.ndarray, layouts: np.ndarray, weight: float = LAYOUT_WEIGHT) -> np.ndarray:
    """l2n([l2n(embedding), weight * layout]) row by row."""
    e = _l2n(np.asarray(embeddings, np.float32))
    return _l2n(np.concatenate([e, weight * np.asarray(layouts, np.float32)], axis=-1))


def index_vectors(embeddings: np.ndarray, arrays: np.ndarray, views: Sequence[float] = INDEX_VIEWS,
                  weight: float = LAYOUT_WEIGHT) -> np.ndarray:
    """[N, V, D + 256] item vectors of N images from their embeddings [N, D] and the uint8 model
    inputs [N, S, S, 3] that produced them."""
    return np.stack([combine(embeddings, layout(arrays, f), weight) for f in views], axis=1)


# -- querying -----------------------------------------------------------------------------------
def query_views(image: Image.Image) -> list[Image.Image]:
    """The images a query is embedded as: itself (de-rotated if it looks rotated), its mirror
    image, and, if it has uniform borders, itself without them."""
    image = images.to_rgb(image)
    angle = estimate_rotation(image)
    base = derotate(image, angle) if angle else image
    views = [base, ImageOps.mirror(base)]
    trimmed = trim_borders(base)
    if trimmed is not base:
        views.append(trimmed)
    return views


def query_vectors(client, image: Image.Image, weight: float = LAYOUT_WEIGHT) -> np.ndarray:
    """[K, D + 256] vectors of one query image (K = 2 or 3), embedded in one model call."""
    size = client.info().input_size[0]
    arrays = np.stack([images.prepare(v, size) for v in query_views(image)])
    return combine(client.embed(arrays), layout(arrays), weight)


def best_per_owner(queries: np.ndarray, items: np.ndarray, owners: np.ndarray, n_owners: int) -> np.ndarray:
    """[n_owners] best cosine similarity of any query vector [K, D] with any item [M, D] of each
    owner (items of an image share its owner index); -inf for owners without items."""
    scores = (np.asarray(queries, np.float32) @ np.asarray(items, np.float32).T).max(axis=0)
    best = np.full(n_owners, -np.inf, np.float64)
    np.maximum.at(best, owners, scores)
    return best


# -- rotation and borders -----------------------------------------------------------------------
def estimate_rotation(image: Image.Image, tolerance: int = FILL_TOLERANCE) -> float:
    """Degrees (counter-clockwise, as `Image.rotate`) by which `image` was rotated with expand=True,
    read from the fill triangles in its corners; 0.0 when fewer than two corners agree."""
    a = np.asarray(images.to_rgb(image))
    angles = []
    for i, view in enumerate((a, a[:, ::-1], a[::-1, :], a[::-1, ::-1])):
        ratio = _corner_ratio(view, tolerance)
        if ratio is None:
            continue
        t = math.degrees(math.atan(ratio)) if ratio < 1 else -math.degrees(math.atan(1 / ratio))
        angles.append(t if i in (0, 3) else -t)  # the other two corners see the triangle mirrored
    votes = [[b for b in angles if abs(b - a_) <= MAX_ANGLE_SPREAD] for a_ in angles]
    best = max(votes, key=len, default=[])
    return float(np.median(best)) if len(best) >= 2 else 0.0


def _corner_ratio(a: np.ndarray, tolerance: int) -> float | None:
    """In an image oriented with the corner at the top left: the fill triangle's vertical leg
    over its horizontal one, from a line fitted to the fill run of each row; None if no clean
    triangle is there."""
    h, w = a.shape[:2]
    fill = a[0, 0].astype(np.int16)
    ys, runs = [], []
    for y in range(0, h, max(1, h // 200)):
        bad = np.flatnonzero(np.abs(a[y].astype(np.int16) - fill).max(axis=-1) > tolerance)
        run = int(bad[0]) if bad.size else w
        if run <= 2:
            break
        if 0.03 * w < run < 0.97 * w:
            ys.append(y)
            runs.append(run)
    if len(ys) < 5:
        return None
    ys, runs = np.asarray(ys, float), np.asarray(runs, float)
    slope, intercept = np.polyfit(ys, runs, 1)
    if slope >= -1e-3 or np.abs(runs - (slope * ys + intercept)).max() > 0.02 * w + 3:
        return None
    return -1.0 / slope


def derotate(image: Image.Image, angle: float) -> Image.Image:
    """Undo `image.rotate(angle, expand=True)`: rotate back and crop the original frame (less 3%,
    so that no resampled fill remains at the edges)."""
    w_exp, h_exp = image.size
    c, s = math.cos(math.radians(abs(angle))), math.sin(math.radians(abs(angle)))
    den = c * c - s * s
    if den < 0.05:  # near 45 degrees the frame cannot be solved for
        return image
    w = min(w_exp, max(8.0, (w_exp * c - h_exp * s) / den)) * 0.97
    h = min(h_exp, max(8.0, (h_exp * c - w_exp * s) / den)) * 0.97
    back = image.rotate(-angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255))
    left, top = (w_exp - w) / 2, (h_exp - h) / 2
    return back.crop((round(left), round(top), round(left + w), round(top + h)))


def trim_borders(image: Image.Image, tolerance: int = FILL_TOLERANCE) -> Image.Image:
    """The image without uniform rows and columns at its edges (a frame, letterboxing); the same
    object when there are none or when trimming would leave almost nothing."""
    a = np.asarray(images.to_rgb(image)).astype(np.int16)
    h, w = a.shape[:2]

    def run(lines: np.ndarray, fill: np.ndarray) -> int:
        for n, line in enumerate(lines):
            if np.abs(line - fill).max() > tolerance:
                return n
        return len(lines)

    top, bottom = run(a, a[0, 0]), run(a[::-1], a[-1, -1])
    cols = a.transpose(1, 0, 2)
    left, right = run(cols, a[0, 0]), run(cols[::-1], a[-1, -1])
    if not (top or bottom or left or right) or top + bottom >= h - 8 or left + right >= w - 8:
        return image
    return image.crop((left, top, w - right, h - bottom))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
