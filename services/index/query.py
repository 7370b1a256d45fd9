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
