"""Geometric verification: is a candidate the same picture as the query, however cropped, rotated,
scaled, mirrored, stretched or pasted somewhere?

Index side (`features`): ORB keypoints of the image in grey, resized so that its long side is
`SIDE` pixels (small images upsampled: the corner detector needs a few pixels of scale), at most
`MAX_KEYPOINTS` of the strongest; stored packed (`pack`): x, y as uint16 (a pixel grid of the
resized image) and the 32-byte binary descriptor, 36 bytes a keypoint.

Query side (`query_features`): the same for the query and its mirror image (ORB is rotation- but
not mirror-invariant). `match(query, candidate)` matches descriptors (Hamming distance, Lowe's
ratio test on the two nearest), fits an affine transform with RANSAC and returns the inlier count:
a copy keeps dozens of its keypoints in one consistent geometry, an unrelated photo a handful.

OpenCV (cv2) only; one thread (the service runs many requests side by side).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

SIDE = 400
MAX_KEYPOINTS = 256
RATIO = 0.8              # Lowe's ratio test on Hamming distances
RANSAC_PX = 6.0          # reprojection error, pixels of the SIDE-px frame
MIN_MATCHES = 6
_RECORD = np.dtype([("x", "<u2"), ("y", "<u2"), ("d", "u1", 32)])

cv2.setNumThreads(1)


@dataclass(frozen=True)
class Features:
    xy: np.ndarray    # float32 [K, 2]
    desc: np.ndarray  # uint8 [K, 32]

    def __len__(self) -> int:
        return len(self.xy)


EMPTY = Features(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))


_EDGE = 15  # ORB's edgeThreshold: no keypoint lies closer to a border


def _detector(n: int):
    # edge threshold and patch size below ORB's 31 keep keypoints near the borders of small images
    return cv2.ORB_create(nfeatures=n, scaleFactor=1.2, nlevels=8, edgeThreshold=_EDGE, patchSize=15,
                          fastThreshold=10)


def _grey(image) -> np.ndarray:
    """uint8 [H, W] grey with the long side at SIDE, from a Pillow image or an RGB array."""
    a = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image)
    if a.ndim == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a[..., :3]), cv2.COLOR_RGB2GRAY)
    h, w = a.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(a, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def features(image, n: int = MAX_KEYPOINTS) -> Features:
    """The ORB features of an image (Pillow, RGB already; or uint8 [H, W(, 3)]). A frame thinner
    than ORB's border on both sides has none (a 9 x 29999 image is 1 x 400 here, and ORB's pyramid
    failed an OpenCV assertion on it)."""
    grey = _grey(image)
    if min(grey.shape) <= 2 * _EDGE:
        return EMPTY
    keypoints, desc = _detector(n).detectAndCompute(grey, None)
    if desc is None or not keypoints:
        return EMPTY
    return Features(np.array([k.pt for k in keypoints], np.float32), desc)


def query_features(image: Image.Image) -> tuple[Features, Features]:
    """(features of the image, features of its mirror image)."""
    return features(image), features(ImageOps.mirror(image))


def pack(f: Features) -> bytes:
    out = np.empty(len(f), _RECORD)
    out["x"], out["y"] = np.rint(f.xy[:, 0]), np.rint(f.xy[:, 1])
    out["d"] = f.desc
    return out.tobytes()


def unpack(blob: bytes | None) -> Features:
    if not blob:
        return EMPTY
    rec = np.frombuffer(blob, _RECORD)
    return Features(np.stack([rec["x"], rec["y"]], 1).astype(np.float32), np.ascontiguousarray(rec["d"]))


@dataclass(frozen=True)
class Match:
    inliers: int
    transform: np.ndarray | None = None  # 2x3 affine, query frame -> candidate frame

    @property
    def identity(self) -> bool:
        """Is the transform (nearly) the identity? Both frames have their long side at SIDE, so a
        resized or re-encoded copy maps onto its original unchanged."""
        if self.transform is None:
            return False
        a = self.transform
        return bool(np.abs(a[:, :2] - np.eye(2)).max() < 0.03 and np.abs(a[:, 2]).max() < 0.03 * SIDE)


NO_MATCH = Match(0)


def match(query: Features, candidate: Features) -> Match:
    """The best affine transform from query to candidate keypoints and its inlier count."""
    if len(query) < MIN_MATCHES or len(candidate) < MIN_MATCHES:
        return NO_MATCH
    # the two nearest candidate descriptors of each query descriptor as arrays (no DMatch objects)
    dist, nearest = cv2.batchDistance(query.desc, candidate.desc, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2)
    good = dist[:, 0] < RATIO * dist[:, 1]
    if good.sum() < MIN_MATCHES:
        return NO_MATCH
    src = query.xy[good]
    dst = candidate.xy[nearest[good, 0]]
    model, inliers = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX,
                                          maxIters=500, confidence=0.99)
    if model is None or inliers is None:
        return NO_MATCH
    # a degenerate fit (everything onto a line or a point) is no evidence of a copy
    if not 1e-3 < abs(float(np.linalg.det(model[:, :2]))) < 1e3:
        return NO_MATCH
    return Match(int(inliers.sum()), model)


def best_match(views: tuple[Features, ...], candidate: Features) -> Match:
    """The match with the most inliers over the query's views (itself, mirrored)."""
    return max((match(v, candidate) for v in views), key=lambda m: m.inliers, default=NO_MATCH)
