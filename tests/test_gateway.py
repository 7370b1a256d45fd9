"""The gateway for real: Flask app against Redis, a Celery worker process and the model server."""
from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image

from gateway import create_app
from evaluation import transforms
from services.store import Store, image_id
from tests.conftest import free_port, imagenet_label, serving_image
from tests.workers import index_class_folders, wait_for_job

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TOKEN = "read-only-token"


def reader(app):
    """A test client that sends the read-only token unless a request names another."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {READ_TOKEN}"
    return client


def open_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


DEPLOYMENT = {"api_token": TOKEN, "read_token": READ_TOKEN, "max_upload_mb": 2}


@pytest.fixture
def client(deployment):
    return reader(deployment.app)


@pytest.fixture(scope="module", autouse=True)
def indexed(deployment, photos):
    """The 20 photos indexed once for the module, in class folders."""
    job = index_class_folders(deployment, photos, deployment.tmp / "photos", AUTH)
    assert (job["done"], job["failed"]) == (20, 0)


def upload(client, data: bytes, path="/api/v1/search", name="q.jpg", headers=None, **form):
    return client.post(path, data={"file": (io.BytesIO(data), name), **form}, headers=headers,
                       content_type="multipart/form-data")


@pytest.mark.parametrize("edit", ["crop70", "mirror", "rotate10", "watermark", "jpeg20", "combined"])
def test_search_by_upload_finds_the_original_of_a_copy(client, photos, edit):
    photo = photos[3]
    copy = transforms.to_jpeg_bytes(transforms.TRANSFORMS[edit](open_rgb(photo)))
    response = upload(client, copy, k="5")
    assert response.status_code == 200, response.json
    body = response.json
    assert len(body["results"]) == 5 and body["index_version"] >= 1 and body["took_ms"] > 0
    best = body["results"][0]
    assert best["id"] == image_id(photo.read_bytes())
    assert best["label"] == f"class_{imagenet_label(photo):03d}" and best["source"].endswith(photo.name)
    assert best["thumbnail_url"] == f"/api/v1/images/{best['id']}/thumbnail"
    ranking = [r["match"] for r in body["results"]]
    assert ranking == sorted(ranking, reverse=True)


def test_search_by_image_id_and_by_url(client, photos):
    iid = image_id(photos[5].read_bytes())
    by_id = client.post("/api/v1/search", json={"image_id": iid, "k": 3}).json
    assert by_id["results"][0]["id"] == iid and by_id["results"][0]["score"] > 0.999

    with serving_image(transforms.to_jpeg_bytes(transforms.mirror(open_rgb(photos[5])))) as url:
        by_url = client.post("/api/v1/search", json={"url": url})
    assert by_url.status_code == 200 and by_url.json["results"][0]["id"] == iid


def test_upload_then_metadata_thumbnail_content_and_delete(deployment, client, photos):
    settings, worker = deployment.settings, deployment.worker
    im = open_rgb(photos[7]).rotate(90, expand=True)  # a new image, not a copy of the indexed one
    data = transforms.to_jpeg_bytes(im)
    iid = image_id(data)
    response = upload(client, data, path="/api/v1/images", name="new.jpg", headers=AUTH, label="mine")
    assert response.status_code == 202, response.json
    assert response.json["images"] == [{"id": iid, "filename": "new.jpg", "status": "queued"}]
    job = wait_for_job(Store.from_settings(settings), response.json["job_id"], workers=[worker])
    assert job["done"] == 1

    meta = client.get(f"/api/v1/images/{iid}").json
    assert (meta["status"], meta["label"], meta["source"], meta["width"]) == ("indexed", "mine", "new.jpg", im.width)
    with client.get(f"/api/v1/images/{iid}/thumbnail") as thumb:
        assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.data)).size) <= 256
    with client.get(f"/api/v1/images/{iid}/content") as content:
        assert content.data == data
    # searchable at once (fresh, not yet in Annoy necessarily), first for its own bytes
    assert upload(client, data).json["results"][0]["id"] == iid

    assert client.delete(f"/api/v1/images/{iid}").status_code == 403  # the read token cannot delete
    assert client.delete(f"/api/v1/images/{iid}", headers=AUTH).status_code == 204
    assert iid not in [r["id"] for r in upload(client, data, k="20").json["results"]]
    assert client.get(f"/api/v1/images/{iid}").status_code == 404
    assert client.delete(f"/api/v1/images/{iid}", headers=AUTH).status_code == 404


def test_jobs_progress_and_listing(client, deployment):
    jobs = client.get("/api/v1/jobs").json["jobs"]
    assert jobs and {"job_id", "state", "total", "done", "failed"} <= set(jobs[0])
    job = client.get(f"/api/v1/jobs/{jobs[-1]['job_id']}").json
    assert job["state"] == "done" and job["errors"] == []
    index = client.get("/api/v1/index").json
    assert index["count"] + index["pending"] >= 20 and index["version"] >= 1


@pytest.mark.parametrize("request_kwargs, status, code", [
    ({"json": {"k": 3}}, 400, "no_query"),
    ({"json": {"image_id": "0" * 64}}, 404, "not_found"),
    ({"json": {"image_id": "x", "k": 0}}, 400, "bad_k"),
    ({"json": {"image_id": "x", "k": 101}}, 400, "bad_k"),
    ({"json": {"image_id": "x", "k": "many"}}, 400, "bad_k"),
    ({"json": {"image_id": "x", "k": 2.5}}, 400, "bad_k"),
    ({"json": {"url": 5}}, 400, "bad_url"),
    ({"json": {"url": "file:///etc/passwd"}}, 400, None),
    ({"json": {"url": "http://169.254.169.254/latest"}}, 400, None),
    ({"data": "{not json", "content_type": "application/json"}, 400, "bad_json"),
    ({"data": {"file": (io.BytesIO(b"hello, not an image"), "a.jpg")}, "content_type": "multipart/form-data"},
     400, "undecodable"),
    ({"data": {"file": (io.BytesIO(b""), "empty.jpg")}, "content_type": "multipart/form-data"}, 400, "empty"),
    ({"data": {"file": (io.BytesIO(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), "a.svg")},
      "content_type": "multipart/form-data"}, 415, "unsupported_format"),
])
def test_bad_search_input_gets_a_json_4xx(deployment, request_kwargs, status, code):
    settings = deployment.settings
    client = reader(create_app({"SETTINGS": replace(settings, allow_private_urls=False), "TESTING": True}))
    response = client.post("/api/v1/search", **request_kwargs)
    assert response.status_code == status, response.data
    assert response.is_json and set(response.json["error"]) == {"code", "message"}
    assert code is None or response.json["error"]["code"] == code


def test_auth_size_limit_and_routing_errors(client, photos):
    data = photos[0].read_bytes()
    assert upload(client, data, path="/api/v1/images").status_code == 403  # the read token cannot write
    wrong = upload(client, data, path="/api/v1/images", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json["error"]["code"] == "unauthorized"
    assert client.post("/api/v1/jobs", json={"directory": "/etc"}).json["error"]["code"] == "forbidden"
    assert client.post("/api/v1/jobs", json={"directory": "/etc"}, headers=AUTH).status_code == 403
    assert client.post("/api/v1/index/rebuild").status_code == 403
    assert client.post("/api/v1/index/rebuild", headers=AUTH).status_code == 202
    # a raw body (the test client would spool a multipart one to a temp file it never closes)
    big = client.post("/api/v1/images", data=b"\0" * (3 * 1024 * 1024), headers=AUTH,
                      content_type="multipart/form-data; boundary=xyz")
    assert big.status_code == 413 and big.is_json
    not_image = upload(client, b"just text", path="/api/v1/images", headers=AUTH)
    assert not_image.status_code == 415 and not_image.json["error"]["code"] == "no_valid_image"
    assert client.get("/api/v1/nope").json["error"]["code"] == "not_found"
    assert client.get("/api/v1/search").status_code == 405 and client.get("/api/v1/search").is_json
    assert client.get("/api/v1/images/zzz").status_code == 404
    assert client.get("/api/v1/jobs/unknown").status_code == 404


def test_model_server_down_gives_503_and_recovery(deployment, photos):
    settings = deployment.settings
    down = reader(create_app({"SETTINGS": replace(settings, model_server=f"127.0.0.1:{free_port()}",
                                                  model_timeout_s=1), "TESTING": True}))
    response = upload(down, photos[0].read_bytes())
    assert response.status_code == 503 and response.json["error"]["code"] == "model_unavailable"
    ready = down.get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["redis"] == "ok"
    # search by id needs no model call
    iid = image_id(photos[0].read_bytes())
    assert down.post("/api/v1/search", json={"image_id": iid}).json["results"][0]["id"] == iid


def test_health_metrics_and_page(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/api/v1/readyz")
    assert ready.status_code == 200 and ready.json["ready"] is True
    client.post("/api/v1/search", json={"image_id": "0" * 64})
    metrics = client.get("/metrics").data.decode()
    assert "vsearch_http_request_seconds_bucket" in metrics and 'route="/api/v1/search"' in metrics
    page = client.get("/")
    assert page.status_code == 200 and b"search-form" in page.data
    with client.get("/static/app.js") as script:
        assert script.status_code == 200


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_metrics_count_the_images_of_each_query_model_call(client, photos):
    before = client.get("/metrics").data.decode()
    assert upload(client, photos[3].read_bytes()).status_code == 200
    assert client.post("/api/v1/search", json={"image_id": image_id(photos[3].read_bytes())}).status_code == 200
    after = client.get("/metrics").data.decode()
    calls = 'vsearch_search_model_images_count{kind="upload"}'
    images = 'vsearch_search_model_images_sum{kind="upload"}'
    assert _metric(after, calls) - _metric(before, calls) == 1  # one model call per query
    # one image: the mirror and trimmed views reuse its embedding, adding only their layouts (services/copies.py)
    assert _metric(after, images) - _metric(before, images) == 1
    assert 'vsearch_search_model_images_count{kind="image_id"}' not in after  # no model call


def test_openapi_describes_exactly_the_routes(client, deployment):
    spec = client.get("/api/v1/openapi.json").json
    app = deployment.app
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            path = rule.rule.replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((path, method.lower()))
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == described
