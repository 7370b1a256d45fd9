"""The verdict on a candidate pair: `exact` (the same picture re-encoded or resized), `copy` (an
edited copy: crop, mirror, overlay, colour...), `similar` (another picture; never a duplicate).

A scan asks a `Judge` about many pairs at once; anything with `judge(pairs) -> [Verdict]` plugs in.
`LayoutJudge` reads what ingest stored for each image (the embedding and the layouts of
services/copy_detection.py) and decides like the search's re-rank: the cosine plus a bonus when the
layouts match, a layout being compared whole, mirrored, and against the other image's centre crops
(which also tells which image contains the other).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services import copy_detection
from services.store import Store

EXACT_COSINE = 0.985  # same picture: embeddings and layouts all but equal
EXACT_LAYOUT = 0.97
COPY_SCORE = 1.15  # cosine + layout bonus, as in the search's re-rank (tuned on the planted set)
CONTAINS_MARGIN = 0.05  # a centre crop must match this much better than the whole picture


@dataclass(frozen=True)
class Verdict:
    verdict: str  # "exact", "copy" or "similar"
    score: float
    contains: int = 0  # +1: the first image contains the second (it is a crop of it), -1: reverse


class Judge(Protocol):
    def judge(self, pairs: list[tuple[str, str]]) -> list[Verdict]: ...


def _mirror(layouts: np.ndarray) -> np.ndarray:
    side = copy_detection.LAYOUT_SIDE
    return layouts.reshape(*layouts.shape[:-1], side, side)[..., ::-1].reshape(layouts.shape)


class LayoutJudge:
    def __init__(self, store: Store, model_key: str, copy_score: float = COPY_SCORE):
        self.store, self.model_key, self.copy_score = store, model_key, copy_score

    def judge(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
        if not pairs:
            return []
        ids = sorted({x for pair in pairs for x in pair})
        shape = (len(copy_detection.LAYOUT_VIEWS), copy_detection.LAYOUT_SIDE ** 2)
        found, emb, layouts = self.store.get_vectors_and_layouts(self.model_key, ids, shape)
        row = {iid: i for i, iid in enumerate(found)}
        known = [(row[a], row[b]) for a, b in pairs if a in row and b in row]
        verdicts = iter(self._judge(emb, layouts, *map(np.array, zip(*known))) if known else [])
        return [next(verdicts) if a in row and b in row else Verdict("similar", 0.0) for a, b in pairs]

    def _judge(self, emb: np.ndarray, layouts: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> list[Verdict]:
        emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        cosine = np.einsum("pd,pd->p", emb[ia], emb[ib])
        la, lb = layouts[ia], layouts[ib]  # [P, V, 256]
        whole = np.maximum(np.einsum("pd,pd->p", la[:, 0], lb[:, 0]),
                           np.einsum("pd,pd->p", la[:, 0], _mirror(lb[:, 0])))
        # b's whole picture against a's centre crops (and mirrored): a contains b, and the reverse
        a_holds_b = np.maximum(np.einsum("pvd,pd->pv", la[:, 1:], lb[:, 0]),
                               np.einsum("pvd,pd->pv", la[:, 1:], _mirror(lb[:, 0]))).max(1)
        b_holds_a = np.maximum(np.einsum("pvd,pd->pv", lb[:, 1:], la[:, 0]),
                               np.einsum("pvd,pd->pv", lb[:, 1:], _mirror(la[:, 0]))).max(1)
        layout = np.maximum(whole, np.maximum(a_holds_b, b_holds_a))
        t = copy_detection.LAYOUT_THRESHOLD
        score = cosine + copy_detection.LAYOUT_BONUS * np.maximum(0.0, layout - t) / (1.0 - t)
        out = []
        for c, s, w, ab, ba in zip(cosine, score, whole, a_holds_b, b_holds_a):
            verdict = ("exact" if c >= EXACT_COSINE and w >= EXACT_LAYOUT
                       else "copy" if s >= self.copy_score else "similar")
            contains = 0
            if verdict == "copy" and max(ab, ba) > w + CONTAINS_MARGIN:
                contains = 1 if ab > ba else -1
            out.append(Verdict(verdict, float(s), contains))
        return out
