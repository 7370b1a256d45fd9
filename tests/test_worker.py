"""Indexing for real: Redis, Celery worker processes, the model server; a worker killed mid-job."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image, ImageEnhance

from evaluation import transforms
from services.images import load_for_model
from services.index import Searcher
from services.store import Store, image_id
from services.tfs_client import ModelClient
from tests.conftest import free_port, imagenet_label
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_index, wait_for_job
from services.broker import INGEST_QUEUE
from worker.celery_app import make_celery
from worker.ingest import Item
from services.jobs import submit_job


@pytest.fixture
def env(tmp_path, model_server):
    """Settings, store and Celery app of one isolated deployment; workers are started by each test."""
    def make(**overrides):
        settings = isolated_settings(tmp_path, model_server, **overrides)
        made.append(settings)
        return settings, Store.from_settings(settings), make_celery(settings)
    made, workers = [], []
    yield make, workers
    for w in workers:
        w.stop()
    for settings in made:
        drop_keys(settings)


def open_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def class_tree(photos, root):
    """Caltech-256 layout: root/<class>/<image>."""
    for p in photos:
        folder = root / f"class_{imagenet_label(p):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    return root


COPY_EDITS = ["crop70", "mirror", "rotate10", "watermark", "jpeg20"]


def test_directory_job_indexes_a_class_tree_and_copies_find_their_original(env, photos, tmp_path, model_server):
    make, workers = env
    metrics_port = free_port()
    settings, store, app = make(worker_metrics_port=metrics_port)
    workers.append(WorkerProcess(settings, tmp_path, concurrency=3))
    workers[0].wait_ready()
    tree = class_tree(photos, tmp_path / "photos")
    (tmp_path / "photos" / "class_243" / "notes.jpg").write_text("not an image")  # fails alone

    job_id = submit_job(app, store, {"kind": "directory", "directory": str(tree)})
    job = wait_for_job(store, job_id, workers=workers)
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 21, 20, 1)
    assert "notes.jpg" in job["errors"][0]["item"] and job["errors"][0]["error"]

    model_key = "effnet_lite0:1"
    info = wait_for_index(store, model_key, 20)
    assert info["count"] == 20
    record = store.get_image(image_id(photos[0].read_bytes()))
    assert record["status"] == "indexed" and record["label"] == f"class_{imagenet_label(photos[0]):03d}"
    assert (record["width"], record["height"]) == open_rgb(photos[0]).size
    assert (settings.data_dir / "originals" / record["id"][:2] / record["id"]).read_bytes() == photos[0].read_bytes()

    client = ModelClient(model_server, "effnet_lite0", version=1)
    searcher = Searcher(store, model_key, settings.index_dir)
    misses = []
    for p in photos:
        original = open_rgb(p)
        for edit in COPY_EDITS:
            query = transforms.to_jpeg_bytes(transforms.TRANSFORMS[edit](original))
            vector = client.embed(load_for_model(query, 224)[None])[0]
            best, score = searcher.search(vector, k=1)[0]
            if best != image_id(p.read_bytes()):
                misses.append((p.name, edit, score))
    client.close()
    assert not misses, f"copies not found at rank 1: {misses}"

    metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'vsearch_worker_tasks_total{outcome="success",task="worker.tasks.ingest"}' in metrics
    images_embedded = [line for line in metrics.splitlines() if line.startswith("vsearch_worker_batch_images_sum")]
    assert images_embedded and float(images_embedded[0].split()[-1]) == 20

    # the same tree again: every image is a duplicate, nothing is indexed twice
    again = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(tree)}),
                         workers=workers)
    assert (again["done"], again["duplicates"], again["failed"]) == (20, 20, 1)
    assert store.count_vectors(model_key) == 20

    # a recompressed copy is a new image (other bytes), recorded as a near-duplicate of its original
    copies = tmp_path / "copies"
    copies.mkdir()
    (copies / "copy.jpg").write_bytes(transforms.to_jpeg_bytes(open_rgb(photos[0]), quality=70))
    near = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(copies)}),
                        workers=workers)
    original = image_id(photos[0].read_bytes())
    assert (near["done"], near["near_duplicates"]) == (1, 1)
    assert near["near_duplicate_items"][0]["near_duplicate_of"] == original
    copy_id = image_id((copies / "copy.jpg").read_bytes())
    assert store.get_image(copy_id)["near_duplicate_of"] == original


def variants(photos, root):
    """Three distinct files (different bytes) per photo."""
    root.mkdir()
    paths = []
    for p in photos:
        im = open_rgb(p)
        for i, factor in enumerate((1.0, 1.15, 0.85)):
            out = root / f"{p.stem}_v{i}.jpg"
            ImageEnhance.Brightness(im).enhance(factor).save(out, quality=90)
            paths.append(out)
    return paths


def test_killing_a_worker_mid_job_loses_nothing_and_indexes_once(env, photos, tmp_path):
    make, workers = env
    settings, store, app = make(task_visibility_timeout_s=6, ingest_chunk=3)
    victim = WorkerProcess(settings, tmp_path, queues="ingest", concurrency=2, name="victim")
    victim.wait_ready()
    paths = variants(photos, tmp_path / "many")
    job_id = submit_job(app, store, {"kind": "directory", "directory": str(tmp_path / "many")})
    deadline = time.monotonic() + 120
    while (store.get_job(job_id) or {}).get("done", 0) < 6:
        assert time.monotonic() < deadline, victim.log()[-3000:]
        time.sleep(0.05)
    victim.kill()
    assert store.get_job(job_id)["state"] == "running"
    # the victim died holding messages it had not acknowledged: they must come back
    assert store.redis.hlen(settings.redis_prefix + "unacked") > 0
    workers.append(WorkerProcess(settings, tmp_path, concurrency=2, name="survivor"))
    workers[0].wait_ready()

    job = wait_for_job(store, job_id, timeout_s=180, workers=workers)
    assert (job["state"], job["total"], job["done"], job["failed"]) == ("done", 60, 60, 0), job
    model_key = "effnet_lite0:1"
    ids = {image_id(p.read_bytes()) for p in paths}
    assert len(ids) == 60 and store.count_vectors(model_key) == 60
    assert store.redis.zcard(store.key("added", model_key)) == 60  # each vector written once
    assert all(store.get_image(i)["status"] == "indexed" for i in ids)
    wait_for_index(store, model_key, 60)


def test_messages_lost_with_a_worker_are_sent_again(env, photos, tmp_path):
    """Kombu's Redis transport pops a message before recording it as unacknowledged: a worker killed
    in between loses it. Both kinds of job message are lost here on purpose; the watchdog that every
    worker runs sends them again once the queue is empty and the job has made no progress for the
    visibility timeout."""
    make, workers = env
    settings, store, app = make(task_visibility_timeout_s=2, ingest_chunk=4)
    folder = tmp_path / "start-lost"
    folder.mkdir()
    for p in photos[:6]:
        shutil.copy(p, folder / p.name)
    start_lost = submit_job(app, store, {"kind": "directory", "directory": str(folder)})
    with app.connection_for_write() as conn:  # no worker yet: the job's start message, popped and dropped
        assert conn.default_channel.basic_get(INGEST_QUEUE, no_ack=True) is not None

    # A job whose start ran and saved its three chunks, but whose last chunk message never arrived.
    chunk_lost = "chunk-lost"
    items = [Item(key=p.name, source=p.name, path=str(p)).to_json() for p in photos[6:16]]
    chunks = [items[:4], items[4:8], items[8:]]
    store.create_job(chunk_lost, None, "directory")
    store.save_job_chunks(chunk_lost, chunks)
    store.start_job(chunk_lost, total=len(items))
    for chunk in chunks[:2]:
        app.send_task("worker.tasks.ingest", args=[chunk_lost, chunk])

    workers.append(WorkerProcess(settings, tmp_path, concurrency=2))
    workers[0].wait_ready()
    for job_id, total in ((start_lost, 6), (chunk_lost, 10)):
        job = wait_for_job(store, job_id, timeout_s=60, workers=workers)
        assert (job["state"], job["total"], job["done"], job["failed"], job["resent"]) == ("done", total, total, 0, 1)
    assert store.count_vectors("effnet_lite0:1") == 16
    assert "sent 1 message(s) again" in workers[0].log()


def test_index_rebuilds_come_when_fresh_items_reach_half_the_index(store):
    """Between 2,000 and 10,000 fresh items: the build work of a job grows with what it adds."""
    from worker.planning import rebuild_due
    model, added = "m:1", 0

    def add(n):
        nonlocal added
        ids = [f"i{added + k}" for k in range(n)]
        store.create_images([(i, {"source": i}) for i in ids])
        store.put_vectors(model, ids, np.ones((n, 4), np.float32))
        added += n

    def publish(count):
        store.publish_index(model, {"version": store.reserve_index_version(model), "path": "x.ann", "count": count,
                                    "dim": 4, "size": 1, "built_at": time.time(), "max_seq": store.current_seq(),
                                    "n_trees": 1})

    add(1999)
    assert not rebuild_due(store, model)  # no index yet: the minimum
    add(1)
    assert rebuild_due(store, model)
    publish(10_000)
    add(4999)
    assert not rebuild_due(store, model)  # half of 10,000
    add(1)
    assert rebuild_due(store, model)
    publish(100_000)
    add(9999)
    assert not rebuild_due(store, model)  # the maximum
    add(1)
    assert rebuild_due(store, model)
