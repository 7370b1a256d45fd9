"""Compact index vectors: a PCA projection fitted on the vectors at build time (VSEARCH_INDEX_PCA).

The Annoy file then holds D' < D floats per item (256 instead of 1280: 0.29x the file at a million
items, and of the page cache every gateway host spends on it), and the searcher projects each query
with the same projection, saved beside the file (`<base>.pca`). The projection is not centred: it
keeps the directions that carry most of the vectors' energy (their common direction first), so the
cosine of two projected vectors, normalised again, stays close to their cosine in the model's space.
On the evaluation collection's dev split it also ranked better than the centred PCA
(docs/benchmarks.md, "Compact vectors"). The index only shortlists: the re-rank and the verdicts
read the stored full vectors, so the scores an index search returns are cosines in its own space.
The projection is fitted on the first FIT_SAMPLE vectors the builder reads (the store's order), once
per build.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIT_SAMPLE = 50_000  # vectors the projection is fitted on (the first the builder reads)


@dataclass(frozen=True, eq=False)
class Projection:
    components: np.ndarray  # [D', D] float32, orthonormal rows

    @property
    def input_dim(self) -> int:
        return self.components.shape[1]

    def apply(self, vectors) -> np.ndarray:
        """[N, D] -> [N, D'] float32, each row unit length (rows that project to zero stay zero)."""
        x = np.asarray(vectors, np.float32)
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"query has {x.shape[-1]} dimensions, the index {self.input_dim}")
        y = x @ self.components.T
        norms = np.linalg.norm(y, axis=-1, keepdims=True)
        return y / np.where(norms > 0, norms, 1.0)

    def save(self, path) -> None:
        with open(path, "wb") as f:
            np.save(f, self.components, allow_pickle=False)

    @classmethod
    def load(cls, path) -> "Projection":
        return cls(np.load(Path(path), allow_pickle=False).astype(np.float32))


def fit(sample, dims: int) -> Projection:
    """The `dims` leading right singular vectors of the (unit-length) sample: the uncentred PCA.
    `dims` is at most D; with fewer sample rows than `dims` the extra components are arbitrary
    (but orthonormal)."""
    x = np.asarray(sample, np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if not 0 < dims <= x.shape[1]:
        raise ValueError(f"a projection to {dims} dimensions of {x.shape[1]}-d vectors")
    # Second moment in float64 (D x D, cheap next to reading the vectors), its top eigenvectors.
    moment = np.zeros((x.shape[1], x.shape[1]), np.float64)
    for start in range(0, len(x), 8192):
        chunk = x[start:start + 8192].astype(np.float64)
        moment += chunk.T @ chunk
    _, vecs = np.linalg.eigh(moment)
    return Projection(np.ascontiguousarray(vecs[:, ::-1][:, :dims].T, np.float32))
