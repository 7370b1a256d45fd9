"""Security properties of the running service: the bearer token (checked in constant time, on every
write), nothing secret or any image bytes in the gateway's or a worker's logs, no CORS by default,
limits on request size, URLs per job and k, and no credentials echoed back by the API.

Archive member limits and zip bombs go through a real worker in test_bad_input.py.
"""
from __future__ import annotations

import base64
import hmac
import http.server
import io
import logging
import threading
from dataclasses import replace

import pytest
from PIL import Image

from gateway import auth, create_app
from services.store import Store, image_id
from tests.conftest import QuietHandler
from tests.workers import wait_for_job

TOKEN = "tok-3b9f2a7c1d5e8f60"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL_PASSWORD = "hunter2-url-secret"


def photo_bytes(path, side=200) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
    im.thumbnail((side, side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class Photo(QuietHandler):
    body = b""

    def do_GET(self):
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(f"me:{URL_PASSWORD}".encode()).decode():
            self.send_error(401)
            return
        if self.path != "/photo.jpg":
            self.send_error(404)
            return
        self.send(200, self.body)


DEPLOYMENT = {"api_token": TOKEN, "max_upload_mb": 1, "max_urls_per_job": 5}


WRITES = [("post", "/api/v1/images", {"json": {"url": "http://example.com/x.jpg"}}),
          ("post", "/api/v1/jobs", {"json": {"urls": ["http://example.com/x.jpg"]}}),
          ("delete", "/api/v1/images/" + "a" * 64, {}),
          ("post", "/api/v1/index/rebuild", {})]


@pytest.mark.parametrize("method, path, kwargs", WRITES)
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer ", "Bearer wrong", f"Bearer {TOKEN[:-1]}",
                                    f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN.upper()}"])
def test_every_write_needs_the_exact_token(client, method, path, kwargs, header):
    headers = {"Authorization": header} if header is not None else {}
    response = getattr(client, method)(path, headers=headers, **kwargs)
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert TOKEN not in response.get_data(as_text=True)


def test_token_compared_in_constant_time(client, monkeypatch):
    calls, compare = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return compare(a, b)
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert client.post("/api/v1/index/rebuild", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/api/v1/index/rebuild", headers={"authorization": f"bearer {TOKEN}"}).status_code == 202
    # both tries went through hmac.compare_digest on the whole value, right or wrong
    assert calls == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_reads_and_search_need_no_token(client):
    assert client.get("/api/v1/index").status_code == 200
    assert client.get("/api/v1/jobs").status_code == 200
    assert client.post("/api/v1/search", json={"image_id": "0" * 64}).status_code == 404


def test_no_token_and_no_image_bytes_in_logs(deployment, client, photos, caplog):
    settings, worker = deployment.settings, deployment.worker
    upload = photo_bytes(photos[2])
    fetched = photo_bytes(photos[3])
    Photo.body = fetched
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Photo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://me:{URL_PASSWORD}@127.0.0.1:{server.server_port}"
    store = Store.from_settings(settings)
    try:
        with caplog.at_level(logging.DEBUG):
            up = client.post("/api/v1/images", data={"file": (io.BytesIO(upload), "mine.jpg")}, headers=AUTH,
                             content_type="multipart/form-data")
            by_url = client.post("/api/v1/jobs", json={"urls": [f"{base}/photo.jpg", f"{base}/missing.jpg"]},
                                 headers=AUTH)
            first = wait_for_job(store, up.json["job_id"], timeout_s=60, workers=[worker])
            second = wait_for_job(store, by_url.json["job_id"], timeout_s=60, workers=[worker])
            search = client.post("/api/v1/search", data={"file": (io.BytesIO(upload), "q.jpg")},
                                 content_type="multipart/form-data")
            assert client.post("/api/v1/images", json={"url": "x"}, headers={"Authorization": "Bearer bad"}
                               ).status_code == 401
    finally:
        server.shutdown()
        server.server_close()
    assert (first["done"], second["done"], second["failed"]) == (1, 1, 1), second
    assert search.status_code == 200 and search.json["results"][0]["id"] == image_id(upload)

    # the API does not hand the URL's credentials back either (job errors, image metadata)
    assert URL_PASSWORD not in str(second["errors"]) and "me:" not in second["errors"][0]["item"]
    record = client.get(f"/api/v1/images/{image_id(fetched)}").json
    assert record["status"] == "indexed" and URL_PASSWORD not in record["source"]

    gateway_log = "\n".join(r.getMessage() + str(r.exc_info or "") for r in caplog.records)
    assert "POST /api/v1/images 202" in gateway_log  # the access log was captured
    worker_log = worker.log()
    assert "ingest" in worker_log and "succeeded" in worker_log
    for name, text in (("gateway", gateway_log), ("worker", worker_log)):
        for secret in (TOKEN, URL_PASSWORD, "bad"):
            if secret == "bad":
                assert "Bearer bad" not in text, name
            else:
                assert secret not in text, f"{secret!r} in the {name} log"
        for data in (upload, fetched):
            for start in range(200, len(data) - 64, len(data) // 8):
                chunk = data[start:start + 24]
                for form in (chunk.decode("latin-1"), chunk.hex(), base64.b64encode(chunk).decode(), repr(chunk)[2:-1]):
                    assert form not in text, f"image bytes in the {name} log"


def test_no_cors_headers_by_default(client):
    origin = {"Origin": "https://evil.example"}
    for response in (client.get("/api/v1/index", headers=origin),
                     client.options("/api/v1/search", headers=origin | {"Access-Control-Request-Method": "POST",
                                                                        "Access-Control-Request-Headers": "authorization"}),
                     client.post("/api/v1/search", json={"image_id": "0" * 64}, headers=origin)):
        assert not [h for h in response.headers if h[0].lower().startswith("access-control-")], response.headers


def test_request_size_urls_per_job_and_k_are_limited(client):
    big = b"\0" * (1024 * 1024 + 1)
    for path, headers in (("/api/v1/search", {}), ("/api/v1/images", AUTH), ("/api/v1/jobs", AUTH)):
        for content_type in ("multipart/form-data; boundary=xyz", "application/json"):
            response = client.post(path, data=big, headers=headers, content_type=content_type)
            assert response.status_code == 413 and response.json["error"]["code"] == "request_entity_too_large"
    six = [f"http://example.com/{i}.jpg" for i in range(6)]
    for path in ("/api/v1/images", "/api/v1/jobs"):
        response = client.post(path, json={"urls": six}, headers=AUTH)
        assert response.status_code == 400 and response.json["error"]["code"] == "too_many_urls"
    assert client.post("/api/v1/search", json={"image_id": "0" * 64, "k": 101}).json["error"]["code"] == "bad_k"
    assert client.post("/api/v1/search", json={"image_id": "0" * 64, "k": 100}).status_code == 404  # k=100 is fine


def test_errors_never_leak_internals(deployment):
    settings = deployment.settings
    broken = create_app({"SETTINGS": replace(settings, redis_url="redis://:s3cretpw@127.0.0.1:1/0"),
                         "TESTING": True}).test_client()
    response = broken.get("/api/v1/jobs")
    assert response.status_code == 503 and response.json["error"]["code"] == "store_unavailable"
    assert "s3cretpw" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)
    assert broken.get("/healthz").status_code == 200
    ready = broken.get("/readyz")
    assert ready.status_code == 503 and "s3cretpw" not in ready.get_data(as_text=True)
