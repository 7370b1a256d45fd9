"""Property-based hostile input (Hypothesis) against the running stack of tests/hostile.py: file
names, archive layouts, URL strings and JSON bodies are generated, sent over HTTP, and one
invariant is checked for each: the request is answered below 500, and a job it starts ends within
a bounded time with every item counted, `done + failed == total` (`done` includes duplicates).

Derandomized and bounded (25 examples a property), so the suite stays reproducible and short.
"""
from __future__ import annotations

import http.server
import io
import json
import os
import socket
import tarfile
import threading
import uuid
import zipfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.provisional import urls

from tests.conftest import QuietHandler, imagenet_photos
from tests.hostile import jpeg, member

PHOTOS = imagenet_photos()
EXAMPLES = 25
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))
JOB_BOUND_S = 60

NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
PATHS = st.lists(st.one_of(NAMES, st.sampled_from(["..", ".", "", "/", "\\", "C:", "__MACOSX", "._x"])),
                 min_size=1, max_size=4).map("/".join)
SUFFIXES = st.sampled_from([".jpg", ".PNG", ".jpeg", ".txt", ".zip", "", ".tar.gz"])
KINDS = st.sampled_from(["good", "good", "bad", "empty", "dir", "symlink", "hardlink", "fifo"])


def assert_job_ends(hostile, response, total: int | None = None) -> dict | None:
    """The invariant: an answer below 500; a job, if one started, ends with every item counted."""
    assert response.status_code < 500, response.text[:300]
    if response.status_code != 202:
        assert response.headers["Content-Type"] == "application/json"
        return None
    job = hostile.job(response.json()["job_id"], timeout_s=JOB_BOUND_S)
    if job["state"] == "failed" and job["total"] in (None, 0):  # refused as a whole
        assert job["errors"] and job["errors"][0]["item"] is None, job
        return job
    assert job["done"] + job["failed"] == job["total"], job
    assert total is None or job["total"] == total, (total, job)
    return job


def build_archive(container: str, layout: list[tuple[str, str, str]]) -> bytes:
    def data(kind):
        return {"good": jpeg(PHOTOS), "bad": os.urandom(300), "empty": b""}.get(kind, b"")
    buf = io.BytesIO()
    if container == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for path, suffix, kind in layout:
                info = zipfile.ZipInfo(path + suffix + ("/" if kind == "dir" else ""))
                if kind == "symlink":
                    info.external_attr = 0o120777 << 16
                zf.writestr(info, data(kind) if kind != "symlink" else "/etc/passwd")
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode={"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2"}[container],
                      format=tarfile.PAX_FORMAT) as tf:
        for path, suffix, kind in layout:
            special = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                       "fifo": tarfile.FIFOTYPE}.get(kind)
            info = member(path + suffix, special or tarfile.REGTYPE, "/etc/passwd" if special else "")
            body = None if special else data(kind)
            if body is not None:
                info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


@BOUNDED
@given(container=st.sampled_from(["zip", "tar", "tar.gz", "tar.bz2"]),
       layout=st.lists(st.tuples(PATHS, SUFFIXES, KINDS), min_size=1, max_size=8))
def test_any_archive_layout_ends_with_every_member_counted(hostile, container, layout):
    archive = build_archive(container, layout)
    response = hostile.post("/jobs", files={"archive": (f"gen.{container}", archive)})
    if response.status_code == 400:  # an empty archive (zero bytes) is refused at once
        assert response.json()["error"]["code"] == "empty_archive"
        return
    assert_job_ends(hostile, response)


FILE_NAMES = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b
                                                       and b not in (b".", b".."))


@BOUNDED
@given(files=st.lists(st.tuples(FILE_NAMES, st.sampled_from([b".jpg", b".png", b".txt", b""]),
                                st.sampled_from(["good", "bad", "fifo", "folder"])),
                      min_size=1, max_size=6, unique_by=lambda f: f[0] + f[1]))
def test_any_file_names_in_a_directory_end_with_every_file_counted(hostile, files):
    root = os.fsencode(hostile.root / "generated" / uuid.uuid4().hex)
    os.makedirs(root)
    for name, suffix, kind in files:
        path = os.path.join(root, name + suffix)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            os.makedirs(path)
            with open(os.path.join(path, b"inner.jpg"), "wb") as f:
                f.write(jpeg(PHOTOS))
        else:
            with open(path, "wb") as f:
                f.write(jpeg(PHOTOS) if kind == "good" else os.urandom(200))
    response = hostile.post("/jobs", json={"directory": os.fsdecode(root)})
    assert response.status_code == 202, response.text
    assert_job_ends(hostile, response)


class Images(QuietHandler):
    def do_GET(self):
        if self.path.endswith(".jpg"):
            self.send(200, jpeg(PHOTOS), Content_Type="image/jpeg")
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def local_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


URL_TEXT = st.one_of(
    urls(), st.text(max_size=60),
    st.tuples(st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "//", "http:/", "http://user:pw@"]),
              st.sampled_from(["LOCAL", "[::1]", "0x7f.1", "h.invalid", "[::ffff:0:7f00:1]", "", "127.0.0.1:0"]),
              st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)).map("".join))


@BOUNDED
@given(raw=st.lists(st.one_of(URL_TEXT, URL_TEXT.map(lambda u: u + ".jpg")), min_size=1, max_size=4))
def test_any_url_strings_end_with_every_url_counted(hostile, local_url, raw):
    urls_sent = [u.replace("LOCAL", local_url.removeprefix("http://")) for u in raw]
    response = hostile.post("/jobs", json={"urls": urls_sent})
    assert_job_ends(hostile, response, total=len(urls_sent))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)
BODIES = st.dictionaries(st.sampled_from(["url", "urls", "image_id", "k", "label", "directory", "x"]), JSON,
                         max_size=4)


@BOUNDED
@given(path=st.sampled_from(["/search", "/images", "/jobs"]), body=BODIES)
def test_any_json_body_gets_an_answer_below_500_and_its_job_ends(hostile, path, body):
    response = hostile.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_job_ends(hostile, response)


def assert_error_shape(response) -> None:
    """Below 500, and a 4xx is the API's error shape: JSON {"error": {"code", "message"}}."""
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", response.text[:300]
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error


BIG_NUMBERS = st.one_of(st.integers(), st.integers(min_value=10**308, max_value=10**4000), st.floats(),
                        st.just(-(10**400)))
NESTED_TEXT = st.integers(0, 50_000).map(lambda n: "[" * n + "]" * n)
FILTER_VALUES = st.one_of(JSON, BIG_NUMBERS, NESTED_TEXT, st.datetimes().map(lambda d: d.isoformat()),
                          st.text(max_size=30))
FILTERS = st.dictionaries(st.sampled_from(["label", "collection", "created_after", "created_before", "x"]),
                          FILTER_VALUES, max_size=3)


@BOUNDED
@example(filter_="[" * 50_000 + "]" * 50_000, collection=None, min_verdict=None, as_form=True)  # was a 500
@example(filter_={"created_after": 10**400}, collection=None, min_verdict=None, as_form=False)  # was a 500
@given(filter_=st.one_of(FILTERS, FILTERS.map(json.dumps), FILTER_VALUES),
       collection=st.one_of(st.none(), JSON), min_verdict=st.one_of(st.none(), JSON),
       as_form=st.booleans())
def test_any_search_filter_gets_an_answer_below_500_in_the_error_shape(hostile, filter_, collection, min_verdict,
                                                                      as_form):
    """`filter`, `collection`, `min_verdict` of a search by id, in a JSON body or a form (where
    `filter` is JSON text): numbers beyond a float, deep nesting, dates far from the epoch, and
    NaN or Infinity (json.dumps writes them; the gateway must refuse them)."""
    fields = {"image_id": hostile.sentinel, "filter": filter_, "collection": collection, "min_verdict": min_verdict}
    fields = {k: v for k, v in fields.items() if v is not None}
    if as_form:
        form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        response = hostile.post("/search", data=form)
    else:
        response = hostile.post("/search", data=json.dumps(fields), headers={"Content-Type": "application/json"})
    assert_error_shape(response)


COMPONENTS = st.one_of(NAMES, st.sampled_from([".", "", "~", "a" * 256, "\u00e9" * 128]),
                       st.integers(1, 3000).map(lambda n: "a/" * n))


@BOUNDED
@example(parts=["a" * 256])  # a name longer than the file system's 255 bytes: was a 500
@example(parts=["a/" * 2100])  # a path beyond PATH_MAX: was a 500
@given(parts=st.lists(COMPONENTS, min_size=1, max_size=5))
def test_any_directory_path_inside_a_root_gets_an_answer_below_500(hostile, parts):
    """Paths below an allowed root of any length and shape (an empty folder of their own): too long
    a name or path is a 4xx, a folder that exists a job that ends."""
    base = hostile.root / "paths" / uuid.uuid4().hex
    base.mkdir(parents=True)
    response = hostile.post("/jobs", json={"directory": str(base) + "/" + "/".join(parts)})
    assert_error_shape(response)
    assert_job_ends(hostile, response)


METHODS = st.sampled_from([b"GET", b"POST", b"get", b"G@T", b"PRI", b"A" * 40])
TARGETS = st.one_of(st.sampled_from([b"/api/v1/index", b"/api/v1/search", b"/api/v1/jobs/x", b"*",
                                     b"http://evil.example/api/v1/index", b"/api/v1/" + b"a" * 5000]),
                    st.binary(max_size=30).map(lambda b: b"/api/v1/" + b))
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"", b"HTTP/1.1 x"])
HEADER_NAMES = st.one_of(st.sampled_from([b"X-Request-Id", b"Transfer-Encoding", b"Content-Length", b"SCRIPT_NAME",
                                          b"PATH_INFO", b"Expect", b"Host", b"Content-Type", b"X-Forwarded-Proto",
                                          b"X A", b"", b"X-Long"]),
                         st.binary(min_size=1, max_size=10))
HEADER_VALUES = st.one_of(st.sampled_from([b"chunked", b"bogus", b"gzip, chunked", b"-1", b"99999999999999999999",
                                           b"/zz", b"100-continue", b"application/json", b"https", b"a" * 9000]),
                          st.binary(max_size=20))


def http_exchange(base_url: str, request: bytes, timeout_s: float = 10) -> bytes:
    """Sends raw bytes to the gateway and reads until it closes the connection."""
    host, port = base_url.split("//")[1].split("/")[0].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed while we were still sending
            pass
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@BOUNDED
@example(method=b"GET", target=b"/api/v1/index", version=b"HTTP/1.1", headers=[(b"X-Request-Id", b"a\x01b")],
         body=b"")  # gunicorn's HTML 400 page
@example(method=b"POST", target=b"/api/v1/search", version=b"HTTP/1.1",
         headers=[(b"Transfer-Encoding", b"chunked")], body=b"zz\r\n{}\r\n0\r\n\r\n")  # HTML 400
@example(method=b"POST", target=b"/api/v1/search", version=b"HTTP/1.1", headers=[(b"Transfer-Encoding", b"bogus")],
         body=b"")  # gunicorn's 501
@example(method=b"GET", target=b"/api/v1/index", version=b"HTTP/1.1", headers=[(b"SCRIPT_NAME", b"/zz")],
         body=b"")  # a 500
@given(method=METHODS, target=TARGETS, version=VERSIONS, headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES),
                                                                          max_size=4), body=st.binary(max_size=40))
def test_any_http_request_gets_an_answer_below_500_in_the_error_shape(hostile, method, target, version, headers,
                                                                     body):
    """Raw requests, malformed at every level gunicorn parses (request line, header names and
    values, framing): the answer is below 500, and an error is the API's JSON error shape
    whether gunicorn or the app gave it."""
    host = hostile.open_url.split("//")[1].split("/")[0].encode()
    lines = [b" ".join(p for p in (method, target, version) if p), b"Host: " + host, b"Connection: close",
             *(name + b": " + value for name, value in headers)]
    answer = http_exchange(hostile.open_url, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    if answer.startswith(b"HTTP/1.1 100 "):  # an interim answer to Expect: 100-continue
        answer = answer.split(b"\r\n\r\n", 1)[1]
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status < 500, answer[:500]
    if status >= 400:
        assert b"content-type: application/json" in head.lower(), answer[:500]
        error = json.loads(payload)["error"]
        assert set(error) == {"code", "message"}, error
    hostile.assert_serving()
