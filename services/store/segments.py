"""Append-only segment files on the data volume: each image's vector, copy-detection layouts and
keypoints, one record per image and model key, found by the short location `<segment>:<offset>`
that the image's Redis record keeps (services/store/vectors.py).

    <vector_dir>/<segment>.seg    records, back to back; <segment> a number from Redis (`p:segments`)

Several processes on several hosts write at once: each writing process appends only to a segment
of its own (created with O_EXCL, so never shared), threads of a process take turns. A record is
written and fsynced before its location is stored in Redis, so a location always names a whole
record; a record torn by a crash is never named and stays as garbage, like the record of a chunk
written twice or of a deleted image (nothing reclaims that space yet). Every record carries its
image id, model key and a CRC: a location that does not lead to its image's record (a file lost
with its host, another deployment's volume) reads as missing, never as another image's data.

Record: header `VSR1`, body length u32, two CRC-32 u32 (of the front, of the rest); body, the front:
id and model key (u8 length each), vector dtype u8 (2: float16, 4: float32), dim u32, layouts and
keypoints lengths u32, the vector; the rest: the layouts (float16) and the keypoints
(services/verify.py's packing). An index build reads and checks only the front (~2.7 KB of ~13.7).
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MAGIC = b"VSR1"
_HEAD = struct.Struct("<4sIII")  # magic, body length, CRC-32 of the front (names to vector), of the rest
_FIXED = struct.Struct("<BIII")  # vector dtype, dim, layouts bytes, keypoints bytes
SEGMENT_MAX_BYTES = 1 << 30  # a writer starts a new segment past this
OPEN_SEGMENTS = 64  # read handles kept per process
# One pread takes a typical record (2.5 KB vector, 2 KB layouts, ~9 KB keypoints), or its vector.
READ_AHEAD = {True: 16384, False: 4096}
_DTYPES = {2: np.dtype("<f2"), 4: np.dtype("<f4")}


@dataclass(frozen=True)
class Payload:
    """What one record holds; layouts and keypoints may be empty."""
    vector: np.ndarray  # 1-d, as stored (float16 or float32; the store returns float32 matrices)
    layouts: bytes = b""  # float16 [V, 256]
    keypoints: bytes = b""


def _names(image_id: str, model_key: str) -> bytes:
    iid, mk = image_id.encode(), model_key.encode()
    return bytes([len(iid)]) + iid + bytes([len(mk)]) + mk


def encode(image_id: str, model_key: str, vector: np.ndarray, dtype: np.dtype,
           layouts: bytes = b"", keypoints: bytes = b"") -> bytes:
    vec = np.asarray(vector, dtype.newbyteorder("<")).tobytes()
    front = b"".join([_names(image_id, model_key), _FIXED.pack(dtype.itemsize, len(vector), len(layouts),
                                                               len(keypoints)), vec])
    rest = layouts + keypoints
    return _HEAD.pack(MAGIC, len(front) + len(rest), zlib.crc32(front), zlib.crc32(rest)) + front + rest


def decode(data: bytes, image_id: str, model_key: str, whole: bool = True) -> Payload | int | None:
    """The payload if `data` starts with an intact record of (image_id, model_key) (with `whole`
    False, only its vector is read and checked); the length to read if `data` is too short to
    tell; None if it is not that record."""
    names = _names(image_id, model_key)
    front = _HEAD.size + len(names) + _FIXED.size
    if len(data) < front:
        return front
    magic, length, crc_front, crc_rest = _HEAD.unpack_from(data)
    if magic != MAGIC or data[_HEAD.size:_HEAD.size + len(names)] != names:
        return None
    size, dim, n_layouts, n_keypoints = _FIXED.unpack_from(data, front - _FIXED.size)
    end = front + size * dim
    needed = _HEAD.size + length if whole else end
    if size not in _DTYPES or end + n_layouts + n_keypoints != _HEAD.size + length:
        return None
    if len(data) < needed:
        return needed
    view = memoryview(data)
    if zlib.crc32(view[_HEAD.size:end]) != crc_front or (whole and zlib.crc32(view[end:needed]) != crc_rest):
        return None
    vector = np.frombuffer(data, _DTYPES[size], dim, front)
    if not whole:
        return Payload(vector)
    return Payload(vector, data[end:end + n_layouts], data[end + n_layouts:needed])


class Segments:
    """The segment files under `root`: append records, read them back by location. Thread-safe;
    `new_segment()` gives a segment number never used before (the store's Redis counter)."""

    def __init__(self, root: Path, new_segment):
        self.root, self._new_segment = Path(root), new_segment
        self._write_lock, self._read_lock = threading.Lock(), threading.Lock()
        self._writer: tuple[int, int, int] | None = None  # (pid, segment, fd); a forked child opens its own
        self._offset = 0
        self._readers: OrderedDict[int, int] = OrderedDict()  # segment -> fd, least recently used first

    def path(self, segment: int) -> Path:
        return self.root / f"{segment:08d}.seg"

    def append(self, records: list[bytes]) -> list[str]:
        """Write the records to this process's segment, durably; their locations, in order."""
        if not records:
            return []
        with self._write_lock:
            segment, fd = self._writable(sum(map(len, records)))
            try:
                pending = memoryview(b"".join(records))
                while pending:  # a write to a file stops short only on a full disk or a signal
                    pending = pending[os.write(fd, pending):]
                os.fsync(fd)
            except BaseException:
                self._close_writer()  # never append after a torn record: start a new segment
                raise
            # O_APPEND put the data at the end, wherever that was: locate it from where it ended
            offset = os.lseek(fd, 0, os.SEEK_CUR) - sum(map(len, records))
            locations = []
            for r in records:
                locations.append(f"{segment}:{offset}")
                offset += len(r)
            self._offset = offset
            return locations

    def read(self, located: list[tuple[str, str, str | None]], whole: bool = True) -> list[Payload | None]:
        """For each (image id, model key, location or None): its payload, or None where there is no
        such intact record. `whole` False: the vectors only (what an index build reads)."""
        return [self._read_one(*item, whole) if item[2] else None for item in located]

    def _read_one(self, image_id: str, model_key: str, location: str, whole: bool) -> Payload | None:
        segment, offset = (int(x) for x in location.split(":"))
        for attempt in range(2):  # a cached handle may predate the record (NFS): reopen once
            try:
                fd = self._reader(segment, fresh=attempt > 0)
                got = decode(os.pread(fd, READ_AHEAD[whole], offset), image_id, model_key, whole)
                while isinstance(got, int):
                    data = os.pread(fd, got, offset)
                    got = decode(data, image_id, model_key, whole) if len(data) == got else None
            except FileNotFoundError:
                got = None
            if isinstance(got, Payload):
                return got
        logger.warning("no intact record of %s (%s) at %s in %s", image_id, model_key, location, self.root)
        return None

    def _reader(self, segment: int, fresh: bool) -> int:
        with self._read_lock:
            fd = self._readers.pop(segment, None)
            if fd is not None and fresh:
                os.close(fd)
                fd = None
            if fd is None:
                fd = os.open(self.path(segment), os.O_RDONLY)
                while len(self._readers) >= OPEN_SEGMENTS:
                    os.close(self._readers.popitem(last=False)[1])
            self._readers[segment] = fd
            return fd

    def _writable(self, size: int) -> tuple[int, int]:
        pid = os.getpid()
        if self._writer and (self._writer[0] != pid or self._offset + size > SEGMENT_MAX_BYTES):
            if self._writer[0] == pid:
                self._close_writer()
            self._writer = None  # a parent's segment stays the parent's
        if self._writer is None:
            self.root.mkdir(parents=True, exist_ok=True)
            while True:
                segment = self._new_segment()
                try:
                    fd = os.open(self.path(segment), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                    break
                except FileExistsError:  # another deployment's counter on this volume: take the next
                    continue
            self._writer, self._offset = (pid, segment, fd), 0
        return self._writer[1], self._writer[2]

    def _close_writer(self) -> None:
        if self._writer:
            try:
                os.close(self._writer[2])
            finally:
                self._writer = None
