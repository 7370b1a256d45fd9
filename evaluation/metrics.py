"""Retrieval metrics over ranked lists, and exact and approximate nearest neighbours.

A ranking is a sequence of item indices, best first. Relevance is a set (or a boolean vector)
of the items that count as correct for that query. Plain numpy; no model, no index.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def precision_at_k(ranking: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """The share of the first k results that are relevant (k in the denominator even when the
    ranking is shorter, as in the usual definition)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    relevant = set(relevant)
    return sum(1 for item in list(ranking)[:k] if item in relevant) / k


def average_precision(ranking: Sequence[int], relevant: Iterable[int]) -> float:
    """Mean of precision@i over the ranks i of the relevant items; relevant items missing from
    the ranking count as precision 0. No relevant items: nan (the query is skipped)."""
    relevant = set(relevant)
    if not relevant:
        return float("nan")
    hits, total = 0, 0.0
    for i, item in enumerate(ranking, start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / len(relevant)


def mean_average_precision(rankings: Sequence[Sequence[int]], relevants: Sequence[Iterable[int]]) -> float:
    aps = [average_precision(r, rel) for r, rel in zip(rankings, relevants)]
    aps = [a for a in aps if not np.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def rank_of(ranking: Sequence[int], target: int) -> int | None:
    """1-based position of target in the ranking; None if absent."""
    for i, item in enumerate(ranking, start=1):
        if item == target:
            return i
    return None


def rank_summary(ranks: Sequence[int | None], missing_rank: int | None = None) -> dict:
    """rank-1 accuracy and mean rank of a list of 1-based ranks. An absent target (None) counts
    as a miss at rank `missing_rank` (default: one past the largest rank seen)."""
    seen = [r for r in ranks if r is not None]
    fill = missing_rank if missing_rank is not None else (max(seen, default=0) + 1)
    full = np.array([r if r is not None else fill for r in ranks], dtype=np.float64)
    if not len(full):
        return {"rank1": float("nan"), "mean_rank": float("nan"), "n": 0}
    return {"rank1": float(np.mean(full == 1)), "mean_rank": float(full.mean()), "n": int(len(full))}


def recall_at_k(approx: Sequence[Sequence[int]], exact: Sequence[Sequence[int]], k: int = 10) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k|."""
    scores = []
    for a, e in zip(approx, exact):
        e = list(e)[:k]
        if e:
            scores.append(len(set(list(a)[:k]) & set(e)) / len(e))
    return float(np.mean(scores)) if scores else float("nan")


def rank_by_score(scores: np.ndarray) -> np.ndarray:
    """Row-wise ranking of a [Q, N] score matrix, highest first (stable on ties)."""
    return np.argsort(-np.asarray(scores), axis=1, kind="stable")


def cosine_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """[Q, N] cosine similarities (vectors normalised here)."""
    return l2n(queries) @ l2n(database).T


def euclidean_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """[Q, N] negated Euclidean distances, so that higher is better like the other scores."""
    q = np.asarray(queries, np.float64)
    d = np.asarray(database, np.float64)
    sq = (q * q).sum(1)[:, None] + (d * d).sum(1)[None, :] - 2 * q @ d.T
    return -np.sqrt(np.maximum(sq, 0.0))


def hamming_scores(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """[Q, N] negated Hamming distances between boolean bit vectors [Q, B] and [N, B]."""
    q = np.asarray(queries, bool)
    d = np.asarray(database, bool)
    return -(q[:, None, :] != d[None, :, :]).sum(-1).astype(np.float64)


def l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
