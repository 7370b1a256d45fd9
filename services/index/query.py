"""What every index backend checks of a query vector before it searches."""
from __future__ import annotations

import numpy as np


def single_query(vector, k: int) -> np.ndarray:
    """`vector` as a [1, D] float32 matrix for `search_many`; ValueError for k < 1 or a zero or
    non-finite vector (no direction to search in)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    q = np.asarray(vector, dtype=np.float32).ravel()
    norm = np.linalg.norm(q)
    if not norm or not np.isfinite(norm):
        raise ValueError("the query vector must be non-zero and finite")
    return q[None]


def best_per_image(hit_lists, n: int) -> list[tuple[str, float]]:
    """Hits of several query views merged: each image once, at its best score; the n best first."""
    best: dict[str, float] = {}
    for hits in hit_lists:
        for iid, score in hits:
            best[iid] = max(score, best.get(iid, -2.0))
    return sorted(best.items(), key=lambda h: h[1], reverse=True)[:n]


def stored_vector(store, model_key: str, image_id: str) -> np.ndarray:
    """The vector an indexed image was stored with, as a query; KeyError if it has none."""
    _, matrix = store.get_vectors(model_key, [image_id])
    if not len(matrix):
        raise KeyError(image_id)
    return matrix[0]
