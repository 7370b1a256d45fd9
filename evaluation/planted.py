"""A test set with planted duplicate groups, and how well a grouping recovers them.

From a folder of real photos (`dataset.load`: the evaluation set): most photos become originals,
some of them with one to three edited copies drawn from the edit families of the quality work
(random parameters, fixed seed), which together form a planted group. A few photos are held out
and only lend their content to *similar* pairs that are not duplicates: burst-like frames (two
crops of one scene, shifted, slightly zoomed and turned, exposed differently) and stereo-like views
(the same scene seen from beside). The real near-identical scenes of the set (stereo pairs,
consecutive video frames, the calibration boards) count as similar pairs too.

Scores, over pairs of images: precision and recall of "in one group" against the planted groups,
and the share of similar pairs that ended up in one group.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageEnhance

from evaluation import transforms
from services import images
from evaluation.dataset import load

# Different pictures of one scene in the evaluation set (file names without the class folder).
NATURAL_SIMILAR = [("opencv_data_aloeL.jpg", "opencv_data_aloeR.jpg"),
                   ("skimage_motorcycle_left.png", "skimage_motorcycle_right.png"),
                   ("opencv_data_basketball1.png", "opencv_data_basketball2.png"),
                   ("opencv_data_rubberwhale1.png", "opencv_data_rubberwhale2.png"),
                   ("opencv_data_leuvenA.jpg", "opencv_data_leuvenB.jpg"),
                   ("opencv_data_aero1.jpg", "opencv_data_aero3.jpg")]
NATURAL_SIMILAR += list(itertools.combinations([f"opencv_data_left0{i}.jpg" for i in range(1, 7)], 2))
COPY_SHARE = 0.6  # of the originals, how many get copies
HELD_OUT = 12  # photos that only lend content to burst-like and stereo-like pairs


def _edit_families(rng: random.Random):
    """One random edit: (name, function)."""
    t = transforms
    families = [
        ("mirror", lambda: t.mirror),
        ("rotate", lambda: t.rotate(rng.choice([-1, 1]) * rng.uniform(3, 30))),
        ("crop", lambda: t.center_crop(rng.uniform(0.55, 0.9))),
        ("watermark", lambda: t.watermark),
        ("jpeg", lambda: t.jpeg(rng.randint(15, 50))),
        ("grayscale", lambda: t.grayscale),
        ("scale", lambda: t.half_scale),
        ("brightness_contrast", lambda: t.brightness_contrast),
        ("combined", lambda: t.combined),
    ]
    name, make = rng.choice(families)
    return name, make()


def _shifted_crop(image: Image.Image, cx: float, cy: float, fraction: float, angle: float = 0.0) -> Image.Image:
    w, h = image.size
    cw, ch = w * fraction, h * fraction
    left, top = (w - cw) * cx, (h - ch) * cy
    view = image.rotate(angle, resample=Image.Resampling.BICUBIC) if angle else image
    return view.crop((round(left), round(top), round(left + cw), round(top + ch)))


def burst_pair(image: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """Two frames of one scene: the camera moved a little (8-15 % of the frame), zoomed and turned
    slightly, and the exposure changed; neither frame contains the other."""
    shift = rng.uniform(0.08, 0.15) / 2
    first = _shifted_crop(image, 0.5 - shift * 4, 0.5 - shift, 0.8, rng.uniform(-2, 2))
    second = _shifted_crop(image, 0.5 + shift * 4, 0.5 + shift, rng.uniform(0.74, 0.8), rng.uniform(-2, 2))
    second = ImageEnhance.Brightness(second).enhance(rng.uniform(0.8, 1.2))
    return first, second


def stereo_pair(image: Image.Image, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """Two views from beside each other: the same height, shifted sideways by 10-20 %."""
    fraction = rng.uniform(0.8, 0.9)
    return _shifted_crop(image, 0.0, 0.5, fraction), _shifted_crop(image, 1.0, 0.5, fraction)


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
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = load(photo_root)
    natural = {name for pair in NATURAL_SIMILAR for name in pair}
    spare = [it for it in items if it.path.name not in natural]
    held_out = set(rng.sample(range(len(spare)), HELD_OUT))
    planted = PlantedSet(str(out))

    def write(name: str, image: Image.Image) -> str:
        (out / name).write_bytes(transforms.to_jpeg_bytes(image, 90))
        planted.files.append(name)
        return name

    for n, item in enumerate(spare):
        if n not in held_out:
            continue
        image = images.decode(item.path.read_bytes())
        make = burst_pair if len(planted.similar) % 2 == 0 else stereo_pair
        a, b = make(image, rng)
        planted.similar.append((write(f"{make.__name__}{n:03d}_a.jpg", a), write(f"{make.__name__}{n:03d}_b.jpg", b)))
    for item in items:
        if item.path.name in natural or spare.index(item) not in held_out:
            original = item.path.name
            (out / original).write_bytes(item.path.read_bytes())
            planted.files.append(original)
            if rng.random() >= COPY_SHARE:
                continue
            image = images.decode(item.path.read_bytes())
            group = [original]
            for c in range(rng.randint(1, 3)):
                family, edit = _edit_families(rng)
                name = write(f"{Path(original).stem}__copy{c}_{family}.jpg", edit(image))
                planted.edits[name] = family
                group.append(name)
            planted.groups.append(group)
    planted.similar += [pair for pair in NATURAL_SIMILAR if all(p in planted.files for p in pair)]
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
            "copy_with_original_by_family": {k: sum(v) / len(v) for k, v in sorted(by_family.items())},
            "groups_planted": len(planted.groups), "groups_found": len(found), "images": len(planted.files)}
