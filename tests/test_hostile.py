"""Hostile input against the whole running service, over HTTP only: the gateway under gunicorn, a
real worker, Redis and the model server (tests/hostile.py). Every case asserts its documented
answer (a 4xx, or a job that ends with that item failed), then that the service is still healthy
and lost nothing (`Stack.assert_serving`). docs/reliability.md lists the cases.
"""
from __future__ import annotations

import csv
import http.server
import io
import json
import os
import socket
import tarfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw

from services import files
from services.store import image_id
from tests.conftest import QuietHandler, imagenet_photos
from tests.hostile import (
    READ_TOKEN, TOKEN, concatenated_gzip_tar, encode, gif_bomb, gnu_long_name_bomb, jpeg, jpeg_scan_bomb, member,
    million_entry_zip, pax_header_bomb, tar_bytes, tiff_bomb, webp_bomb,
)
from tests.test_bad_input import png_header_only

PHOTOS = imagenet_photos()
ID = "ab" * 32
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
WRITE = {"Authorization": f"Bearer {TOKEN}"}


def raw_json(text: str) -> dict:
    return {"data": text.encode("utf-8", "surrogatepass"), "headers": {"Content-Type": "application/json"}}


def query(data: bytes, name: str = "q.bin") -> dict:
    return {"files": {"file": (name, data)}}


def _gif() -> bytes:
    frames = [Image.open(PHOTOS[3]).convert("RGB").resize((96, 96)), Image.open(PHOTOS[4]).convert("RGB").resize((96, 96))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


_16BIT = encode(Image.fromarray(np.linspace(0, 65535, 96 * 96).reshape(96, 96).astype(np.uint16)), "PNG")
_CMYK = encode(Image.open(PHOTOS[1]).convert("CMYK").resize((128, 128)), "JPEG")
_TRUNCATED = jpeg(PHOTOS, 5)[:900]

# (name, gateway, method, path, request kwargs, status, error code or None)
CASES = [
    # JSON that Python parses but nothing downstream can hold
    ("k 1e400", "open", "post", "/search", raw_json('{"image_id": "%s", "k": 1e400}' % ID), 400, "bad_json"),
    ("k Infinity", "open", "post", "/search", raw_json('{"image_id": "%s", "k": Infinity}' % ID), 400, "bad_json"),
    ("k -Infinity", "open", "post", "/search", raw_json('{"k": -Infinity}'), 400, "bad_json"),
    ("k NaN", "open", "post", "/search", raw_json('{"k": NaN}'), 400, "bad_json"),
    ("k of 5000 digits", "open", "post", "/search", raw_json('{"k": %s}' % ("9" * 5000)), 400, "bad_json"),
    ("100000 nested arrays", "open", "post", "/search", raw_json('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     400, "bad_json"),
    ("20 nested objects", "open", "post", "/jobs", raw_json('{"urls": ' + '{"a": ' * 20 + "1" + "}" * 20 + "}"),
     400, "bad_json"),
    ("lone surrogate in url", "open", "post", "/search", raw_json('{"url": "http://h/\\ud800.jpg"}'), 400, "bad_json"),
    ("lone surrogate in a key", "open", "post", "/images", raw_json('{"\\udfff": 1}'), 400, "bad_json"),
    ("lone surrogate in label", "open", "post", "/jobs", raw_json('{"urls": ["http://h/x"], "label": "\\udc80"}'),
     400, "bad_json"),
    ("lone surrogate in directory", "open", "post", "/jobs", raw_json('{"directory": "/tmp/\\ud83d"}'), 400, "bad_json"),
    ("JSON string body", "open", "post", "/search", raw_json('"hello"'), 400, "bad_json"),
    ("JSON null body", "open", "post", "/search", raw_json("null"), 400, "bad_json"),
    ("empty JSON body", "open", "post", "/images", raw_json(""), 400, "bad_json"),
    ("bad UTF-8", "open", "post", "/jobs", {"data": b'{"urls": ["\xff"]}', "headers": {"Content-Type": "application/json"}},
     400, "bad_json"),
    ("UTF-8 BOM", "open", "post", "/search", raw_json('\ufeff{"k": 3}'), 400, "bad_json"),
    # labels, checked the same way on every route
    ("images label a dict", "open", "post", "/images", {"json": {"url": "http://h/x", "label": {"a": 1}}}, 400, "bad_label"),
    ("jobs label a dict", "open", "post", "/jobs", {"json": {"urls": ["http://h/x"], "label": {"a": 1}}}, 400, "bad_label"),
    ("jobs label a list", "open", "post", "/jobs", {"json": {"urls": ["http://h/x"], "label": ["x"]}}, 400, "bad_label"),
    ("jobs label 201 characters", "open", "post", "/jobs", {"json": {"urls": ["http://h/x"], "label": "x" * 201}},
     400, "bad_label"),
    ("images label of 5 MB", "open", "post", "/images", {"json": {"url": "http://h/x", "label": "x" * 5_000_000}},
     400, "bad_label"),
    ("form label too long", "open", "post", "/images", {"files": {"file": ("a.jpg", jpeg(PHOTOS, 6))},
                                                         "data": {"label": "y" * 300}}, 400, "bad_label"),
    # wrong types and sizes
    ("k 10**30", "open", "post", "/search", {"json": {"image_id": ID, "k": 10**30}}, 400, "bad_k"),
    ("k 100000", "open", "post", "/search", {"json": {"image_id": ID, "k": 100_000}}, 400, "bad_k"),
    ("k a string", "open", "post", "/search", {"json": {"image_id": ID, "k": "ten"}}, 400, "bad_k"),
    ("url a dict", "open", "post", "/search", {"json": {"url": {"a": 1}}}, 400, "bad_url"),
    ("urls of numbers", "open", "post", "/images", {"json": {"urls": [1, 2]}}, 400, "bad_urls"),
    ("image id of 5000 characters", "open", "post", "/search", {"json": {"image_id": "a" * 5000}}, 404, "not_found"),
    ("job id of 4000 characters", "open", "get", "/jobs/" + "j" * 4000, {}, 404, "not_found"),
    ("image path of 4000 characters", "open", "get", "/images/" + "f" * 4000, {}, 404, "not_found"),
    ("directory with a NUL", "open", "post", "/jobs", {"json": {"directory": "/tmp/a\u0000b"}}, 400, "not_found"),
    ("directory a list", "open", "post", "/jobs", {"json": {"directory": ["/etc"]}}, 400, "bad_directory"),
    ("directory /etc", "open", "post", "/jobs", {"json": {"directory": "/etc"}}, 403, "not_allowed"),
    # query images: bombs refused from their headers, the pixel budget, odd but valid formats answered
    ("PNG bomb query", "open", "post", "/search", query(png_header_only(100_000, 100_000)), 413, "too_large"),
    ("GIF bomb query", "open", "post", "/search", query(gif_bomb()), 413, "too_large"),
    ("TIFF bomb query", "open", "post", "/search", query(tiff_bomb()), 413, "too_large"),
    ("WebP bomb query", "open", "post", "/search", query(webp_bomb()), 413, "too_large"),
    ("JPEG scan bomb query", "open", "post", "/search", query(jpeg_scan_bomb()), 413, "too_large"),
    ("9 MP PNG over the 4 MP query budget", "open", "post", "/search",
     query(encode(Image.new("L", (3000, 3000)), "PNG")), 413, "too_large"),
    ("SVG query", "open", "post", "/search", query(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), 415,
     "unsupported_format"),
    ("truncated JPEG query", "open", "post", "/search", query(_TRUNCATED), 400, "undecodable"),
    ("empty query", "open", "post", "/search", query(b""), 400, "empty"),
    ("16-bit PNG query", "open", "post", "/search", query(_16BIT), 200, None),
    ("CMYK JPEG query", "open", "post", "/search", query(_CMYK), 200, None),
    ("animated GIF query", "open", "post", "/search", query(_gif()), 200, None),
    # methods, hosts and origins (no token configured)
    ("unknown method", "open", "brew", "/search", {}, 405, "method_not_allowed"),
    ("Host of another name (DNS rebinding)", "open", "get", "/index", {"headers": {"Host": "evil.example"}}, 403,
     "bad_host"),
    ("Host with a loopback prefix", "open", "get", "/index", {"headers": {"Host": "localhost.evil.example:80"}}, 403,
     "bad_host"),
    ("cross-site POST", "open", "post", "/images", {"json": {"url": "http://h/x"},
                                                    "headers": {"Origin": "https://evil.example"}}, 403, "bad_origin"),
    ("Origin null", "open", "post", "/jobs", {"json": {"urls": ["http://h/x"]}, "headers": {"Origin": "null"}}, 403,
     "bad_origin"),
    # tokens (the strict gateway): every read needs one, health stays open
    ("index without a token", "strict", "get", "/index", {}, 401, "unauthorized"),
    ("jobs without a token", "strict", "get", "/jobs", {}, 401, "unauthorized"),
    ("thumbnail without a token", "strict", "get", f"/images/{ID}/thumbnail", {}, 401, "unauthorized"),
    ("original without a token", "strict", "get", f"/images/{ID}/content", {}, 401, "unauthorized"),
    ("metrics without a token", "strict", "get", "/../metrics", {}, 401, "unauthorized"),
    ("search without a token", "strict", "post", "/search", {"json": {"image_id": ID}}, 401, "unauthorized"),
    ("write with the read token", "strict", "post", "/index/rebuild", {"headers": READ}, 403, "forbidden"),
    ("healthz without a token", "strict", "get", "/healthz", {}, 200, None),
    ("index with the read token", "strict", "get", "/index", {"headers": READ}, 200, None),
    # URLs to private or reserved addresses, in every spelling (the strict gateway: public URLs only)
    *[(f"SSRF {url}", "strict", "post", "/search", {"json": {"url": url}, "headers": READ}, 400, "blocked_address")
      for url in ("http://[::ffff:0:7f00:1]/x.jpg", "http://[fec0::1]/x.jpg", "http://0.1.2.3/x.jpg",
                  "http://[::127.0.0.1]/x.jpg", "http://[::ffff:10.0.0.1]/x.jpg", "http://169.254.169.254/x",
                  "http://100.64.0.1/x.jpg", "http://198.18.0.1/x.jpg", "http://240.0.0.1/x.jpg",
                  "http://[fd00::1]/x.jpg", "http://[2001:db8::1]/x.jpg", "http://[64:ff9b:1::a00:1]/x.jpg",
                  "http://2130706433/x.jpg", "http://[::ffff:0:0:a00:1]/x.jpg")],
    ("a port outside the allow-list", "strict", "post", "/search",
     {"json": {"url": "http://example.com:22/x.jpg"}, "headers": READ}, 400, "blocked_port"),
]


@pytest.mark.parametrize("name, gateway, method, path, kwargs, status, code", CASES, ids=[c[0] for c in CASES])
def test_hostile_request_gets_its_answer(hostile, name, gateway, method, path, kwargs, status, code):
    base = hostile.open_url if gateway == "open" else hostile.strict_url
    if path == "/../metrics":
        url = base.removesuffix("/api/v1") + "/metrics"
    else:
        url = base + path
    response = requests.request(method.upper(), url, timeout=60, **kwargs)
    assert response.status_code == status, (response.status_code, response.text[:300])
    if status >= 400:
        assert response.headers["Content-Type"] == "application/json", response.text[:200]
        assert code is None or response.json()["error"]["code"] == code, response.json()
    hostile.assert_serving()


def test_thin_images_within_the_limits_are_indexed(hostile):
    """9 x 29999 and 29999 x 9 (sides within 8..30000): indexed, and found by search (was: ingest
    failed them, "unexpected error", on an OpenCV assertion in the keypoint detector)."""
    noise = np.random.default_rng(5).integers(0, 256, (29_999, 9, 3), dtype=np.uint8)
    thin = [encode(Image.fromarray(a), "PNG") for a in (noise, noise.transpose(1, 0, 2).copy())]
    response = hostile.post("/images", files=[("file", (f"thin{n}.png", data)) for n, data in enumerate(thin)])
    job = hostile.job(response.json()["job_id"])
    assert (job["done"], job["failed"]) == (2, 0), job
    hit = hostile.post("/search", files={"file": ("q.png", thin[0])}, data={"k": "1"})
    assert hit.status_code == 200 and hit.json()["results"][0]["id"] == image_id(thin[0]), hit.text
    hostile.assert_serving()


def test_jpeg_scan_bomb_fails_its_item_at_once(hostile):
    """A progressive JPEG of 6000 x 6000 whose 2,000 scans took 11 s to decode (a 64 MB one, most
    of an hour): its item fails with the scan count, the job ends within seconds."""
    started = time.monotonic()
    response = hostile.post("/images", files={"file": ("scans.jpg", jpeg_scan_bomb(6000, 2000))})
    assert response.status_code == 202, response.text
    job = hostile.job(response.json()["job_id"])
    assert (job["state"], job["done"], job["failed"]) == ("done", 0, 1), job
    assert "2006 scans" in job["errors"][0]["error"], job
    assert time.monotonic() - started < 8, job
    hostile.assert_serving()


FORMULA_NAMES = ['=HYPERLINK("http://evil.example","open").jpg', "+1+1.jpg", "-2+3.jpg", "@SUM(A1).jpg",
                 "\tcmd.jpg"]


def test_duplicate_export_csv_starts_no_cell_with_a_formula(hostile):
    """Uploads named like spreadsheet formulas, and a file whose name holds a CR, all
    re-encodings of one photo (an exact duplicate group): in the CSV export each formula-like source
    is text (a quote first), every source reads back whole; the JSON export keeps them as they were."""
    with Image.open(PHOTOS[7]) as im:
        photo = im.convert("RGB").resize((200, 160))
    uploads = [("file", (name, encode(photo, "JPEG", quality=70 + 4 * n))) for n, name in enumerate(FORMULA_NAMES)]
    response = hostile.post("/images", files=uploads)
    assert response.status_code == 202, response.text
    assert hostile.job(response.json()["job_id"])["done"] == len(FORMULA_NAMES)
    folder = hostile.root / "formulas" / uuid.uuid4().hex  # a CR inside a name: was written unquoted
    folder.mkdir(parents=True)
    (folder / "carriage\rreturn.jpg").write_bytes(encode(photo, "JPEG", quality=97))
    assert hostile.job(hostile.post("/jobs", json={"directory": str(folder)}).json()["job_id"])["done"] == 1
    scan = hostile.post("/duplicates/scan", json={})
    assert hostile.job(scan.json()["job_id"])["state"] == "done"
    rows = hostile.get("/duplicates/export?format=json").json()["rows"]
    table = list(csv.DictReader(io.StringIO(hostile.get("/duplicates/export?format=csv").text)))
    assert set(FORMULA_NAMES) <= {row["source"] for row in rows}
    assert [row["image_id"] for row in table] == [row["image_id"] for row in rows]
    for row, line in zip(rows, table):
        assert not line["source"].startswith(("=", "+", "-", "@", "\t", "\r")), line
        assert line["source"] in (row["source"] or "", "'" + (row["source"] or "")), (line, row)
    hostile.assert_serving()


def shapes(seed: int) -> Image.Image:
    """A picture no other test indexes (so no other image joins its duplicate group): coloured
    rectangles and ellipses on grey."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (200, 160), (128, 128, 128))
    draw = ImageDraw.Draw(im)
    for _ in range(25):
        x, y = rng.integers(0, 180), rng.integers(0, 140)
        box = (int(x), int(y), int(x + rng.integers(10, 60)), int(y + rng.integers(10, 60)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour)
    return im


def test_concurrent_resolves_that_keep_different_images_never_delete_the_whole_group(hostile):
    """Eight resolves of one group at once, each keeping another member (or a rule's pick) and
    deleting the others: one runs at a time (the others 409 `resolving`, or 400 `bad_keep` once their
    choice is gone, or 503 `busy` for a slot), so the group keeps at least one image and every image
    its `keep` names exists. Was: each checked its keeper while it still existed, then all deleted."""
    uploads = [("file", (f"race{n}.jpg", encode(shapes(seed=11), "JPEG", quality=62 + 6 * n))) for n in range(4)]
    response = hostile.post("/images", files=uploads)
    ids = {answer["id"] for answer in response.json()["images"]}
    assert hostile.job(response.json()["job_id"])["done"] == 4
    assert hostile.job(hostile.post("/duplicates/scan", json={}).json()["job_id"])["state"] == "done"
    group = next(g for g in hostile.get("/duplicates?limit=200").json()["groups"]
                 if {im["id"] for im in g["images"]} == ids)
    bodies = [{"keep": [member], "delete_others": True} for member in sorted(ids)] + \
        [{"rule": rule, "delete_others": True} for rule in ("oldest", "newest", "most_pixels", "largest_file")]
    url = f"/duplicates/{group['group_id']}/resolve"
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda body: hostile.post(url, json=body), bodies))
    assert any(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code != 200} <= {"resolving", "bad_keep", "busy"}
    final = hostile.get(f"/duplicates/{group['group_id']}").json()
    alive = {im["id"] for im in final["images"] if not im["deleted"]}
    assert alive and set(final["keep"]) <= alive, final
    assert all(hostile.get(f"/images/{i}").status_code == (200 if i in alive else 404) for i in ids)
    hostile.assert_serving()


# ------------------------------------------------------------------------- archives that cannot hurt

@pytest.mark.parametrize("name, make, code, phrase", [
    ("pax.tar.bz2", pax_header_bomb, "archive_too_large", "extended header"),
    ("million.zip", million_entry_zip, "too_many_members", "more than 100 members"),
])
def test_archive_bombs_fail_their_job_with_worker_memory_bounded(hostile, name, make, code, phrase):
    """6 GiB of pax header in 8 KB of bz2, and a zip of a million directory entries (51 MB): the
    job fails at once, the worker's peak RSS grows by less than 100 MiB and stays under 600 MiB."""
    data = make()
    _, peak_before = hostile.worker_memory_mb()
    started = time.monotonic()
    job = hostile.archive_job(name, data)
    rss, peak = hostile.worker_memory_mb()
    print(f"{name} ({len(data):,} bytes): worker RSS {rss:.0f} MiB, peak {peak_before:.0f} -> {peak:.0f} MiB")
    assert job["state"] == "failed" and phrase in job["errors"][0]["error"], job
    assert time.monotonic() - started < 30
    assert peak - peak_before < 100 and peak < 600, (peak_before, peak, rss)
    hostile.assert_serving()


@pytest.mark.parametrize("name, make, phrase", [
    ("longname.tar.bz2", gnu_long_name_bomb, "extended header"),
    # 100 MiB in a member that is not even an image: its bytes count against the 8 MiB limit
    ("skipped.tar.gz", lambda: tar_bytes([(member("notes.txt"), bytes(100 * 2**20)), (member("a.jpg"), b"x")],
                                         "w:gz"), "total size limit"),
    ("sparse.tar", lambda: tar_bytes([(member("a.jpg", tarfile.GNUTYPE_SPARSE), b"")]), "sparse"),
    ("concatenated.tar.gz", concatenated_gzip_tar, "total size limit"),  # 4 gzip members of 3 MiB
])
def test_archive_limits_count_every_byte(hostile, name, make, phrase):
    job = hostile.archive_job(name, make())
    assert job["state"] == "failed" and phrase in job["errors"][0]["error"], job
    hostile.assert_serving()


def test_archive_members_fail_one_by_one(hostile):
    good = [jpeg(PHOTOS) for _ in range(3)]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", good[0])
    link = zipfile.ZipInfo("cats/link.jpg")
    link.external_attr = 0o120777 << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, data in enumerate(good):
            zf.writestr(f"cats/{i}.jpg", data)
        zf.writestr("../slip.jpg", good[0])
        zf.writestr("/abs.jpg", good[0])
        zf.writestr(link, "/etc/passwd")
        zf.writestr("cats/inner.zip", inner.getvalue())
        zf.writestr("cats/text.jpg", b"not an image at all" * 10)
        zf.writestr("cats/bomb.png", png_header_only(100_000, 100_000))
    job = hostile.archive_job("mixed.zip", buf.getvalue())
    errors = {e["item"].removeprefix("mixed.zip:"): e["error"] for e in job["errors"]}
    assert set(errors) == {"../slip.jpg", "/abs.jpg", "cats/link.jpg", "cats/inner.zip", "cats/text.jpg",
                           "cats/bomb.png"}, errors
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 9, 3, 6), job
    assert_indexed(hostile, good)
    hostile.assert_serving()


def test_tar_links_devices_and_undecodable_names(hostile):
    good, odd = jpeg(PHOTOS), jpeg(PHOTOS)
    odd_name = b"cats/caf\xe9-\xff.jpg".decode("utf-8", "surrogateescape")  # not UTF-8 on disk
    members = [(member("cats/ok.jpg"), good), (member(odd_name), odd),
               (member("cats/sym.jpg", tarfile.SYMTYPE, "/etc/passwd"), None),
               (member("cats/hard.jpg", tarfile.LNKTYPE, "cats/ok.jpg"), None),
               (member("cats/fifo.jpg", tarfile.FIFOTYPE), None), (member("cats/dev.jpg", tarfile.CHRTYPE), None)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    job = hostile.archive_job("links.tar", buf.getvalue())
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 6, 2, 4), job
    assert_indexed(hostile, [good, odd])
    source = hostile.get(f"/images/{image_id(odd)}").json()["source"]
    assert source == "links.tar:cats/caf\ufffd-\ufffd.jpg"  # shown with replacement characters
    hostile.assert_serving()


# --------------------------------------------------------------------------- a job always ends

def test_directory_fifos_odd_names_and_a_failing_write(hostile):
    root = hostile.root / "dir-job"
    (root / "cats").mkdir(parents=True)
    good, odd, unwritable = jpeg(PHOTOS), jpeg(PHOTOS), jpeg(PHOTOS)
    taken = {image_id(d)[:2] for d in (good, odd)}
    while image_id(unwritable)[:2] in taken or files.original_path(hostile.settings.data_dir,
                                                                    image_id(unwritable)).parent.exists():
        unwritable = jpeg(PHOTOS)
    (root / "cats" / "good.jpg").write_bytes(good)
    with open(os.path.join(os.fsencode(root / "cats"), b"\xff\xfe-odd.jpg"), "wb") as f:  # not UTF-8
        f.write(odd)
    os.mkfifo(root / "cats" / "pipe.jpg")  # reading it would block for ever
    (root / "cats" / "unwritable.jpg").write_bytes(unwritable)
    # Writing this image's original fails (its folder is a file): that item fails, the rest go on.
    blocker = files.original_path(hostile.settings.data_dir, image_id(unwritable)).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")
    try:
        response = hostile.post("/jobs", json={"directory": str(root)})
        job = hostile.job(response.json()["job_id"])
    finally:
        blocker.unlink()
    errors = {os.path.basename(e["item"]): e["error"] for e in job["errors"]}
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 4, 2, 2), job
    assert "not a regular file" in errors["pipe.jpg"] and "NotADirectoryError" in errors["unwritable.jpg"]
    assert_indexed(hostile, [good, odd])
    record = hostile.get(f"/images/{image_id(unwritable)}")
    assert record.status_code == 404 or record.json()["status"] == "failed"  # never left pending
    hostile.assert_serving()


class Secret(QuietHandler):
    body = b""

    def do_GET(self):
        if self.path.startswith("/photo.jpg?"):
            self.send(200, self.body, Content_Type="image/jpeg")
        else:
            self.send_error(404)


def test_url_sources_never_show_credentials_or_query_strings(hostile):
    Secret.body = jpeg(PHOTOS)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Secret)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://me:pw-s3cret@127.0.0.1:{server.server_port}"
    try:
        response = hostile.post("/jobs", json={"urls": [f"{base}/photo.jpg?X-Amz-Signature=sig-s3cret",
                                                        f"{base}/gone.jpg?token=tok-s3cret"]})
        job = hostile.job(response.json()["job_id"])
    finally:
        server.shutdown()
        server.server_close()
    assert (job["done"], job["failed"]) == (1, 1), job
    record = hostile.get(f"/images/{image_id(Secret.body)}").json()
    shown = json.dumps([record, job])
    assert "s3cret" not in shown and "me:" not in shown, shown
    assert record["source"] == f"http://127.0.0.1:{server.server_port}/photo.jpg"
    hostile.assert_serving()


def assert_indexed(hostile, datas) -> None:
    for data in datas:
        record = hostile.get(f"/images/{image_id(data)}").json()
        assert record.get("status") == "indexed", record


# ---------------------------------------------------------------------------- the gateway stays up

def test_slow_request_bodies_are_cut_off(hostile):
    """A client dribbling its body a byte at a time gets 408 at the 2 s body deadline."""
    host, port = hostile.open_url.split("//")[1].split("/")[0].split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        for _ in range(3):  # a few bytes, then nothing: the server must not wait for the rest
            time.sleep(0.3)
            sock.sendall(b" ")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer and time.monotonic() - started < 5
    hostile.assert_serving()


class Slow(QuietHandler):
    def do_GET(self):
        time.sleep(1.8)
        self.send(404)


def test_expensive_requests_beyond_the_slots_get_503_with_retry_after(hostile):
    """Two slots per process: of four slow searches at once, those that find none within a
    second are answered 503 with Retry-After; the others run."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/slow.jpg"
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: hostile.post("/search", json={"url": url}), range(4)))
    finally:
        server.shutdown()
        server.server_close()
    busy = [a for a in answers if a.status_code == 503]
    assert busy and all(a.json()["error"]["code"] == "busy" and a.headers["Retry-After"] for a in busy)
    assert sum(a.status_code == 400 for a in answers) >= 2  # the ones that ran: the URL answered 404
    hostile.assert_serving()
