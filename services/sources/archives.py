"""Uploaded archives (zip, tar, tar.gz/bz2/xz): the images extracted, every limit enforced before
the memory or time it guards is spent.

- Members: at most `max_members` (folders count: they cost a header each). A zip's count is read
  from its end record and then by walking its central directory headers, stopping past the limit,
  before `zipfile` parses (and keeps) the whole directory.
- Bytes: each member at most `max_member_bytes`, all of them together `max_total_bytes`, counted on
  the bytes actually produced (declared sizes can lie). A tar is decompressed by us and every byte
  of the stream is counted, skipped members and headers too.
- Tar headers: pax and GNU long-name headers are read whole into memory by `tarfile`; one larger
  than MAX_TAR_HEADER_BYTES is refused from its declared size, before it is read. GNU sparse
  members are refused (their maps are unbounded lists).
- Time: one wall-clock deadline for the whole archive, checked on every read.
- Names never become paths: files are written as `dest_dir/000000.jpg`...; unsafe names (absolute,
  `..`), links, devices, non-images and nested archives are skipped with a reason, not expanded.

Whole-archive refusals (`SourceError.code`): bad_archive, too_many_members, archive_too_large,
timeout. Per-member skips come back as `ArchiveSkip(member, error)`.
"""
from __future__ import annotations

import bz2
import contextlib
import functools
import gzip
import io
import lzma
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, NamedTuple

from services.config import Settings
from services.sources.base import (
    ARCHIVE_EXTENSIONS, CHUNK, IMAGE_EXTENSIONS, MIB, Deadline, MemberError, SourceError, printable,
)

MAX_TAR_HEADER_BYTES = 64 * 1024  # a pax record or GNU long name; real ones are a few hundred bytes
# What the zip, tar and decompression libraries raise on corrupt or truncated input.
_ARCHIVE_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                   tarfile.TarError, zlib.error, lzma.LZMAError, struct.error, UnicodeError)
_LONG_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                 tarfile.SOLARIS_XHDTYPE)
# Opened by us, not by tarfile: these read concatenated streams too, and we count what they yield.
_DECOMPRESSORS = ((b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
                  (b"BZh", lambda f: bz2.BZ2File(f, "rb")), (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f, "rb")))


@dataclass(frozen=True)
class ArchiveItem:
    path: Path    # the extracted file, inside dest_dir
    member: str   # the member's name in the archive (printable)
    label: str | None


class ArchiveSkip(NamedTuple):
    member: str
    error: str


@dataclass
class ArchiveResult:
    items: list[ArchiveItem]
    skipped: list[ArchiveSkip]


class _Member(NamedTuple):
    name: str
    kind: str  # "file", "dir", "link" or "other" (device, fifo)
    size: int  # as declared, which may be a lie
    open: Callable[[], BinaryIO]


def extract_archive(archive_path: str | Path, dest_dir: str | Path, *,
                    max_members: int = Settings.max_archive_members,
                    max_total_bytes: int = Settings.max_archive_mb * MIB,
                    max_member_bytes: int = Settings.max_upload_mb * MIB,
                    timeout_s: float = Settings.archive_timeout_s) -> ArchiveResult:
    """Extract the images of a zip or tar (plain, gz, bz2, xz; sniffed, not by extension).

    On a SourceError the files written so far are removed.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(timeout_s, "extracting the archive")
    # Headers and padding cost bytes in a tar stream too: allow for them beyond the content.
    stream_budget = max_total_bytes + max_members * 4096 + MIB
    extracted: list[tuple[tuple[str, ...], Path, str]] = []
    skipped: list[ArchiveSkip] = []
    total = 0
    try:
        with contextlib.closing(_members(Path(archive_path), max_members, stream_budget, deadline)) as members:
            for count, member in enumerate(members, 1):
                if count > max_members:
                    raise SourceError("too_many_members", f"more than {max_members} members")
                deadline.check()
                if member.kind == "dir":
                    continue
                try:
                    parts = _vet(member, max_member_bytes)
                    if member.size > max_total_bytes - total:
                        raise _too_large()
                    path = dest / f"{len(extracted):06d}{Path(parts[-1]).suffix.lower()}"
                    total += _copy(member, path, max_member_bytes, max_total_bytes - total, deadline)
                except MemberError as exc:
                    skipped.append(ArchiveSkip(printable(member.name), exc.message))
                    continue
                extracted.append((parts, path, printable(member.name)))
    except BaseException:
        for _, path, _ in extracted:
            path.unlink(missing_ok=True)
        raise
    labels = _archive_labels([parts for parts, _, _ in extracted])
    items = [ArchiveItem(path, name, label) for (_, path, name), label in zip(extracted, labels)]
    return ArchiveResult(items, skipped)


def _too_large() -> SourceError:
    return SourceError("archive_too_large", "the archive expands beyond the total size limit")


def _members(path: Path, max_members: int, stream_budget: int, deadline: Deadline) -> Iterator[_Member]:
    """The archive's entries in order; a tar is read as one stream (no second pass)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                _check_zip_directory(f, max_members)
                with zipfile.ZipFile(f) as zf:
                    for info in zf.infolist():
                        yield _Member(info.filename, _zip_kind(info), info.file_size,
                                      functools.partial(zf.open, info))
                return
            f.seek(0)
            opener = next((o for m, o in _DECOMPRESSORS if magic.startswith(m)), None)
            with (opener(f) if opener else f) as raw:
                budget = _Budgeted(raw, stream_budget, deadline)
                with tarfile.open(fileobj=budget, mode="r|", tarinfo=_CappedTarInfo) as tf:
                    for info in tf:
                        yield _Member(info.name, _tar_kind(info), info.size,
                                      functools.partial(tf.extractfile, info))
    except _ARCHIVE_ERRORS as exc:  # raised by the readers, not by the loop body in our caller
        raise SourceError("bad_archive", f"corrupt, truncated or not a zip or tar archive ({exc})") from None
    except RecursionError:  # a chain of thousands of pax headers: tarfile recurses per header
        raise SourceError("bad_archive", "corrupt tar archive (a chain of extended headers)") from None


class _Budgeted(io.RawIOBase):
    """A read-only stream that refuses to yield more than `budget` bytes or to outlive `deadline`."""

    def __init__(self, raw: BinaryIO, budget: int, deadline: Deadline):
        self.raw, self.left, self.deadline = raw, budget, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.deadline.check()
        data = self.raw.read(min(len(buffer), CHUNK))
        self.left -= len(data)
        if self.left < 0:
            raise _too_large()
        buffer[:len(data)] = data
        return len(data)


class _CappedTarInfo(tarfile.TarInfo):
    """Refuses, from the declared size, the headers tarfile would read whole into memory."""

    def _proc_member(self, tarfile_):
        if self.type in _LONG_HEADERS and self.size > MAX_TAR_HEADER_BYTES:
            raise SourceError("archive_too_large", f"a tar extended header (pax or GNU long name) of "
                              f"{self.size} bytes; at most {MAX_TAR_HEADER_BYTES} are read")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise SourceError("bad_archive", "GNU sparse tar members are not supported")
        return super()._proc_member(tarfile_)


def _check_zip_directory(f: BinaryIO, max_members: int) -> None:
    """Counts the central directory's entries, from the end record and then header by header
    (the record can lie), stopping past `max_members`: zipfile would parse them all first."""
    f.seek(0, io.SEEK_END)
    size = f.tell()
    tail_at = max(0, size - 22 - 65535)  # the end record, then at most a 64 KiB comment
    f.seek(tail_at)
    tail = f.read()
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        raise zipfile.BadZipFile("no end of central directory record")
    entries, cd_size = struct.unpack("<HI", tail[pos + 10:pos + 16])
    end_at = tail_at + pos
    locator = tail[pos - 20:pos] if pos >= 20 else b""
    if locator[:4] == b"PK\x06\x07":  # zip64: the real counts are in the zip64 end record
        (record_at,) = struct.unpack("<Q", locator[8:16])
        f.seek(record_at)
        record = f.read(56)
        if record[:4] != b"PK\x06\x06" or len(record) < 56:
            raise zipfile.BadZipFile("corrupt zip64 end record")
        entries, cd_size = struct.unpack("<QQ", record[32:48])
        end_at = record_at
    if entries > max_members:
        raise SourceError("too_many_members", f"{entries} members listed: more than {max_members} members")
    f.seek(max(0, end_at - cd_size))  # where zipfile looks too (it allows data before the zip)
    reader = io.BufferedReader(_Window(f, cd_size), 1 << 16)
    for count in range(1, max_members + 2):
        head = reader.read(46)
        if len(head) < 46 or head[:4] != b"PK\x01\x02":
            return  # the end (or a corrupt directory: zipfile says which)
        if count > max_members:
            raise SourceError("too_many_members", f"more than {max_members} members")
        name, extra, comment = struct.unpack("<HHH", head[28:34])
        reader.read(name + extra + comment)


class _Window(io.RawIOBase):
    """At most `size` bytes of `f` from where it stands."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.f.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.filename.endswith("/"):  # info.is_dir(), which raises IndexError on an empty name
        return "dir"
    file_type = (info.external_attr >> 16) & 0o170000  # Unix mode, when the zip was made on Unix
    return {0: "file", 0o100000: "file", 0o120000: "link"}.get(file_type, "other")


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    return "link" if info.issym() or info.islnk() else "other"


def _vet(member: _Member, max_member_bytes: int) -> tuple[str, ...]:
    """The member's path parts, or a MemberError saying why it is skipped."""
    if member.kind == "link":
        raise MemberError("unsafe_member", "links are not extracted")
    if member.kind != "file":
        raise MemberError("unsafe_member", "devices and fifos are not extracted")
    parts = _safe_parts(member.name)
    suffix = Path(parts[-1]).suffix.lower()
    if suffix in ARCHIVE_EXTENSIONS:
        raise MemberError("nested_archive", "archives inside archives are not extracted")
    if suffix not in IMAGE_EXTENSIONS or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        raise MemberError("not_image", "not an image file name")
    if member.size > max_member_bytes:
        raise MemberError("too_large", f"{member.size} bytes, more than the limit of {max_member_bytes}")
    return parts


def _safe_parts(name: str) -> tuple[str, ...]:
    normalized = name.replace("\\", "/")  # Windows tools write backslashes
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized):
        raise MemberError("unsafe_member", "absolute path")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts or not parts:
        raise MemberError("unsafe_member", "path escapes the archive")
    return parts


def _copy(member: _Member, path: Path, member_limit: int, total_left: int, deadline: Deadline) -> int:
    """Copy, counting real bytes (declared sizes can lie); returns the size written."""
    limit = min(member_limit, total_left)
    written = 0
    out = open(path, "xb")  # "x": never writes through an existing file or link
    try:
        with out, _open_member(member) as src:
            while chunk := _read(src):
                deadline.check()
                written += len(chunk)
                if written > limit:
                    break
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written > limit:
        path.unlink()
        if limit == total_left < member_limit:
            raise _too_large()
        raise MemberError("too_large", f"expands beyond the limit of {member_limit} bytes")
    return written


def _open_member(member: _Member) -> BinaryIO:
    try:
        return member.open()
    except _ARCHIVE_ERRORS as exc:  # encrypted, unknown compression, bad local header
        raise MemberError("bad_member", f"unreadable member ({exc})") from None


def _read(src: BinaryIO) -> bytes:
    try:
        return src.read(CHUNK)
    except _ARCHIVE_ERRORS as exc:
        raise MemberError("bad_member", f"corrupt member ({exc})") from None


def _archive_labels(paths: list[tuple[str, ...]]) -> list[str | None]:
    """Folder-per-class labels, after dropping one top-level folder that wraps all class folders.

    `caltech/001.ak47/x.jpg` -> `001.ak47`. A lone folder of images (`cats/1.jpg`, nothing deeper)
    is a class, not a wrapper.
    """
    firsts = {parts[0] for parts in paths}
    wrapped = (len(firsts) == 1 and all(len(p) >= 2 for p in paths)
               and any(len(p) >= 3 for p in paths))
    return [_label(parts[1:] if wrapped else parts) for parts in paths]


def _label(parts: tuple[str, ...]) -> str | None:
    """`<class>/<image>` (or deeper) -> the class folder; a file at the top has no label."""
    return printable(parts[0]) if len(parts) >= 2 else None
