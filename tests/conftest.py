"""Shared fixtures: real photos, an exported default model, a running model server.

Everything here is real: the model is exported from the packaged weights once per session and served
by `vsearch model-server` in a subprocess, as in production.
"""
from __future__ import annotations

import contextlib
import http.server
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelserver.process import (  # noqa: F401  (tests import these from here)
    free_port, start_model_server, stop_process, wait_for_model_server,
)

ROOT = Path(__file__).resolve().parent.parent


def imagenet_photos() -> list[Path]:
    """The 20 real ImageNet photos shipped in foolbox; the class index is the file name's last part."""
    from cli.demo import sample_photos
    return sample_photos()


def imagenet_label(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A test server's request handler: no access log, and `send` for a whole answer."""

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", **headers):
        """Headers by keyword, underscores for dashes (Content_Type="image/png")."""
        self.send_response(status)
        headers.setdefault("Content_Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serving_image(data: bytes, path: str = "/copy.jpg"):
    """Serves `data` as a JPEG over HTTP on 127.0.0.1 (any path answers); yields the URL of `path`."""
    class Handler(QuietHandler):
        def do_GET(self):
            self.send(200, data, Content_Type="image/jpeg")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real 3-primary Redis Cluster (one replica each) on loopback ports, one per session."""
    import shutil
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary")
    from tests.redis_cluster import LocalCluster
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=("redis", "cluster"))
def records_url(request):
    """Each record store in turn: the test Redis, and a Redis Cluster."""
    from tests.workers import TEST_REDIS_URL
    return TEST_REDIS_URL if request.param == "redis" else request.getfixturevalue("redis_cluster").url


@pytest.fixture
def store(records_url, tmp_path_factory):
    """A Store under a key prefix of its own (single Redis and cluster), removed afterwards; its
    segment files in a directory of their own (tests list what they write to tmp_path)."""
    import uuid

    from services.store import Store
    from services.store.connection import connect
    from tests.workers import drop_prefix
    client = connect(records_url)
    prefix = f"test:{uuid.uuid4().hex}:"
    yield Store(client, prefix, tmp_path_factory.mktemp("vectors"))
    drop_prefix(client, Store(client, prefix).prefix)
    client.close()


@pytest.fixture(params=("redis", "rabbitmq"))
def broker_url(request):
    """Each broker in turn: None (the records' Redis) and a RabbitMQ virtual host of the test's own."""
    if request.param == "redis":
        yield None
        return
    import shutil
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs RabbitMQ (rabbitmqctl)")
    from tests.workers import rabbitmq_vhost
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return imagenet_photos()


@pytest.fixture(scope="session")
def model_base(tmp_path_factory) -> Path:
    from model_export.export import export_model
    base = tmp_path_factory.mktemp("models")
    export_model(model="effnet_lite0", out=base, version=1)
    return base


@pytest.fixture(scope="session")
def model_server(model_base) -> str:
    port = free_port()
    proc = start_model_server(model_base, port)
    yield f"127.0.0.1:{port}"
    stop_process(proc)


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> str:
    """A Milvus API server (Milvus Lite's engine) for the session; deployments keep apart by their
    Redis prefix, which names their Milvus collections."""
    from tests.workers import start_milvus_lite
    proc, uri = start_milvus_lite(tmp_path_factory.mktemp("milvus"))
    yield uri
    stop_process(proc)


@dataclass
class Deployment:
    """A gateway app (Flask test client) and a real worker process on a Redis namespace of their own."""
    settings: object
    app: object
    worker: object
    tmp: Path

    def client(self):
        return self.app.test_client()


@pytest.fixture(scope="module")
def deployment(request, tmp_path_factory, model_server) -> Deployment:
    """One deployment per test module. The module's `DEPLOYMENT` dict overrides settings; its
    `worker_concurrency` entry sets the worker's threads (default 2)."""
    from gateway import create_app
    from tests.workers import WorkerProcess, drop_keys, isolated_settings
    overrides = dict(getattr(request.module, "DEPLOYMENT", {}))
    concurrency = overrides.pop("worker_concurrency", 2)
    tmp = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    settings = isolated_settings(tmp, model_server, **overrides)
    worker = WorkerProcess(settings, tmp, concurrency=concurrency)
    try:
        worker.wait_ready()
        yield Deployment(settings, create_app({"SETTINGS": settings, "TESTING": True}), worker, tmp)
    finally:
        worker.stop()
        drop_keys(settings)


@pytest.fixture
def client(deployment):
    return deployment.client()


@pytest.fixture(scope="session")
def hostile(tmp_path_factory, model_server, photos):
    """The stack of tests/hostile.py (gunicorn gateways, a worker), shared by the hostile suites."""
    from tests.hostile import start_stack, stop_stack
    stack = start_stack(tmp_path_factory.mktemp("hostile"), model_server, photos)
    yield stack
    stop_stack(stack)
