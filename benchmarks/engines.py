"""What each engine carries per ingested image, and how fast one instance of it takes that load.

    python benchmarks/engines.py [--images 4096] [--cluster]   # --cluster: also a local 3x2 Redis Cluster

Records: the store writes an ingest chunk of 32 images makes (create_images, put_vectors of 1280-d
float32 with layouts: segment files in a temporary directory, job_progress_many), from one client
and from 4 client threads (workers), on the test Redis (db 15, a fresh prefix) and, with --cluster,
on a local Redis Cluster.
Broker: ingest messages (32 items each, as start_job sends them) published with send_task and then
consumed with a late ack, on Redis and on RabbitMQ (a vhost of its own). Synthetic vectors, no model.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.broker import INGEST_QUEUE, INGEST_TASK, make_celery  # noqa: E402
from services.config import Settings  # noqa: E402
from services.store import Store  # noqa: E402
from services.store.connection import connect  # noqa: E402
from tests.workers import drop_prefix, rabbitmq_vhost  # noqa: E402

CHUNK, DIM = 32, 1280
REDIS_URL = "redis://127.0.0.1:6379/15"


def records_rate(url: str, images: int, threads: int) -> tuple[float, float]:
    """(images per second through the store writes of ingest, `threads` clients at once; Redis
    memory per image, every key of the records and the job counted)."""
    vector_dir = tempfile.mkdtemp(prefix="bench-vectors-")  # the segment files (services/store/segments.py)
    store = Store(connect(url), f"bench-{uuid.uuid4().hex[:8]}:", vector_dir)
    store.create_job("j", images, "items")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((CHUNK, DIM)).astype(np.float32)
    layouts = rng.standard_normal((CHUNK, 4, 256)).astype(np.float16)

    def work(part: int):
        for start in range(part * CHUNK, images, CHUNK * threads):
            ids = [f"{i:064x}" for i in range(start, start + CHUNK)]
            store.create_images([(i, {"source": i, "width": 300, "height": 250}) for i in ids])
            store.put_vectors("m:1", ids, vectors, layouts)
            store.job_progress_many("j", [{"item": i, "done": 1} for i in ids])

    t0 = time.perf_counter()
    runners = [threading.Thread(target=work, args=(p,)) for p in range(threads)]
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    rate = images / (time.perf_counter() - t0)
    assert store.get_job("j")["done"] == images
    size = sum(store.redis.memory_usage(k, samples=0) for k in store.redis.scan_iter(match=store.prefix + "*"))
    drop_prefix(store.redis, store.prefix)
    shutil.rmtree(vector_dir)
    return rate, size / images


def broker_rates(broker_url: str | None, messages: int) -> tuple[float, float]:
    """(published, consumed-and-acked) ingest messages per second."""
    settings = Settings(redis_url=REDIS_URL, redis_prefix=f"bench-{uuid.uuid4().hex[:8]}:", broker_url=broker_url)
    app = make_celery(settings)
    items = [{"key": f"photos/class_{i:03d}/image_{i:05d}.jpg", "source": f"photos/class_{i:03d}/image_{i:05d}.jpg",
              "path": f"/imports/photos/class_{i:03d}/image_{i:05d}.jpg", "label": f"class_{i:03d}"}
             for i in range(CHUNK)]
    with app.connection_for_write() as conn:
        producer = app.amqp.Producer(conn)
        app.send_task(INGEST_TASK, args=["warm-up", items], producer=producer)
        t0 = time.perf_counter()
        for _ in range(messages):
            app.send_task(INGEST_TASK, args=["job", items], producer=producer)
        published = messages / (time.perf_counter() - t0)
    got = 0
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.amqp.queues[INGEST_QUEUE])
        queue.get(timeout=10).ack()
        t0 = time.perf_counter()
        while got < messages:
            queue.get(timeout=10).ack()
            got += 1
        consumed = messages / (time.perf_counter() - t0)
        queue.close()
    if broker_url is None:
        drop_prefix(connect(REDIS_URL), settings.redis_prefix)
    return published, consumed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--cluster", action="store_true")
    args = parser.parse_args()
    out = {}
    record_stores = {"redis": REDIS_URL}
    cluster = None
    if args.cluster:
        from tests.redis_cluster import LocalCluster
        cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="bench-cluster-")))
        record_stores["redis-cluster"] = cluster.url
    try:
        for name, url in record_stores.items():
            for threads in (1, 4):
                rate, size = records_rate(url, args.images, threads)
                out[f"records {name}, {threads} client(s), images/s"] = round(rate)
            out[f"records {name}, bytes per image"] = round(size)
    finally:
        if cluster:
            cluster.stop()
    messages = args.images // CHUNK
    with rabbitmq_vhost() as amqp_url:
        for name, url in (("redis", None), ("rabbitmq", amqp_url)):
            published, consumed = broker_rates(url, messages)
            out[f"broker {name}, messages/s published"] = round(published)
            out[f"broker {name}, messages/s consumed+acked"] = round(consumed)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
