"""Both index backends through the whole service: a real worker process, the model server, the gateway
app, and for `milvus` a Milvus API server (Milvus Lite's engine). Ingest with collections, search by
upload, URL and id, filters, delete and near-duplicates behave the same on either."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from evaluation import transforms
from gateway import create_app
from services.store import Store, image_id
from tests.conftest import Deployment, imagenet_label, serving_image
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_index, wait_for_job

COLLECTIONS = ("alpha", "beta")  # photos 0-9 and 10-19


def jpeg(path, edit=None, quality=None) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
    im = transforms.TRANSFORMS[edit](im) if edit else im
    return transforms.to_jpeg_bytes(im, quality=quality) if quality else transforms.to_jpeg_bytes(im)


@pytest.fixture(scope="module", params=["annoy", "annoy-pca", "milvus"])
def deployment(request, tmp_path_factory, model_server, photos) -> Deployment:
    """One deployment per backend, the 20 photos indexed by two directory jobs, one per collection.
    `annoy-pca`: the Annoy file holds the vectors projected to 16 dimensions (VSEARCH_INDEX_PCA),
    built before the tests run, so they search the projected index, not the fresh items."""
    backend = {"index_backend": request.param.split("-")[0]}
    if request.param == "annoy-pca":
        backend["index_pca"] = 16
    if request.param == "milvus":
        backend["milvus_uri"] = request.getfixturevalue("milvus_uri")
    tmp = tmp_path_factory.mktemp(f"backend-{request.param}")
    settings = isolated_settings(tmp, model_server, **backend)
    worker = WorkerProcess(settings, tmp)
    try:
        worker.wait_ready()
        d = Deployment(settings, create_app({"SETTINGS": settings, "TESTING": True}), worker, tmp)
        store = Store.from_settings(settings)
        for n, collection in enumerate(COLLECTIONS):
            tree = tmp / collection
            for p in photos[10 * n:10 * n + 10]:
                folder = tree / f"class_{imagenet_label(p):03d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / p.name).write_bytes(p.read_bytes())
            answer = d.client().post("/api/v1/jobs", json={"directory": str(tree), "collection": collection})
            assert answer.status_code == 202, answer.json
            job = wait_for_job(store, answer.json["job_id"], workers=[worker])
            assert (job["done"], job["failed"]) == (10, 0)
        if request.param == "annoy-pca":
            [model_key] = store.model_keys()
            assert wait_for_index(store, model_key, 20)["input_dim"] == 1280
        yield d
    finally:
        worker.stop()
        drop_keys(settings)


@pytest.fixture
def client(deployment):
    return deployment.client()


def search(client, data: bytes | None = None, **body):
    if data is None:
        return client.post("/api/v1/search", json=body)
    form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
    return client.post("/api/v1/search", data={"file": (io.BytesIO(data), "q.jpg"), **form},
                       content_type="multipart/form-data")


def test_index_reports_its_backend(client, deployment):
    index = client.get("/api/v1/index").json
    assert index["backend"] == deployment.settings.index_backend
    assert index["count"] + index["pending"] == 20


def test_search_by_upload_url_and_id(client, photos):
    original = image_id(photos[3].read_bytes())
    by_upload = search(client, jpeg(photos[3], "crop70"), k="5")
    assert by_upload.status_code == 200, by_upload.json
    assert by_upload.json["results"][0]["id"] == original and len(by_upload.json["results"]) == 5
    with serving_image(jpeg(photos[3], "mirror")) as url:
        assert search(client, url=url, k=3).json["results"][0]["id"] == original
    by_id = search(client, image_id=original, k=4).json["results"]
    assert by_id[0]["id"] == original and by_id[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(by_id) == 4


def test_search_within_a_collection_and_by_filters(client, deployment, photos):
    store = Store.from_settings(deployment.settings)
    beta = {image_id(p.read_bytes()) for p in photos[10:]}
    query = jpeg(photos[3], "jpeg20")  # a copy of an image of "alpha"
    hits = search(client, query, k="20", collection="beta").json["results"]
    assert {h["id"] for h in hits} == beta  # every image of the collection, and nothing else
    label = f"class_{imagenet_label(photos[12]):03d}"
    hits = search(client, image_id=image_id(photos[3].read_bytes()), k=10, filter={"label": label}).json["results"]
    assert hits and all(h["label"] == label for h in hits)
    assert image_id(photos[12].read_bytes()) in {h["id"] for h in hits}
    records = [r for r in store.get_images([image_id(p.read_bytes()) for p in photos])]
    cut = sorted(r["created_at"] for r in records)[10]  # the second job's images are the newer ones
    newer = {r["id"] for r in records if r["created_at"] >= cut}
    hits = search(client, query, k="20", filter={"created_after": cut}).json["results"]
    assert {h["id"] for h in hits} == newer
    hits = search(client, image_id=image_id(photos[15].read_bytes()), k=20,
                  filter={"created_before": cut, "collection": ["alpha", "beta"]}).json["results"]
    assert {h["id"] for h in hits} == {r["id"] for r in records} - newer
    assert search(client, query, k="5", collection="nowhere").json["results"] == []


@pytest.mark.parametrize("body, code", [({"collection": "no spaces"}, "bad_filter"),
                                        ({"filter": {"colour": "red"}}, "bad_filter"),
                                        ({"filter": {"created_after": "yesterday"}}, "bad_filter"),
                                        ({"filter": "label"}, "bad_filter")])
def test_bad_filters_get_a_400(client, photos, body, code):
    response = search(client, image_id=image_id(photos[0].read_bytes()), **body)
    assert response.status_code == 400 and response.json["error"]["code"] == code


def test_upload_into_a_collection_then_delete(client, deployment, photos):
    store = Store.from_settings(deployment.settings)
    new = jpeg(photos[5], "rotate10")  # an edited copy: other bytes, another image
    answer = client.post("/api/v1/images", data={"file": (io.BytesIO(new), "new.jpg"), "collection": "gamma",
                                                 "label": "mine"}, content_type="multipart/form-data")
    assert answer.status_code == 202, answer.json
    assert wait_for_job(store, answer.json["job_id"], workers=[deployment.worker])["done"] == 1
    iid = image_id(new)
    record = client.get(f"/api/v1/images/{iid}").json
    assert (record["collection"], record["label"], record["status"]) == ("gamma", "mine", "indexed")
    hits = search(client, new, k="3", collection="gamma").json["results"]
    assert [h["id"] for h in hits] == [iid]  # searchable at once, alone in its collection
    assert client.delete(f"/api/v1/images/{iid}").status_code == 204
    assert search(client, new, k="3", collection="gamma").json["results"] == []
    assert iid not in {h["id"] for h in search(client, new, k="10").json["results"]}


def test_a_recompressed_copy_is_recorded_as_a_near_duplicate(client, deployment, photos):
    store = Store.from_settings(deployment.settings)
    copy = jpeg(photos[17], quality=70)
    answer = client.post("/api/v1/images", data={"file": (io.BytesIO(copy), "copy.jpg")},
                         content_type="multipart/form-data")
    job = wait_for_job(store, answer.json["job_id"], workers=[deployment.worker])
    assert (job["done"], job["near_duplicates"]) == (1, 1)
    assert store.get_image(image_id(copy))["near_duplicate_of"] == image_id(photos[17].read_bytes())
