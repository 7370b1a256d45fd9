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
import tarfile
import threading
import uuid
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
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
