"""The copy-robust search that the evaluation adopted (docs/quality.md has the numbers).

Index side, nothing changes for the vectors: one model embedding per image, in Annoy as now.
Beside it each image keeps its *layouts* (`index_layouts`): 16x16 grey thumbnails of its model
input square and of the centre 85%, 70% and 50% of it, mean-removed and L2-normalised (so
invariant to brightness, contrast and colour changes); 4 x 256 numbers (2 KB as float16), ~0.3 ms per
image and no model call.

Query side (`query_embeddings`): the query is embedded in a few views in one Predict call:
first itself, or de-rotated when its corners show the uniform fill that a rotation with
expand=True leaves and then itself as it came too (the primary views); then the first's mirror
image; and, if it has uniform borders, the first without them.
Then:

1. shortlist: search Annoy with every view, keep each image's best cosine similarity, take the
   SHORTLIST best images;
2. re-rank (`rerank_scores`): score = best over views of  cosine + LAYOUT_BONUS * relu(layout
   similarity - LAYOUT_THRESHOLD) / (1 - LAYOUT_THRESHOLD),  the layout similarity being the best
   over the image's layouts; the extra views (mirror, trimmed) count only where their layout
   reaches the threshold, i.e. as confirmed copy hypotheses. Unrelated images rarely reach it,
   so category search keeps the CNN's order; edited copies do, which separates near-identical
   scenes (burst shots, stereo pairs) that pooled CNN features confuse, and crops match the
   centre layouts.

Plain numpy and Pillow; the model is reached through anything with `embed(uint8 [N,S,S,3])` and
`info().input_size` (a `ModelClient`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from services import images

LAYOUT_SIDE = 16
LAYOUT_VIEWS = (1.0, 0.85, 0.7, 0.5)  # centre fractions of the model input square
LAYOUT_BONUS = 0.7
LAYOUT_THRESHOLD = 0.7
SHORTLIST = 30
FILL_TOLERANCE = 24  # max channel difference from the fill colour (JPEG noise)
MAX_ANGLE_SPREAD = 1.0  # degrees between the corners that vote for one rotation


# -- indexing -----------------------------------------------------------------------------------
def layout(arrays: np.ndarray, fraction: float = 1.0, side: int = LAYOUT_SIDE) -> np.ndarray:
    """[N, side*side] grey (luma) thumbnails of the centre `fraction` of uint8 [N, S, S, 3]
    squares, mean-removed and L2-normalised (a flat view gives zeros)."""
    return _layouts(arrays, (fraction,), side)[:, 0]


def index_layouts(arrays: np.ndarray) -> np.ndarray:
    """[N, 4, 256] layouts of N model inputs uint8 [N, S, S, 3] (store them as float16: 2 KB)."""
    return _layouts(arrays, LAYOUT_VIEWS, LAYOUT_SIDE)


def _layouts(arrays: np.ndarray, fractions, side: int) -> np.ndarray:
    out = np.zeros((len(arrays), len(fractions), side * side), np.float32)
    for i, a in enumerate(arrays):
        grey = Image.fromarray(np.asarray(a, np.uint8)).convert("L")  # Pillow's C code: ~0.25 ms an image
        s = grey.width
        for j, fraction in enumerate(fractions):
            o = (1.0 - fraction) * s / 2
            v = np.asarray(grey.resize((side, side), Image.Resampling.BOX, box=(o, o, s - o, s - o)),
                           np.float32).ravel()
            v -= v.mean()
            n = float(np.linalg.norm(v))
            if n > 1e-3:
                out[i, j] = v / n
    return out


def layout_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """The best similarity between any of layouts a [Va, 256] and any of b [Vb, 256] or their
    mirror images: how alike two images' grey layouts are (1.0: the same)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mirrored = b.reshape(len(b), LAYOUT_SIDE, LAYOUT_SIDE)[:, :, ::-1].reshape(len(b), -1)
    return float((a @ np.concatenate([b, mirrored]).T).max())


def layout_similarities(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """layout_similarity of many pairs at once: a [P, Va, 256] against b [P, Vb, 256] -> [P]."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mirrored = b.reshape(*b.shape[:2], LAYOUT_SIDE, LAYOUT_SIDE)[..., ::-1].reshape(b.shape)
    return np.einsum("pvd,pwd->pvw", a, np.concatenate([b, mirrored], axis=1)).max(axis=(1, 2))


# -- querying -----------------------------------------------------------------------------------
def query_views(image: Image.Image) -> list[Image.Image]:
    """The images a query is seen as: first itself, or de-rotated if it looks rotated and then
    itself as it came too; then the first's mirror image and, if it has uniform borders, the first
    without them. (Dark corners of an unrotated picture, a vignette say, can look like a rotation's
    fill: the de-rotated view is then a wrong crop, and the picture itself must still be seen.)"""
    base, as_given, trimmed = _views(image)
    return [v for v in (base, as_given, ImageOps.mirror(base), trimmed) if v is not None]


def _views(image: Image.Image) -> tuple[Image.Image, Image.Image | None, Image.Image | None]:
    """(the first view, the image as given if the first is de-rotated, the first without borders)."""
    image = images.to_rgb(image)
    angle = estimate_rotation(image)
    base = derotate(image, angle) if angle else image
    trimmed = trim_borders(base)
    return base, (image if angle else None), (trimmed if trimmed is not base else None)


class Views(NamedTuple):
    embeddings: np.ndarray  # [K, D]
    layouts: np.ndarray     # [K, 256]
    primary: int            # the first `primary` views count without their layout confirming them
    model_images: int       # how many of the views the model call embedded


def query_arrays(image: Image.Image, size: int, embed_trimmed: bool = True) -> tuple[np.ndarray, list[int], int]:
    """The model inputs of `query_views` [K, S, S, 3], which of them the model embeds (the others
    reuse the first view's embedding), and how many are primary views."""
    base, as_given, trimmed = _views(image)
    first = images.prepare(base, size)
    arrays, own = [first], [0]
    if as_given is not None:
        arrays.append(images.prepare(as_given, size))
        own.append(1)
    primary = len(arrays)
    arrays.append(first[:, ::-1])
    if trimmed is not None:
        arrays.append(images.prepare(trimmed, size))
        own += [len(arrays) - 1] if embed_trimmed else []
    return np.stack(arrays), own, primary


def query_embeddings(client, image: Image.Image, embed_trimmed: bool = True) -> Views:
    """One query's K = 2 to 4 views, embedded in one model call.

    The mirror view is not sent to the model: pooled CNN features barely change under a mirror
    (the baseline already finds mirrored copies at rank 1 in 0.99 of cases), so it reuses the
    first view's embedding and brings only its layout, the part that does change. That keeps the
    model call at one image for most queries (docs/quality.md measures both ways)."""
    arrays, own, primary = query_arrays(image, client.info().input_size[0], embed_trimmed)
    embedded = client.embed(arrays[own])
    emb = np.repeat(embedded[:1], len(arrays), axis=0)
    emb[own] = embedded
    return Views(emb, layout(arrays), primary, len(own))


def rerank_scores(q_emb: np.ndarray, q_layouts: np.ndarray, emb: np.ndarray, layouts: np.ndarray,
                  bonus: float = LAYOUT_BONUS, threshold: float = LAYOUT_THRESHOLD, primary: int = 1) -> np.ndarray:
    """[M] scores of M candidates (embeddings [M, D], layouts [M, V, 256]) for one query's views
    (q_emb [K, D], q_layouts [K, 256], the `primary` views first): the best over views of cosine +
    layout bonus, views after the primary ones counting only where their layout reaches the threshold."""
    return _rerank(q_emb, q_layouts, emb, layouts, bonus, threshold, primary)[0]


def _rerank(q_emb, q_layouts, emb, layouts, bonus=LAYOUT_BONUS, threshold=LAYOUT_THRESHOLD, primary=1):
    """(scores [M], the cosine of each candidate's winning view [M])."""
    scores, cosine, _ = rerank_with_layouts(q_emb, q_layouts, emb, layouts, bonus, threshold, primary)
    return scores, cosine


def rerank_with_layouts(q_emb, q_layouts, emb, layouts, bonus=LAYOUT_BONUS, threshold=LAYOUT_THRESHOLD,
                        primary=1):
    """(scores [M], the cosine of each candidate's winning view [M], each candidate's best layout
    similarity over the query's views [M])."""
    cosine = np.asarray(q_emb, np.float32) @ np.asarray(emb, np.float32).T  # [K, M]
    lay = np.einsum("kd,mvd->kmv", np.asarray(q_layouts, np.float32), np.asarray(layouts, np.float32)).max(-1)
    scores = cosine + bonus * np.maximum(0.0, lay - threshold) / (1.0 - threshold)
    scores[primary:] = np.where(lay[primary:] >= threshold, scores[primary:], -np.inf)
    best = scores.argmax(axis=0)
    columns = np.arange(scores.shape[1])
    return scores[best, columns], cosine[best, columns], lay.max(axis=0)


def search(q_emb: np.ndarray, q_layouts: np.ndarray, emb: np.ndarray, layouts: np.ndarray,
           shortlist: int = SHORTLIST, primary: int = 1) -> np.ndarray:
    """Exact reference of the whole query path over N images: [N] scores, -inf outside the
    shortlist. The service does step 1 with Annoy (one search per view, best per image)."""
    cosine = (np.asarray(q_emb, np.float32) @ np.asarray(emb, np.float32).T).max(axis=0)
    keep = np.argsort(-cosine, kind="stable")[:shortlist]
    scores = np.full(len(emb), -np.inf)
    scores[keep] = rerank_scores(q_emb, q_layouts, emb[keep], layouts[keep], primary=primary)
    return scores


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
    step = max(1, h // 200)
    rows = a[::step]
    # The fill run of each sampled row, down to the first row where it (nearly) vanishes. Most
    # photos end within the first few rows: measure blocks of rows, doubling, until one ends.
    blocks, start, size = [], 0, 8
    while start < len(rows):
        blocks.append(_fill_runs(rows[start:start + size], a[0, 0], tolerance))
        if (blocks[-1] <= 2).any():
            break
        start, size = start + size, size * 2
    runs = np.concatenate(blocks)
    end = np.flatnonzero(runs <= 2)
    runs = runs[:end[0]] if end.size else runs
    ys = np.arange(len(runs), dtype=float) * step
    inside = (0.03 * w < runs) & (runs < 0.97 * w)
    ys, runs = ys[inside], runs[inside].astype(float)
    if len(ys) < 5:
        return None
    slope, intercept = np.polyfit(ys, runs, 1)
    if slope >= -1e-3 or np.abs(runs - (slope * ys + intercept)).max() > 0.02 * w + 3:
        return None
    return -1.0 / slope


def _fill_runs(rows: np.ndarray, fill: np.ndarray, tolerance: int) -> np.ndarray:
    """[R] for rows [R, W, 3]: how many pixels from the left of each row match `fill`."""
    lo = np.clip(fill.astype(int) - tolerance, 0, 255).astype(np.uint8)
    hi = np.clip(fill.astype(int) + tolerance, 0, 255).astype(np.uint8)
    off = ((rows < lo) | (rows > hi)).reshape(len(rows), -1)  # [R, W*3]: channel values off the fill
    first = off.argmax(axis=1)
    return np.where(off[np.arange(len(rows)), first], first // rows.shape[2], rows.shape[1])


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
    a = np.asarray(images.to_rgb(image))
    h, w = a.shape[:2]

    def run(lines: np.ndarray, fill: np.ndarray) -> int:
        fill = fill.astype(np.int16)
        for n, line in enumerate(lines):  # line by line: most images stop at the first
            if np.abs(line.astype(np.int16) - fill).max() > tolerance:
                return n
        return len(lines)

    top, bottom = run(a, a[0, 0]), run(a[::-1], a[-1, -1])
    cols = a.transpose(1, 0, 2)
    left, right = run(cols, a[0, 0]), run(cols[::-1], a[-1, -1])
    if not (top or bottom or left or right) or top + bottom >= h - 8 or left + right >= w - 8:
        return image
    return image.crop((left, top, w - right, h - bottom))

