"""What a match means: `exact`, `copy`, `similar` or `none`, from calibrated thresholds.

The evidence about one (query, candidate) pair (`Evidence`) is
- `cosine`: the embeddings' cosine similarity (content);
- `layout`: the best similarity of their 16x16 grey layouts (copy_detection), mirror included;
- `inliers`: keypoints in one consistent affine geometry (services/verify.py), 0 if not verified;
- `identity`: whether that geometry is (nearly) the identity: the same frame, resized or re-encoded.

`verdict(evidence, thresholds)`:
- `exact`: verified (inliers >= copy_inliers), identity geometry and cosine >= exact_cosine;
- `copy`: verified, or layout >= copy_layout with cosine >= copy_cosine (a copy too blurred or
  small for keypoints keeps its layout);
- `similar`: cosine >= similar_cosine;
- `none` otherwise.

The thresholds are fitted by `vsearch eval` on the dev split's open set (half the originals left
out of the index) and published per model version in `services/calibration/<model>-v<version>.json` with the
precision-recall curve; `Thresholds.for_model` reads them (defaults if none is published).

For pairs of indexed images (duplicate scans): `judge_stored(store, model_key, a, b, thresholds)`.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from services import copy_detection, precision, verify

log = logging.getLogger(__name__)

ORDER = ("none", "similar", "copy", "exact")  # weakest first
CALIBRATION_DIR = Path(__file__).resolve().with_name("calibration")  # <model>-v<version>.json


@dataclass(frozen=True)
class Evidence:
    cosine: float
    layout: float = 0.0
    inliers: int = 0
    identity: bool = False


@dataclass(frozen=True)
class Thresholds:
    copy_inliers: int = 20
    copy_layout: float = 0.9
    copy_cosine: float = 0.6
    exact_cosine: float = 0.95
    similar_cosine: float = 0.6
    verify_cosine: float = 0.0  # candidates below it are not verified (services/copies.py)

    @classmethod
    def from_json(cls, data: dict) -> "Thresholds":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def for_model(cls, name: str, version: int, folder: Path = CALIBRATION_DIR) -> "Thresholds":
        """The published thresholds of a model version; the defaults (and a warning) if none."""
        path = calibration_path(name, version, folder)
        if not path.is_file():
            log.warning("no verdict calibration at %s: default thresholds", path)
            return cls()
        return cls.from_json(json.loads(path.read_text())["thresholds"])


@functools.lru_cache(maxsize=8)
def published(name: str, version: int) -> Thresholds:
    """Thresholds.for_model, read once per process (the file changes only with a new release)."""
    return Thresholds.for_model(name, version)


def for_model_key(model_key: str) -> Thresholds:
    """`published` for a model key "name:version" (what the index records; no model call). Both
    precisions of a model share its thresholds: bf16 embeddings are within noise of fp32's
    (docs/quality.md, "bf16 against fp32")."""
    name, _, version = model_key.rpartition(":")
    name = name.removesuffix(precision.SUFFIX)
    return published(name, int(version)) if version.isdigit() else published(model_key, 0)


def calibration_path(name: str, version: int, folder: Path = CALIBRATION_DIR) -> Path:
    return Path(folder) / f"{name}-v{version}.json"


def verdict(e: Evidence, t: Thresholds) -> str:
    verified = e.inliers >= t.copy_inliers
    if verified and e.identity and e.cosine >= t.exact_cosine:
        return "exact"
    if verified or (e.layout >= t.copy_layout and e.cosine >= t.copy_cosine):
        return "copy"
    if e.cosine >= t.similar_cosine:
        return "similar"
    return "none"


def at_least(v: str, minimum: str | None) -> bool:
    """Does verdict `v` reach `minimum` (None: anything does)?"""
    return minimum is None or ORDER.index(v) >= ORDER.index(minimum)


def check_name(v: str) -> str:
    if v not in ORDER:
        raise ValueError(f"verdict must be one of {', '.join(ORDER)}, not {v!r}")
    return v


def evidence_between(vec_a: np.ndarray, vec_b: np.ndarray, layouts_a: np.ndarray | None,
                     layouts_b: np.ndarray | None, feats_a, feats_b) -> Evidence:
    """Evidence for two images from their stored data: vectors [D], layouts [V, 256] (or None),
    verify.Features (or None)."""
    a, b = np.asarray(vec_a, np.float32), np.asarray(vec_b, np.float32)
    cosine = float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
    layout = 0.0
    if layouts_a is not None and layouts_b is not None:
        layout = copy_detection.layout_similarity(layouts_a, layouts_b)
    m = verify.match(feats_a, feats_b) if feats_a is not None and feats_b is not None else verify.NO_MATCH
    return Evidence(cosine, layout, m.inliers, m.identity)


def judge_stored(store, model_key: str, a: str, b: str, thresholds: Thresholds) -> tuple[str, Evidence]:
    """(verdict, evidence) for two indexed images, from what the store holds for them (vectors,
    layouts, keypoints): one pipelined read. KeyError if either has no vector."""
    ids, vectors, layouts = store.get_vectors_and_layouts(
        model_key, [a, b], (len(copy_detection.LAYOUT_VIEWS), copy_detection.LAYOUT_SIDE ** 2))
    if ids != [a, b]:
        raise KeyError(f"no vector for {', '.join(i for i in (a, b) if i not in ids)}")
    fa, fb = (verify.unpack(blob) for blob in store.get_features([a, b]))
    e = evidence_between(vectors[0], vectors[1], layouts[0], layouts[1], fa, fb)
    return verdict(e, thresholds), e
