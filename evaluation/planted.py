"""A test set with planted duplicate groups, and how well a grouping recovers them.

From a folder-per-class tree of real photos (a split of the evaluation collection,
evaluation/collection.py): most photos become originals, some of them with one to three edited
copies drawn from the edit families of the quality work (evaluation/edits.py: random family,
random parameters, fixed seed), which together form a planted group. A few photos are held out:
some serve only as collage backgrounds, the others only lend their content to *similar* pairs that
are not duplicates: burst-like frames (two
crops of one scene, shifted, slightly zoomed and turned, exposed differently) and stereo-like views
(the same scene seen from beside). The real near-identical scenes of the set (stereo pairs,
consecutive video frames, the calibration boards) count as similar pairs too.

Scores, over pairs of images: precision and recall of "in one group" against the planted groups,
and the share of similar pairs that ended up in one group.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from evaluation import edits, transforms
from evaluation.dataset import load
from services import images

# Different pictures of one scene that the evaluation photos hold (file name endings).
NATURAL_SIMILAR = [("aloeL.jpg", "aloeR.jpg"), ("motorcycle_left.png", "motorcycle_right.png"),
                   ("basketball1.png", "basketball2.png"), ("rubberwhale1.png", "rubberwhale2.png"),
                   ("leuvenA.jpg", "leuvenB.jpg"), ("aero1.jpg", "aero3.jpg")]
NATURAL_SIMILAR += list(itertools.combinations([f"left0{i}.jpg" for i in range(1, 7)], 2))
COPY_SHARE = 0.6  # of the originals, how many get copies
HELD_OUT = 30  # photos that only lend content to burst-like and stereo-like pairs
BACKGROUNDS = 20  # photos that only serve as the background of collages (never indexed)
# Documentation images show one picture before and after an operation, in several sizes: they are
# duplicates of one another that nobody planted (measured: most wrong pairs of a first run were
# such, e.g. a help screenshot and its "2" variant). The set leaves those sources out.
DOCUMENTATION = re.compile(r"gimp-(?!patterns)|hugin-help|opencv-doc-tutorials|imagemagick-doc")
MAX_SIDE = 1600  # copies are made from the photo at most this large (wallpapers are 14 MP)


def _shifted_crop(image: Image.Image, cx: float, cy: float, fraction: float, angle: float = 0.0) -> Image.Image:
    w, h = image.size
    cw, ch = w * fraction, h * fraction
    left, top = (w - cw) * cx, (h - ch) * cy
    view = image.rotate(angle, resample=Image.Resampling.BICUBIC) if angle else image
    return view.crop((round(left), round(top), round(left + cw), round(top + ch)))


def burst_pair(image: Image.Image, rng) -> tuple[Image.Image, Image.Image]:
    """Two frames of one scene: the camera moved a little (8-15 % of the frame), zoomed and turned
    slightly, and the exposure changed; neither frame contains the other."""
    shift = rng.uniform(0.08, 0.15) / 2
    first = _shifted_crop(image, 0.5 - shift * 4, 0.5 - shift, 0.8, rng.uniform(-2, 2))
    second = _shifted_crop(image, 0.5 + shift * 4, 0.5 + shift, rng.uniform(0.74, 0.8), rng.uniform(-2, 2))
    second = ImageEnhance.Brightness(second).enhance(rng.uniform(0.8, 1.2))
    return first, second


def stereo_pair(image: Image.Image, rng) -> tuple[Image.Image, Image.Image]:
    """Two views from beside each other: the same height, shifted sideways by 10-20 %."""
    fraction = rng.uniform(0.8, 0.9)
    return _shifted_crop(image, 0.0, 0.5, fraction), _shifted_crop(image, 1.0, 0.5, fraction)


def _picture(path: Path) -> Image.Image:
    image = images.decode(path.read_bytes())
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def _one_per_folder_of_sizes(items: list) -> list:
    """Wallpaper packages ship one picture in several sizes and crops (a folder each): keep one."""
    out, seen = [], set()
    for it in items:
        if it.label.startswith("plasma-") and it.label in seen:
            continue
        seen.add(it.label)
        out.append(it)
    return out


@dataclass
class PlantedSet:
    root: str
    groups: list[list[str]] = field(default_factory=list)  # file names: an original and its copies
    similar: list[tuple[str, str]] = field(default_factory=list)  # pairs that must not be grouped
    edits: dict[str, str] = field(default_factory=dict)  # copy file -> edit family
    files: list[str] = field(default_factory=list)

    def save(self) -> None:
        (Path(self.root) / "truth.json").write_text(json.dumps(asdict(self), indent=1))


def build(photo_root: str | Path, out: str | Path, seed: int = 17) -> PlantedSet:
    """Writes the set's images to out/ (flat) and its truth to out/truth.json."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = [it for it in _one_per_folder_of_sizes(load(photo_root)) if not DOCUMENTATION.match(it.label)]
    natural = {it.path.name for it in items if any(it.path.name.endswith(end) for pair in NATURAL_SIMILAR for end in pair)}
    spare = [i for i in rng.permutation(len(items)) if items[i].path.name not in natural]
    held_out = set(int(i) for i in spare[:HELD_OUT])
    # A collage contains much of its background: a background that is also indexed (or lends its
    # content to a burst) would make the collage a true copy of it too.
    backgrounds = set(int(i) for i in spare[HELD_OUT:HELD_OUT + BACKGROUNDS])
    pool = [_picture(items[n].path) for n in sorted(backgrounds)]
    planted = PlantedSet(str(out))

    def write(name: str, image: Image.Image) -> str:
        (out / name).write_bytes(transforms.to_jpeg_bytes(image, 90))
        planted.files.append(name)
        return name

    for n in sorted(held_out):
        image = _picture(items[n].path)
        make = burst_pair if len(planted.similar) % 2 == 0 else stereo_pair
        a, b = make(image, rng)
        planted.similar.append((write(f"{make.__name__}{n:04d}_a.jpg", a), write(f"{make.__name__}{n:04d}_b.jpg", b)))
    families, used_backgrounds = sorted(edits.FAMILIES), 0
    for n, item in enumerate(items):
        if n in held_out or n in backgrounds:
            continue
        original = f"{n:04d}_{item.path.name}"
        (out / original).write_bytes(item.path.read_bytes())
        planted.files.append(original)
        if rng.random() >= COPY_SHARE:
            continue
        image = _picture(item.path)
        group = [original]
        for c in range(int(rng.integers(1, 4))):
            family = families[int(rng.integers(len(families)))]
            # a background of its own: two collages on one background are copies of each other
            edited, params = edits.FAMILIES[family](image, rng, [pool[used_backgrounds % len(pool)]])
            used_backgrounds += family == "collage" or any("collage" in step for step in params.get("steps", ()))
            name = write(f"{Path(original).stem}__copy{c}_{family}.jpg", edited)
            planted.edits[name] = family
            group.append(name)
        planted.groups.append(group)
    by_end = {end: f for f in planted.files for pair in NATURAL_SIMILAR for end in pair if f.endswith(end)}
    planted.similar += [(by_end[a], by_end[b]) for a, b in NATURAL_SIMILAR if a in by_end and b in by_end]
    planted.save()
    return planted


def _pairs(groups) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


def score(planted: PlantedSet, found: list[list[str]]) -> dict:
    """Pairwise precision and recall of `found` groups (file names) against the planted ones, and
    the share of similar pairs put in one group."""
    truth, got = _pairs(planted.groups), _pairs(found)
    hits = truth & got
    in_one = {p for p in got}
    similar_grouped = [p for p in planted.similar if tuple(sorted(p)) in in_one]
    by_family: dict[str, list[int]] = {}
    for g in planted.groups:
        for copy in g[1:]:
            by_family.setdefault(planted.edits[copy], []).append(int(tuple(sorted((g[0], copy))) in got))
    return {"precision": len(hits) / len(got) if got else 1.0, "recall": len(hits) / len(truth) if truth else 1.0,
            "true_pairs": len(truth), "found_pairs": len(got), "correct_pairs": len(hits),
            "similar_pairs": len(planted.similar), "similar_grouped": len(similar_grouped),
            "similar_grouped_share": len(similar_grouped) / len(planted.similar) if planted.similar else 0.0,
            "similar_grouped_examples": similar_grouped[:10],
            "wrong_pairs_examples": sorted(got - truth)[:15],
            "copy_with_original_by_family": {k: sum(v) / len(v) for k, v in sorted(by_family.items())},
            "groups_planted": len(planted.groups), "groups_found": len(found), "images": len(planted.files)}
