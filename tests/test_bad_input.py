"""A corpus of bad input, generated here, sent through the real service: the gateway's API and bulk
jobs run by a real worker. Every bad item gets a clear 4xx (request-level) or a per-item error in its
job, and the good items of the same job are indexed.

Unit-level coverage of the same code lives in test_images.py (decoding), test_sources.py (URLs,
directories, archives) and test_gateway.py (a first set of search errors).
"""
from __future__ import annotations

import http.server
import io
import os
import struct
import tarfile
import threading
import time
import warnings
import zipfile
import zlib
from dataclasses import replace
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from gateway import create_app
from services.store import Store, image_id
from tests.conftest import QuietHandler, free_port, imagenet_photos
from tests.test_sources import make_tar
from tests.workers import wait_for_job

MODEL_KEY = "effnet_lite0:1"
MAX_UPLOAD_MB = 2


# ------------------------------------------------------------------------------------ the corpus

def small_photo(path, side: int = 256) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    return im


def encode(im: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height: a decompression bomb is refused from its header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat)))


def good_images(photos) -> dict[str, bytes]:
    """Unusual but valid images: each must be indexed. Distinct photos, so no two are duplicates."""
    gif_frames = [small_photo(photos[3], 160), small_photo(photos[4], 160)]
    gif = io.BytesIO()
    gif_frames[0].save(gif, "GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    gradient = (np.linspace(0, 65535, 96 * 96).reshape(96, 96)).astype(np.uint16)
    palette = small_photo(photos[2]).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return {
        "plain.jpg": encode(small_photo(photos[6])),
        "cmyk.jpg": encode(small_photo(photos[1]).convert("CMYK")),
        "16bit.png": encode(Image.fromarray(gradient), "PNG"),
        "palette_transparent.png": encode(palette, "PNG", transparency=0),
        "animated.gif": gif.getvalue(),
        "exif_rotated.jpg": encode(small_photo(photos[5]), exif=exif),
        "progressive.jpg": encode(small_photo(photos[7]), progressive=True),
        "grey.webp": encode(small_photo(photos[8]).convert("L"), "WEBP"),
    }


def bad_images(photos) -> dict[str, tuple[bytes, str]]:
    """Bad files, each with a phrase its error message must contain."""
    jpeg = encode(small_photo(photos[0]))
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[:len(jpeg) // 2], "truncated"),
        "text.jpg": (b"just some text, named like a photo\n" * 20, "not a recognised image"),
        "random.png": (os.urandom(3000), "not a recognised image"),
        "bomb.png": (png_header_only(100_000, 100_000), "MP"),
        "huge_side.png": (encode(Image.new("L", (40_000, 8)), "PNG"), "pixels a side"),
        "tiny.png": (encode(Image.new("RGB", (4, 4)), "PNG"), "at least"),
        "vector.png": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
                       "SVG images are not supported"),
        "phone.jpg": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(200), "HEIF images are not supported"),
        "doc.jpg": (b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n" + bytes(100), "PDF images are not supported"),
    }


# --------------------------------------------------------------------------- the deployment

class Files(QuietHandler):
    """Serves the URL corpus: good images, errors, slow, endless and redirecting answers."""
    routes: ClassVar[dict] = {}

    def do_GET(self):
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
        elif callable(route):
            route(self)
        else:
            self.send(200, route, Content_Type="image/jpeg")


def redirect(to):
    def answer(handler):
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


def status(code):
    return lambda handler: handler.send_error(code)


def endless(handler):
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.end_headers()
    chunk = b"\xff" * 65536
    try:
        while True:
            handler.wfile.write(chunk)
    except OSError:
        pass


def slow(handler):
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    try:
        for _ in range(1000):
            handler.wfile.write(b"x")
            handler.wfile.flush()
            time.sleep(0.3)
    except OSError:
        pass


def silent(handler):
    time.sleep(5)  # accepts, never answers


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients hang up on slow and endless answers on purpose


DEPLOYMENT = {"max_upload_mb": MAX_UPLOAD_MB, "url_timeout_s": 2, "max_urls_per_job": 40,
              "max_archive_members": 60, "max_archive_mb": 6, "ingest_chunk": 4, "worker_concurrency": 3}


@pytest.fixture(scope="module")
def files_url():
    """The base URL of a local server of good, bad, slow and endless answers (`Files`)."""
    server = Server(("127.0.0.1", 0), Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def finished(deployment, job_id: str) -> dict:
    settings, worker = deployment.settings, deployment.worker
    return wait_for_job(Store.from_settings(settings), job_id, timeout_s=60, workers=[worker])


def assert_indexed(deployment, datas) -> None:
    store = Store.from_settings(deployment.settings)
    ids = [image_id(d) for d in datas]
    records = store.get_images(ids)
    assert all(r and r["status"] == "indexed" for r in records), records
    found, _ = store.get_vectors(MODEL_KEY, ids)
    assert sorted(found) == sorted(ids)


def error_map(job: dict, prefix: str = "") -> dict[str, str]:
    return {e["item"].removeprefix(prefix): e["error"] for e in job["errors"]}


# ------------------------------------------------------------------------------ bulk jobs

def test_archive_job_mixing_good_and_bad_members(client, deployment, photos):
    good = good_images(photos)
    bad = bad_images(photos)
    link = zipfile.ZipInfo("cats/link.jpg")
    link.external_attr = 0o120777 << 16
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", good["plain.jpg"])
    members = [(f"cats/{n}", d) for n, d in good.items()] + [(f"dogs/{n}", d) for n, (d, _) in bad.items()]
    members += [("cats/same_bytes_again.jpg", good["plain.jpg"]),   # duplicate content
                ("cats/twice.jpg", encode(small_photo(photos[9]))),  # duplicate member name...
                ("cats/twice.jpg", encode(small_photo(photos[10]))),  # ...with other content
                ("../slip.jpg", good["plain.jpg"]), ("/etc/abs.jpg", good["plain.jpg"]),
                ("cats/inner.zip", inner.getvalue()), ("notes.txt", b"n"), ("__MACOSX/cats/._a.jpg", b"m")]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for name, data in members:
            zf.writestr(zipfile.ZipInfo(name), data)
        zf.writestr(link, "/etc/passwd")
        with zf.open("dogs/zip_bomb.jpg", "w") as bomb:  # 3 MiB of zeros, above the 2 MiB item limit
            for _ in range(48):
                bomb.write(bytes(65536))
    assert archive.tell() < 400_000  # below the test client's spooling size, and the upload limit
    response = client.post("/api/v1/jobs", data={"archive": (io.BytesIO(archive.getvalue()), "corpus.zip")},
                           content_type="multipart/form-data")
    assert response.status_code == 202, response.json
    job = finished(deployment, response.json["job_id"])
    errors = error_map(job, "corpus.zip:")
    expected = {f"dogs/{n}": phrase for n, (_, phrase) in bad.items()} | {
        "../slip.jpg": "escapes", "/etc/abs.jpg": "absolute path", "cats/inner.zip": "archives inside archives",
        "notes.txt": "not an image", "__MACOSX/cats/._a.jpg": "not an image", "cats/link.jpg": "links",
        "dogs/zip_bomb.jpg": "limit"}
    assert set(errors) == set(expected), errors
    for item, phrase in expected.items():
        assert phrase in errors[item], (item, errors[item])
    n_good = len(good) + 3
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", n_good + len(expected), n_good,
                                                                       len(expected)), job
    assert_indexed(deployment, [*good.values(), encode(small_photo(photos[9])), encode(small_photo(photos[10]))])


def test_tar_job_with_links_devices_and_slip(client, deployment, photos, tmp_path):
    def special(name, kind, linkname=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        return info
    ok = encode(small_photo(photos[11]))
    archive = make_tar(tmp_path / "evil.tgz", {"cats/ok.jpg": ok, "../../up.jpg": ok, "/abs.jpg": ok},
                       special=[special("cats/out.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                                special("cats/hard.jpg", tarfile.LNKTYPE, "cats/ok.jpg"),
                                special("cats/fifo.jpg", tarfile.FIFOTYPE),
                                special("cats/dev.jpg", tarfile.CHRTYPE)])
    response = client.post("/api/v1/jobs", data={"archive": (io.BytesIO(archive.read_bytes()), "evil.tgz")},
                           content_type="multipart/form-data")
    job = finished(deployment, response.json["job_id"])
    assert (job["state"], job["done"], job["failed"]) == ("done", 1, 6), job
    assert set(error_map(job, "evil.tgz:")) == {"../../up.jpg", "/abs.jpg", "cats/out.jpg", "cats/hard.jpg",
                                                "cats/fifo.jpg", "cats/dev.jpg"}
    assert_indexed(deployment, [ok])


def many_members(count: int, size: int = 1) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(count):
            zf.writestr(f"c/{i}.jpg", bytes(size))
    return buf.getvalue()


@pytest.mark.parametrize("name, make, phrase", [
    ("text.zip", lambda tmp: b"this is not an archive\n" * 50, "not a zip or tar"),
    ("truncated.zip", lambda tmp: many_members(10)[:300], "corrupt, truncated"),
    ("random.tar.gz", lambda tmp: b"\x1f\x8b" + os.urandom(2000), "corrupt, truncated"),
    ("too_many.zip", lambda tmp: many_members(61), "more than 60 members"),
    ("bomb.zip", lambda tmp: many_members(4, 1_800_000), "total size"),  # each under the item limit
])
def test_archive_job_refused_as_a_whole(client, deployment, tmp_path, name, make, phrase):
    data = make(tmp_path)
    response = client.post("/api/v1/jobs", data={"archive": (io.BytesIO(data), name)},
                           content_type="multipart/form-data")
    assert response.status_code == 202
    job = finished(deployment, response.json["job_id"])
    assert job["state"] == "failed" and job["errors"][0]["item"] is None
    assert phrase in job["errors"][0]["error"], job


def test_url_job_mixing_good_and_bad_urls(client, deployment, photos, files_url):
    base = files_url
    good = {f"/good/{i}.jpg": encode(small_photo(photos[12 + i])) for i in range(3)}
    bad = bad_images(photos)
    big = bytes(3 * 2**20)
    Files.routes.update(good)
    Files.routes.update({f"/bad/{n}": d for n, (d, _) in bad.items()})
    Files.routes.update({
        "/500": status(500), "/big": big, "/endless": endless, "/slow": slow, "/silent": silent,
        "/loop": redirect("/loop"), "/to-file": redirect("file:///etc/passwd"),
        "/to-good": redirect("/good/0.jpg"), "/to-gopher": redirect("gopher://127.0.0.1/x")})
    dead_port = free_port()
    expected = {f"{base}/bad/{n}": phrase for n, (_, phrase) in bad.items()} | {
        f"{base}/missing.jpg": "HTTP 404", f"{base}/500": "HTTP 500", f"{base}/big": "more than the limit",
        f"{base}/endless": "more than the limit", f"{base}/slow": "time limit", f"{base}/silent": "time limit",
        f"{base}/loop": "redirects", f"{base}/to-file": "only http and https",
        f"{base}/to-gopher": "only http and https", "file:///etc/passwd": "only http and https",
        "ftp://127.0.0.1/x.jpg": "only http and https", "not a url": "only http and https",
        "http://": "not a valid URL", "http://host.invalid/x.jpg": "cannot resolve",
        f"http://127.0.0.1:{dead_port}/x.jpg": "request failed",
        f"{base}/bad url with spaces.jpg": "not a valid URL"}
    good_urls = [f"{base}{p}" for p in good] + [f"{base}/to-good"]
    urls = good_urls + list(expected) + [good_urls[1]]  # the same URL twice
    response = client.post("/api/v1/jobs", json={"urls": urls})
    assert response.status_code == 202, response.json
    job = finished(deployment, response.json["job_id"])
    errors = error_map(job)
    assert set(errors) == set(expected), errors
    for item, phrase in expected.items():
        assert phrase in errors[item], (item, errors[item])
    assert job["state"] == "done" and job["failed"] == len(expected), job
    assert job["done"] == len(good_urls) + 1 and job["total"] == len(urls)
    assert_indexed(deployment, good.values())


def test_uploads_mixing_good_and_bad_files(client, deployment, photos):
    good = encode(small_photo(photos[13]))
    bad = bad_images(photos)
    files = [(io.BytesIO(good), "good.jpg"), (io.BytesIO(good), "good_again.jpg")]
    files += [(io.BytesIO(d), n) for n, (d, _) in bad.items()]
    response = client.post("/api/v1/images", data={"file": files}, content_type="multipart/form-data")
    assert response.status_code == 202, response.json
    answers = {a["filename"]: a for a in response.json["images"]}
    # refused at once when the first bytes say it is no image we take; the rest fail in the job
    rejected = {n for n, a in answers.items() if a["status"] == "rejected"}
    assert rejected == {"empty.jpg", "text.jpg", "random.png", "vector.png", "phone.jpg", "doc.jpg"}
    assert all(answers[n]["error"] for n in rejected)
    job = finished(deployment, response.json["job_id"])
    assert (job["state"], job["done"]) == ("done", 2), job
    failed = {e["item"].split(":", 1)[1]: e["error"] for e in job["errors"]}
    assert set(failed) == {"truncated.jpg", "bomb.png", "huge_side.png", "tiny.png"}
    for name, message in failed.items():
        assert bad[name][1] in message
    assert_indexed(deployment, [good])


def test_directory_jobs_stay_inside_the_allowed_roots(client, deployment, photos, tmp_path_factory):
    settings, root = deployment.settings, deployment.tmp
    outside = tmp_path_factory.mktemp("outside")
    secret = encode(small_photo(photos[15]))
    (outside / "secret.jpg").write_bytes(secret)
    tree = root / "tree" / "cats"
    tree.mkdir(parents=True)
    inside = encode(small_photo(photos[14]))
    (tree / "inside.jpg").write_bytes(inside)
    (tree / "out.jpg").symlink_to(outside / "secret.jpg")   # a file symlinked out: not listed
    (root / "tree" / "elsewhere").symlink_to(outside, target_is_directory=True)  # a folder: not entered
    (root / "file.jpg").write_bytes(inside)
    for directory, status, code in [
            ("/etc", 403, "not_allowed"), (str(root / ".." / ".."), 403, "not_allowed"),
            (str(root / "tree" / "elsewhere"), 403, "not_allowed"), (str(outside), 403, "not_allowed"),
            (str(root / "missing"), 400, "not_found"), (str(root / "file.jpg"), 400, "not_found"),
            ("", 400, "bad_directory"), (5, 400, "bad_directory"), (["/etc"], 400, "bad_directory")]:
        response = client.post("/api/v1/jobs", json={"directory": directory})
        assert (response.status_code, response.json["error"]["code"]) == (status, code), directory
    response = client.post("/api/v1/jobs", json={"directory": str(root / "tree")})
    job = finished(deployment, response.json["job_id"])
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 1, 1, 0), job
    assert_indexed(deployment, [inside])
    assert Store.from_settings(settings).get_image(image_id(secret)) is None


# ---------------------------------------------------------------------- request-level errors

def multipart(**files):
    return {"data": {k: (io.BytesIO(v), k + ".bin") for k, v in files.items()},
            "content_type": "multipart/form-data"}


def search_file(data: bytes, name="q.jpg", **form):
    return {"data": {"file": (io.BytesIO(data), name), **form}, "content_type": "multipart/form-data"}


def request_cases(photos):
    bad = bad_images(photos)
    query = encode(small_photo(photos[0]))
    status = {"empty.jpg": (400, "empty"), "truncated.jpg": (400, "undecodable"), "text.jpg": (400, "undecodable"),
              "random.png": (400, "undecodable"), "bomb.png": (413, "too_large"),
              "huge_side.png": (413, "too_large"), "tiny.png": (400, "too_small"),
              "vector.png": (415, "unsupported_format"), "phone.jpg": (415, "unsupported_format"),
              "doc.jpg": (415, "unsupported_format")}
    cases = [(f"search {n}", "post", "/api/v1/search", search_file(d, n), *status[n]) for n, (d, _) in bad.items()]
    cases += [(f"search k={k!r}", "post", "/api/v1/search", {"json": {"image_id": "0" * 64, "k": k}}, 400, "bad_k")
              for k in (0, -1, 101, 10**30, "ten", 2.5, True, None, [3], {"k": 1})]
    cases += [
        ("search k in form", "post", "/api/v1/search", search_file(query, k="lots"), 400, "bad_k"),
        ("search k in query", "post", "/api/v1/search?k=0", {"json": {"image_id": "0" * 64}}, 400, "bad_k"),
        ("search unknown id", "post", "/api/v1/search", {"json": {"image_id": "f" * 64}}, 404, "not_found"),
        ("search junk id", "post", "/api/v1/search", {"json": {"image_id": "../../etc"}}, 404, "not_found"),
        ("search numeric id", "post", "/api/v1/search", {"json": {"image_id": 12}}, 404, "not_found"),
        ("search nothing", "post", "/api/v1/search", {"json": {}}, 400, "no_query"),
        ("search wrong field", "post", "/api/v1/search", multipart(image=query), 400, "no_query"),
        ("search malformed json", "post", "/api/v1/search",
         {"data": '{"k": 3', "content_type": "application/json"}, 400, "bad_json"),
        ("search json array", "post", "/api/v1/search", {"json": [1, 2]}, 400, "bad_json"),
        ("search json string", "post", "/api/v1/search", {"json": "hello"}, 400, "bad_json"),
        ("search bad utf-8", "post", "/api/v1/search",
         {"data": b'{"url": "\xff\xfe"}', "content_type": "application/json"}, 400, "bad_json"),
        ("search multipart without boundary", "post", "/api/v1/search",
         {"data": b"--x\r\nnothing", "content_type": "multipart/form-data"}, 400, None),
        ("search malformed multipart", "post", "/api/v1/search",
         {"data": b"--zz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nunterminated",
          "content_type": "multipart/form-data; boundary=zz"}, 400, None),
        ("search oversized upload", "post", "/api/v1/search",
         {"data": bytes(3 * 2**20), "content_type": "multipart/form-data; boundary=zz"}, 413, None),
        ("search url not a string", "post", "/api/v1/search", {"json": {"url": ["http://x"]}}, 400, "bad_url"),
        ("images nothing", "post", "/api/v1/images", {"json": {}}, 400, "no_images"),
        ("images only bad files", "post", "/api/v1/images", multipart(file=b"no image"), 415, "no_valid_image"),
        ("images empty file", "post", "/api/v1/images", multipart(file=b""), 400, "no_valid_image"),
        ("images urls empty", "post", "/api/v1/images", {"json": {"urls": []}}, 400, "bad_urls"),
        ("images urls not a list", "post", "/api/v1/images", {"json": {"urls": "http://x"}}, 400, "bad_urls"),
        ("images url not a string", "post", "/api/v1/images", {"json": {"url": 3}}, 400, "bad_urls"),
        ("images too many urls", "post", "/api/v1/images",
         {"json": {"urls": [f"http://h/{i}.jpg" for i in range(41)]}}, 400, "too_many_urls"),
        ("images label too long", "post", "/api/v1/images", {"json": {"url": "http://h/x", "label": "x" * 201}},
         400, "bad_label"),
        ("images label not a string", "post", "/api/v1/images", {"json": {"url": "http://h/x", "label": 7}},
         400, "bad_label"),
        ("jobs nothing", "post", "/api/v1/jobs", {"json": {"nothing": 1}}, 400, "no_job"),
        ("jobs empty archive", "post", "/api/v1/jobs", multipart(archive=b""), 400, "empty_archive"),
        ("jobs too many urls", "post", "/api/v1/jobs", {"json": {"urls": ["http://h/x"] * 41}}, 400,
         "too_many_urls"),
        ("jobs bad limit", "get", "/api/v1/jobs?limit=x", {}, 400, "bad_limit"),
        ("unknown job", "get", "/api/v1/jobs/" + "0" * 32, {}, 404, "not_found"),
        ("unknown image", "get", "/api/v1/images/" + "0" * 64, {}, 404, "not_found"),
        ("junk image id", "get", "/api/v1/images/xyz", {}, 404, "not_found"),
        ("unknown thumbnail", "get", "/api/v1/images/" + "0" * 64 + "/thumbnail", {}, 404, "not_found"),
        ("unknown content", "get", "/api/v1/images/" + "0" * 64 + "/content", {}, 404, "not_found"),
        ("delete unknown", "delete", "/api/v1/images/" + "0" * 64, {}, 404, "not_found"),
        ("wrong method", "put", "/api/v1/search", {}, 405, "method_not_allowed"),
    ]
    return cases


CASES = request_cases(imagenet_photos())


@pytest.mark.parametrize("name, method, path, kwargs, status, code", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_4xx(client, name, method, path, kwargs, status, code):
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.is_json and set(response.json["error"]) == {"code", "message"}
    assert response.json["error"]["message"]
    assert code is None or response.json["error"]["code"] == code


URL_TRICKS = [
    "http://127.0.0.1/x.jpg", "http://localhost/x.jpg", "http://127.1/x.jpg", "http://2130706433/x.jpg",
    "http://0x7f000001/x.jpg", "http://0177.0.0.1/x.jpg", "http://0.0.0.0/x.jpg", "http://[::1]/x.jpg",
    "http://[::ffff:127.0.0.1]/x.jpg", "http://[64:ff9b::7f00:1]/x.jpg", "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/x.jpg", "http://10.0.0.1/x.jpg", "http://172.16.5.4/x.jpg", "http://192.168.1.1/x.jpg",
    "http://100.64.0.1/x.jpg", "http://[fc00::1]/x.jpg", "http://224.0.0.1/x.jpg",
    "http://user:hunter2@127.0.0.1:8080/x.jpg",
]


@pytest.mark.parametrize("url", URL_TRICKS)
def test_url_tricks_are_refused(deployment, url):
    settings = deployment.settings
    app = create_app({"SETTINGS": replace(settings, allow_private_urls=False), "TESTING": True})
    response = app.test_client().post("/api/v1/search", json={"url": url})
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "blocked_address"
    assert "hunter2" not in response.json["error"]["message"]


@pytest.mark.parametrize("url, code", [
    ("file:///etc/passwd", "bad_url"), ("ftp://example.com/x.jpg", "bad_url"), ("gopher://127.0.0.1/", "bad_url"),
    ("data:image/png;base64,iVBORw0KGgo=", "bad_url"), ("javascript:alert(1)", "bad_url"),
    ("http://", "bad_url"), ("http://[::1/x", "bad_url"), ("http://example.com:99999/", "bad_url"),
])
def test_url_schemes_and_malformed_urls_are_refused(client, url, code):
    response = client.post("/api/v1/search", json={"url": url})
    assert response.status_code == 400 and response.json["error"]["code"] == code, response.json
