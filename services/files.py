"""Originals and thumbnails in the data directory, addressed by image id.

    <data_dir>/originals/<id[:2]>/<id>        the bytes as received
    <data_dir>/thumbnails/<id[:2]>/<id>.jpg   at most 256 px on the long side, made on first use
    <data_dir>/incoming/                      uploads and archives waiting for their job

Writes go to a temp file and are renamed into place, so a reader never sees half a file and a
retried task rewrites nothing it already wrote.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from services import images

THUMBNAIL_SIDE = 256


def original_path(data_dir: Path, image_id: str) -> Path:
    return Path(data_dir) / "originals" / image_id[:2] / image_id


def thumbnail_path(data_dir: Path, image_id: str) -> Path:
    return Path(data_dir) / "thumbnails" / image_id[:2] / f"{image_id}.jpg"


def ensure_thumbnail(data_dir: Path, image_id: str, side: int = THUMBNAIL_SIDE) -> Path:
    """The thumbnail's path, made from the original on first use and kept: indexing does not pay
    for thumbnails nobody looks at. Raises images.ImageError if the original no longer decodes."""
    path = thumbnail_path(data_dir, image_id)
    original = original_path(data_dir, image_id)
    if not path.exists() and original.exists():
        write_atomic(path, images.thumbnail_jpeg(images.decode(original.read_bytes(), draft_for=side), side))
    return path


def incoming_dir(data_dir: Path) -> Path:
    path = Path(data_dir) / "incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Write unless the file exists already (content is addressed by hash: same name, same bytes)."""
    if path.exists():
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except FileNotFoundError:  # the folder's first file (most writes find it there already)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_image_files(data_dir: Path, image_id: str) -> None:
    original_path(data_dir, image_id).unlink(missing_ok=True)
    thumbnail_path(data_dir, image_id).unlink(missing_ok=True)
