"""A running stack for the black-box hostile-input suites (test_hostile.py, test_properties.py), and
the hostile inputs they send: real Redis, `vsearch model-server`, a real Celery worker, the gateway
under gunicorn, everything reached over HTTP only.

Two gateways share one store: `open` (no token: the Host/Origin checks apply; private URLs allowed,
so local test servers can be fetched) and `strict` (tokens, public URLs only, ports 80/443).
"""
from __future__ import annotations

import bz2
import gzip
import io
import itertools
import struct
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import requests
from PIL import Image, ImageEnhance

from modelserver.process import stop_process
from tests.workers import WorkerProcess, drop_keys, isolated_settings, start_gateway

TOKEN, READ_TOKEN = "hostile-write-4f9a", "hostile-read-7c2e"
JOB_TIMEOUT_S = 60


@dataclass
class Stack:
    settings: object
    worker: WorkerProcess
    open_url: str      # .../api/v1 of the gateway without a token
    strict_url: str    # .../api/v1 of the gateway with tokens, public URLs only
    root: Path         # an allowed root for directory jobs
    sentinel: str = ""  # an image indexed first: every case checks it is still found

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.open_url + path, timeout=120, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.open_url + path, timeout=30, **kwargs)

    def job(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
        """The job once it ended (done or failed), read through the API."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not end within {timeout_s} s: {job}\n{self.worker.log()[-3000:]}")

    def archive_job(self, name: str, data: bytes) -> dict:
        response = self.post("/jobs", files={"archive": (name, data)})
        assert response.status_code == 202, response.text
        return self.job(response.json()["job_id"])

    def assert_serving(self) -> None:
        """The service is healthy and lost nothing: the sentinel is still found first."""
        assert self.worker.proc.poll() is None, self.worker.log()[-3000:]
        for path in ("/healthz", "/readyz"):
            assert self.get(path).status_code == 200, path
        hit = self.post("/search", json={"image_id": self.sentinel, "k": 1})
        assert hit.status_code == 200 and hit.json()["results"][0]["id"] == self.sentinel, hit.text

    def worker_memory_mb(self) -> tuple[float, float]:
        """The worker process's resident set now and at its peak (VmRSS, VmHWM), in MiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.worker.proc.pid}/status").read_text()
                      .splitlines() if ":" in line)
        return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def start_stack(tmp: Path, model_server: str, photos) -> Stack:
    settings = isolated_settings(tmp, model_server, max_upload_mb=64, url_timeout_s=2, max_urls_per_job=40,
                                 max_archive_members=100, max_archive_mb=8, archive_timeout_s=20,
                                 ingest_chunk=4, max_query_pixels=4_000_000, max_concurrent_requests=2,
                                 request_body_timeout_s=2)
    strict = replace(settings, api_token=TOKEN, read_token=READ_TOKEN, allow_private_urls=False,
                     url_ports=(80, 443))
    worker = WorkerProcess(settings, tmp, concurrency=3)
    procs = []
    try:
        worker.wait_ready()
        open_proc, open_url = start_gateway(settings, workers=1, threads=8)
        procs.append(open_proc)
        strict_proc, strict_url = start_gateway(strict, workers=1, threads=4)
        procs.append(strict_proc)
    except BaseException:
        worker.stop()
        for proc in procs:
            stop_process(proc)
        raise
    stack = Stack(settings, worker, open_url, strict_url, tmp)
    stack._procs = procs
    first = jpeg(photos, 0)
    job = stack.post("/images", files={"file": ("sentinel.jpg", first)})
    assert stack.job(job.json()["job_id"])["done"] == 1
    stack.sentinel = job.json()["images"][0]["id"]
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in stack._procs:
        stop_process(proc)
    stack.worker.stop()
    drop_keys(stack.settings)


# ------------------------------------------------------------------------------- the inputs

_counter = itertools.count(1)


def jpeg(photos, n: int | None = None, side: int = 160) -> bytes:
    """A small real photo whose bytes no other call returns (a brightness of its own)."""
    n = next(_counter) if n is None else n
    with Image.open(photos[n % len(photos)]) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    im = ImageEnhance.Brightness(im).enhance(0.6 + (n % 97) / 120)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85 + n % 10)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gif_bomb(side: int = 65535) -> bytes:
    """A GIF whose screen and frame declare side x side: 35 bytes."""
    head = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    return head + b"," + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00;"


def tiff_bomb(side: int = 100_000) -> bytes:
    """A baseline TIFF whose directory declares side x side pixels."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, 1000)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def webp_bomb(side: int = 16383) -> bytes:
    """A WebP (VP8X) whose canvas is side x side."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (side - 1).to_bytes(3, "little") * 2
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def pax_header_bomb(gib: int = 6) -> bytes:
    """A tar whose first header is a pax extended header declaring `gib` GiB, followed by that many
    zeros: concatenated bz2 streams of 64 MiB each, about 8 KB in all. tarfile alone would read the
    whole header into memory."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, gib * 2**30
    zeros = bz2.compress(bytes(64 * 2**20), 9)
    return bz2.compress(info.tobuf(format=tarfile.USTAR_FORMAT)) + zeros * (gib * 16)


def gnu_long_name_bomb(mib: int = 512) -> bytes:
    """A GNU long-name header declaring `mib` MiB of name, as concatenated bz2 streams."""
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, mib * 2**20
    zeros = bz2.compress(bytes(64 * 2**20), 9)
    return bz2.compress(info.tobuf(format=tarfile.GNU_FORMAT)) + zeros * max(1, mib // 64)


def million_entry_zip(entries: int = 1_000_000) -> bytes:
    """A zip64 whose central directory really holds `entries` entries (all naming one empty member):
    about 51 MB. zipfile alone parses them all into ZipInfo objects (~440 MB here)."""
    name = b"a.jpg"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    entry = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name),
                        0, 0, 0, 0, 0, 0) + name
    directory = entry * entries
    end64_at = len(local) + len(directory)
    end64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory),
                        len(local))
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end64_at, 1)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + directory + end64 + locator + end


def concatenated_gzip_tar(members: int = 4, mib: int = 3) -> bytes:
    """A tar of `members` x `mib` MiB of text, as that many gzip members one after the other."""
    tar = tar_bytes([(member(f"{i}.txt"), bytes(mib * 2**20)) for i in range(members)])
    step = len(tar) // members + 1
    return b"".join(gzip.compress(tar[i:i + step]) for i in range(0, len(tar), step))


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def jpeg_scan_bomb(side: int = 2000, scans: int = 2000) -> bytes:
    """A progressive grey JPEG of side x side with its AC scan repeated `scans` times: each copy is a
    few bytes of end-of-band runs that the decoder walks over every block of the image (2000 x 2000
    and 2,000 scans: 48 KB, ~1.5 s to decode; 6000 x 6000: 260 KB, ~11 s)."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    first_scan = data.index(b"\xff\xda")
    # an AC table (class 1, id 1) of one 1-bit code, for symbol E0: an end-of-band run with 14 more bits
    table = b"\xff\xc4" + struct.pack(">H", 2 + 17 + 1) + b"\x11" + bytes([1] + [0] * 15) + b"\xe0"
    runs = -(-((side + 7) // 8) ** 2 // 32767)  # each run skips up to 32767 blocks
    bits = ("0" + "1" * 14) * runs
    bits += "1" * (-len(bits) % 8)
    entropy = b"".join(b"\xff\x00" if byte == 0xFF else bytes([byte])  # an FF in entropy data is stuffed
                       for byte in (int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)))
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x01, 1, 63, 0) + entropy  # component 1, bands 1-63
    return data[:first_scan] + table + data[first_scan:-2] + scan * scans + b"\xff\xd9"
