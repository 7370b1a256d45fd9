"""Server-side directories: listing the images below an allowed root, and reading one safely.

Listing: folders are walked without following symlinks; a symlinked file counts only when its
target lies inside an allowed root. Entries named like images that are not regular files (fifos,
devices, sockets) are listed with the reason they are skipped, so the job reports them.

Reading (`read_file`): the path is opened one component at a time from its root with O_NOFOLLOW,
so a symlink swapped in between listing and reading is refused, not followed; only a regular
file is read (a fifo would block forever, a device never end), at most `max_bytes` of it.

Refusals: not_allowed, not_found (the whole directory); not_regular, too_large, unreadable (one file).
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from services.sources.base import IMAGE_EXTENSIONS, MemberError, SourceError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class DirectoryItem:
    path: Path
    label: str | None
    skip: str | None = None  # why it is not read (a fifo, a device): reported as a failed item


def iter_directory(directory: str | os.PathLike, allowed_roots: Iterable[str | os.PathLike]
                   ) -> Iterator[DirectoryItem]:
    """The image files below `directory`, sorted; label = first-level folder name (class folders).

    Checks happen at call time, before the first item. An empty `allowed_roots` disables
    directory sources.
    """
    roots = [Path(os.path.realpath(root)) for root in allowed_roots]
    if not roots:
        raise SourceError("not_allowed", "directory sources are disabled (no allowed roots configured)")
    try:
        base = Path(os.path.realpath(directory))
    except (ValueError, OSError):  # a NUL byte, a name too long
        raise SourceError("not_found", "not a usable path") from None
    if not _inside(base, roots):
        raise SourceError("not_allowed", f"{directory} is not inside an allowed root")
    try:
        is_dir = base.is_dir()
    except OSError:  # a name or path too long for the file system
        raise SourceError("not_found", "not a usable path") from None
    if not is_dir:
        raise SourceError("not_found", f"{directory} is not a directory")
    if not os.access(base, os.R_OK | os.X_OK):
        raise SourceError("not_allowed", f"{directory} cannot be read by the worker")
    return _walk(base, roots)


def count_directory(directory: str | os.PathLike, allowed_roots: Iterable[str | os.PathLike]) -> int:
    return sum(1 for _ in iter_directory(directory, allowed_roots))


def read_file(path: str | os.PathLike, roots: Iterable[str | os.PathLike], max_bytes: int) -> bytes:
    """The bytes of the regular file `path`, which must lie below one of `roots` with no symlink
    on the way (raises MemberError otherwise)."""
    path = Path(os.path.abspath(path))
    root = next((Path(r) for r in map(os.path.realpath, roots) if path.is_relative_to(r)), None)
    if root is None:
        raise MemberError("not_allowed", "the file is outside the allowed roots")
    *folders, name = path.relative_to(root).parts
    fd = os.open(root, _DIR_FLAGS)
    for folder in folders:
        fd = _step(fd, folder, _DIR_FLAGS)
    fd = _step(fd, name, _FILE_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MemberError("not_regular", "not a regular file (a fifo, device or socket)")
        if info.st_size > max_bytes:
            raise MemberError("too_large", f"{info.st_size} bytes, more than the limit of {max_bytes}")
        with os.fdopen(fd, "rb") as f:
            fd = -1  # closed with f
            data = f.read(max_bytes + 1)  # the size can change after fstat
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise MemberError("too_large", f"more than the limit of {max_bytes} bytes")
    return data


def _step(dir_fd: int, name: str, flags: int) -> int:
    """Opens `name` inside `dir_fd` and closes `dir_fd`; on failure returns nothing to close."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        reason = "a symlink is in the way" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise MemberError("unreadable", f"cannot open the file: {reason}") from None
    finally:
        os.close(dir_fd)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _walk(base: Path, roots: list[Path]) -> Iterator[DirectoryItem]:
    stack = [base]  # explicit stack: deep trees must not hit the recursion limit
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable subfolder is skipped, not fatal
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif (item := _image_file(entry, roots, base)) is not None:
                yield item
        stack.extend(reversed(subfolders))


def _image_file(entry: os.DirEntry, roots: list[Path], base: Path) -> DirectoryItem | None:
    if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    label = _label(Path(entry.path).relative_to(base).parts)
    if entry.is_symlink():
        target = Path(os.path.realpath(entry.path))
        return DirectoryItem(target, label) if _inside(target, roots) and target.is_file() else None
    if entry.is_file(follow_symlinks=False):
        return DirectoryItem(Path(entry.path), label)
    return DirectoryItem(Path(entry.path), label, "not a regular file (a fifo, device or socket): skipped")


def _label(parts: tuple[str, ...]) -> str | None:
    """`<class>/<image>` (or deeper) -> the class folder; a file at the top has no label."""
    return parts[0] if len(parts) >= 2 else None
