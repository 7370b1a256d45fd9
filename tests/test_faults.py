"""Faults survived, with real processes: the model server and Redis killed in the middle of a bulk
job, an index build killed half way, a corrupt index file, the gateway with its model server down.

Each test owns what it kills (its own model server, its own `redis-server`, its own builder).
"""
from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import pytest
import redis

from gateway import create_app
from services.index import Searcher, build_index
from services.store import Store, image_id
from tests.conftest import free_port, start_model_server, stop_process
from tests.test_worker import variants
from tests.workers import (
    WorkerProcess,
    drop_keys,
    isolated_settings,
    wait_for_index,
    wait_for_job,
    wait_until,
)
from worker.celery_app import make_celery
from services.jobs import request_rebuild, submit_job

MODEL_KEY = "effnet_lite0:1"


@pytest.fixture
def owned():
    """What a test starts (clients to close, settings to clean, workers and processes to stop), torn
    down in reverse."""
    things = {"settings": [], "workers": [], "procs": [], "close": []}
    yield things
    for close in things["close"]:
        close()
    for w in things["workers"]:
        w.stop()
    for p in things["procs"]:
        stop_process(p)
    for s in things["settings"]:
        try:
            drop_keys(s)
        except redis.RedisError:
            pass  # a test-owned Redis is already gone with its data


def search_upload(client, data: bytes):
    return client.post("/api/v1/search", data={"file": (io.BytesIO(data), "q.jpg")},
                       content_type="multipart/form-data")


def assert_indexed_once(store: Store, paths) -> None:
    ids = {image_id(p.read_bytes()) for p in paths}
    assert store.count_vectors(MODEL_KEY) == len(ids)
    assert store.redis.zcard(store.key("added", MODEL_KEY)) == len(ids)  # each vector written once
    assert all(r["status"] == "indexed" for r in store.get_images(ids))


def test_model_server_killed_mid_job_then_restarted(owned, model_base, photos, tmp_path):
    port = free_port()
    server = start_model_server(model_base, port)
    owned["procs"].append(server)
    settings = isolated_settings(tmp_path, f"127.0.0.1:{port}", model_timeout_s=3, ingest_chunk=3)
    owned["settings"].append(settings)
    store = Store.from_settings(settings)
    worker = WorkerProcess(settings, tmp_path, concurrency=2)
    owned["workers"].append(worker)
    worker.wait_ready()
    gateway = create_app({"SETTINGS": settings, "TESTING": True}).test_client()
    query = photos[0].read_bytes()

    paths = variants(photos[:10], tmp_path / "many")  # 30 images in 10 tasks
    job_id = submit_job(make_celery(settings), store, {"kind": "directory", "directory": str(tmp_path / "many")})
    wait_until(lambda: (store.get_job(job_id) or {}).get("done", 0) >= 6, 60, "6 images done")
    assert search_upload(gateway, query).status_code == 200

    server.kill()
    server.wait()
    server.stderr.close()
    owned["procs"].remove(server)
    killed = time.monotonic()
    down = search_upload(gateway, query)
    assert down.status_code == 503 and down.headers["Retry-After"]
    assert down.json["error"]["code"] == "model_unavailable"
    assert "model server is not available" in down.json["error"]["message"]
    assert gateway.get("/readyz").status_code == 503
    time.sleep(1)
    assert store.get_job(job_id)["state"] == "running", store.get_job(job_id)  # waiting, not failing its items
    server = start_model_server(model_base, port)  # same port: nothing is reconfigured
    owned["procs"].append(server)
    restarted = time.monotonic()

    job = wait_for_job(store, job_id, timeout_s=120, workers=[worker])
    print(f"down {restarted - killed:.1f} s, job done {time.monotonic() - restarted:.1f} s after the restart")
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 30, 30, 0), job
    assert_indexed_once(store, paths)
    assert "Retry in" in worker.log()  # the tasks waited with backoff
    # the gateway recovers by itself (its gRPC channel reconnects), no restart
    wait_until(lambda: search_upload(gateway, query).status_code == 200, 30, "gateway search back", 0.5)
    assert gateway.get("/readyz").status_code == 200
    wait_for_index(store, MODEL_KEY, 30)


def test_ingest_out_of_retries_fails_its_items_so_the_job_ends(owned, photos, tmp_path, monkeypatch):
    """A model server down for longer than every retry: the chunk's items are reported failed."""
    from services import context
    from worker.tasks import ingest
    settings = isolated_settings(tmp_path, f"127.0.0.1:{free_port()}", model_timeout_s=1)
    owned["settings"].append(settings)
    monkeypatch.setattr(context, "_context", context.Context(settings))
    store = Store.from_settings(settings)
    store.redis.set(store.key("active_model", settings.model_name), MODEL_KEY)
    store.create_job("j1", 2, "items")
    items = [{"key": p.name, "source": p.name, "path": str(p)} for p in photos[:2]]
    result = ingest.apply(args=["j1", items], retries=ingest.max_retries).get()
    assert result["embedded"] == 0
    job = store.get_job("j1")
    assert (job["state"], job["failed"]) == ("done", 2)
    assert all("gave up after 10 retries" in e["error"] for e in job["errors"]), job["errors"]


def start_redis(port: int, directory, log_path) -> subprocess.Popen:
    """A Redis of the test's own that fsyncs every write to its append-only file."""
    directory.mkdir(exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
                                 "--appendfsync", "always", "--save", "", "--dir", str(directory)],
                                stdout=log, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_timeout=1)
    wait_until(lambda: _ping(client), 10, "redis-server up")
    client.close()
    return proc


def _ping(client) -> bool:
    try:
        return client.ping()
    except redis.RedisError:
        return False


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_restarted_mid_job_loses_no_acknowledged_image(owned, model_server, photos, tmp_path, broker_url):
    """The records' Redis restarted: as the broker too, or beside RabbitMQ (then only the records are away)."""
    port = free_port()
    rdir, rlog = tmp_path / "redis", tmp_path / "redis.log"
    owned["procs"].append(start_redis(port, rdir, rlog))
    settings = isolated_settings(tmp_path, model_server, redis_url=f"redis://127.0.0.1:{port}/0",
                                 broker_url=broker_url, ingest_chunk=3, task_visibility_timeout_s=8)
    owned["settings"].append(settings)
    store, app = Store.from_settings(settings), make_celery(settings)
    owned["close"] += [store.redis.close, app.close]  # their sockets to the Redis this test kills
    worker = WorkerProcess(settings, tmp_path, concurrency=2)
    owned["workers"].append(worker)
    worker.wait_ready()

    paths = variants(photos, tmp_path / "many")
    job_id = submit_job(app, store, {"kind": "directory", "directory": str(tmp_path / "many")})
    wait_until(lambda: (store.get_job(job_id) or {}).get("done", 0) >= 9, 60, "9 images done")
    acknowledged = {k.decode() for k in store.redis.zrange(store.key("added", MODEL_KEY), 0, -1)}
    done_before = store.get_job(job_id)["done"]
    crashed = owned["procs"].pop()
    crashed.kill()
    crashed.wait()
    time.sleep(2)
    owned["procs"].append(start_redis(port, rdir, rlog))

    kept = {k.decode() for k in store.redis.zrange(store.key("added", MODEL_KEY), 0, -1)}
    assert acknowledged <= kept, f"lost {len(acknowledged - kept)} acknowledged vectors"
    assert store.get_job(job_id)["done"] >= done_before
    job = wait_for_job(store, job_id, timeout_s=90, workers=[worker])
    assert worker.proc.poll() is None, "the worker died with Redis"
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 60, 60, 0), job
    assert_indexed_once(store, paths)
    wait_for_index(store, MODEL_KEY, 60)


SYNTHETIC = "synthetic:1"


def add_synthetic(store: Store, start: int, count: int, dim: int = 256) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(start)
    ids = [f"{i:064x}" for i in range(start, start + count)]
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    for i in range(0, count, 2000):
        store.create_images([(x, {"source": "synthetic"}) for x in ids[i:i + 2000]])
        store.put_vectors(SYNTHETIC, ids[i:i + 2000], vectors[i:i + 2000])
    return ids, vectors


def published_files(index_dir) -> set[str]:
    return {p.name for p in index_dir.iterdir() if not p.name.startswith(".")}


def test_index_build_killed_half_way_then_corrupt_file_refused(owned, model_server, tmp_path):
    settings = isolated_settings(tmp_path, model_server, task_visibility_timeout_s=4, index_lock_ttl_s=6)
    owned["settings"].append(settings)
    store = Store.from_settings(settings)
    app = make_celery(settings)
    ids, vectors = add_synthetic(store, 0, 30_000)
    v1 = build_index(store, SYNTHETIC, settings.index_dir)
    add_synthetic(store, 30_000, 500)
    files_v1 = published_files(settings.index_dir)
    searcher = Searcher(store, SYNTHETIC, settings.index_dir)
    assert searcher.search(vectors[7], k=1)[0][0] == ids[7]

    builder = WorkerProcess(settings, tmp_path, queues="index", concurrency=1, name="builder1")
    owned["workers"].append(builder)
    builder.wait_ready()
    assert request_rebuild(app, store, SYNTHETIC)
    lock = store.key("index", SYNTHETIC, "lock")
    wait_until(lambda: store.redis.exists(lock), 20, "the build to start", 0.01)
    time.sleep(0.3)  # reading vectors, building trees (a build of this size takes about a second)
    builder.kill()
    assert store.get_index_info(SYNTHETIC)["version"] == v1["version"], "killed too late: the build was done"
    assert published_files(settings.index_dir) == files_v1  # no half file under a published name
    assert searcher.search(vectors[7], k=1)[0][0] == ids[7] and searcher.version == v1["version"]

    # A new builder finishes the interrupted build: the dead builder's lock expires and its
    # unacknowledged task is delivered again; a rebuild asked for meanwhile is not lost.
    request_rebuild(app, store, SYNTHETIC)
    owned["workers"].append(WorkerProcess(settings, tmp_path, queues="index", concurrency=1, name="builder2"))
    v2 = wait_for_index(store, SYNTHETIC, 30_500, timeout_s=40)
    assert v2["version"] > v1["version"]
    assert searcher.search(vectors[7], k=1)[0][0] == ids[7] and searcher.version == v2["version"]

    # A corrupt or truncated index file is refused: the gateway keeps serving the previous one.
    store.redis.set(store.key("active_model", settings.model_name), SYNTHETIC)
    gateway = create_app({"SETTINGS": settings, "TESTING": True}).test_client()
    assert gateway.get("/api/v1/index").json["version"] == v2["version"]
    add_synthetic(store, 40_000, 10)
    bad = build_index(store, SYNTHETIC, settings.index_dir, n_trees=4)
    with open(settings.index_dir / bad["path"], "r+b") as f:
        f.truncate(bad["size"] // 2)
    state = gateway.get("/api/v1/index").json
    assert state["version"] == v2["version"] and "truncated or corrupt" in state["error"]
    assert "serving the previous version" in gateway.get("/readyz").json["checks"]["index"]
    hit = gateway.post("/api/v1/search", json={"image_id": ids[7], "k": 1})
    assert hit.status_code == 200 and hit.json["results"][0]["id"] == ids[7]
    assert hit.json["index_version"] == v2["version"]
    good = build_index(store, SYNTHETIC, settings.index_dir, n_trees=4)
    state = gateway.get("/api/v1/index").json
    assert (state["version"], state["error"], state["count"]) == (good["version"], None, 30_510)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs RabbitMQ (rabbitmqctl)")
def test_rabbitmq_restarted_mid_job_indexes_every_image_once(owned, model_server, photos, tmp_path):
    """The broker's application stopped and started under a running job: the quorum queue keeps its
    messages, the worker reconnects, messages in flight are delivered again and counted once."""
    from tests.workers import rabbitmq_vhost, rabbitmqctl
    with rabbitmq_vhost() as broker_url:
        settings = isolated_settings(tmp_path, model_server, broker_url=broker_url, ingest_chunk=3,
                                     task_visibility_timeout_s=10)
        owned["settings"].append(settings)
        store = Store.from_settings(settings)
        worker = WorkerProcess(settings, tmp_path, concurrency=2)
        worker.wait_ready()
        try:
            paths = variants(photos, tmp_path / "many")
            job_id = submit_job(make_celery(settings), store, {"kind": "directory", "directory": str(tmp_path / "many")})
            wait_until(lambda: (store.get_job(job_id) or {}).get("done", 0) >= 6, 60, "6 images done")
            rabbitmqctl("stop_app")
            try:
                time.sleep(2)
            finally:
                rabbitmqctl("start_app")  # always: RabbitMQ serves the whole machine
            rabbitmqctl("await_startup")
            job = wait_for_job(store, job_id, timeout_s=120, workers=[worker])
            assert worker.proc.poll() is None, "the worker died with the broker"
            assert "Connection to broker lost" in worker.log()
            assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 60, 60, 0), job
            assert_indexed_once(store, paths)
            wait_for_index(store, MODEL_KEY, 60)
        finally:
            worker.stop()
