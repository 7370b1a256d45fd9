"""The records on a real Redis Cluster (3 primaries, a replica each; the `redis_cluster` fixture),
with RabbitMQ as the broker: ingest and search end to end, then a primary killed mid-job."""
from __future__ import annotations

import io

import pytest

from gateway import create_app
from services.jobs import submit_job
from services.store import Store, image_id
from tests.test_faults import MODEL_KEY, assert_indexed_once
from tests.test_worker import class_tree, variants
from tests.workers import (WorkerProcess, drop_keys, isolated_settings, rabbitmq_vhost, wait_for_index,
                           wait_for_job, wait_until)
from worker.celery_app import make_celery


@pytest.fixture
def on_cluster(redis_cluster, model_server, tmp_path):
    """make(**overrides) -> (settings, store, worker) of a deployment whose records are on the cluster."""
    made = []

    def make(**overrides):
        settings = isolated_settings(tmp_path, model_server, redis_url=redis_cluster.url,
                                     broker_url=vhost, **overrides)
        worker = WorkerProcess(settings, tmp_path, concurrency=2)
        made.append((settings, worker))
        worker.wait_ready()
        return settings, Store.from_settings(settings), worker

    with rabbitmq_vhost() as vhost:
        yield make
        for settings, worker in made:
            worker.stop()
            drop_keys(settings)


def test_a_cluster_is_never_the_broker():
    from services.config import Settings
    settings = Settings(redis_url="redis+cluster://127.0.0.1:7000")
    with pytest.raises(ValueError, match="VSEARCH_BROKER_URL must be set"):
        make_celery(settings)
    assert Settings(redis_url=settings.redis_url, broker_url="amqp://h//").broker == "amqp://h//"
    assert Settings().broker == Settings().redis_url  # one Redis: broker and records, as before


def test_ingest_and_search_with_the_records_on_a_cluster(on_cluster, photos, tmp_path):
    settings, store, worker = on_cluster()
    assert store.cluster and store.prefix.startswith("{")
    tree = class_tree(photos, tmp_path / "photos")
    job = wait_for_job(store, submit_job(make_celery(settings), store, {"kind": "directory", "directory": str(tree)}),
                       workers=[worker])
    assert (job["state"], job["done"], job["failed"]) == ("done", 20, 0)
    wait_for_index(store, MODEL_KEY, 20)
    client = create_app({"SETTINGS": settings, "TESTING": True}).test_client()
    for p in photos:
        found = client.post("/api/v1/search", data={"file": (io.BytesIO(p.read_bytes()), "q.jpg"), "k": "3"},
                            content_type="multipart/form-data")
        assert found.status_code == 200, found.json
        assert found.json["results"][0]["id"] == image_id(p.read_bytes())
    gone = image_id(photos[0].read_bytes())
    assert client.delete(f"/api/v1/images/{gone}").status_code == 204
    assert store.get_image(gone)["status"] == "deleted" and store.count_vectors(MODEL_KEY) == 19


def test_primary_killed_mid_job_its_replica_takes_over(on_cluster, redis_cluster, photos, tmp_path):
    """Replication is asynchronous: writes of the last moments before the kill may be lost with the
    primary. The replica holds a prefix of its history, items are idempotent and counted once, and
    the watchdog sends again any chunk whose items are no longer counted."""
    settings, store, worker = on_cluster(ingest_chunk=3, task_visibility_timeout_s=6)
    paths = variants(photos, tmp_path / "many")
    job_id = submit_job(make_celery(settings), store, {"kind": "directory", "directory": str(tmp_path / "many")})
    wait_until(lambda: (store.get_job(job_id) or {}).get("done", 0) >= 9, 60, "9 images done")
    primary = redis_cluster.primary_of(store.key("seq"))
    redis_cluster.kill(primary)
    try:
        wait_until(lambda: redis_cluster.primary_of(store.key("seq")) != primary, 30, "a replica promoted")
        job = wait_for_job(store, job_id, timeout_s=150, workers=[worker])
        assert worker.proc.poll() is None, "the worker died with the primary"
        assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 60, 60, 0), job
        assert_indexed_once(store, paths)
        wait_for_index(store, MODEL_KEY, 60)
    finally:
        redis_cluster.start_node(primary)  # back as a replica of the promoted one
        redis_cluster.wait_healthy()
