"""Test helpers that run the real thing: an isolated Redis namespace and Celery worker processes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import fields, replace
from pathlib import Path

import requests

from services.config import PREFIX, Settings
from modelserver.process import free_port, stop_process
from tests.conftest import ROOT

TEST_REDIS_URL = os.environ.get("VSEARCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_RABBITMQ_URL = os.environ.get("VSEARCH_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def rabbitmq_vhost():
    """A RabbitMQ virtual host of its own (its queues isolated from other runs): yields its URL."""
    vhost = f"test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield TEST_RABBITMQ_URL.rstrip("/") + "/" + vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def isolated_settings(tmp_path: Path, model_server: str, **overrides) -> Settings:
    """Settings with a Redis key prefix of their own and a fresh data directory."""
    base = Settings(redis_url=TEST_REDIS_URL, redis_prefix=f"test-{uuid.uuid4().hex[:12]}:",
                    model_server=model_server, data_dir=tmp_path / "data", allowed_roots=(tmp_path.resolve(),),
                    allow_private_urls=True)
    return replace(base, **overrides)


def settings_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, tuple):  # paths by os.pathsep, other lists by commas
            value = (os.pathsep if f.type.startswith("tuple[Path") else ",").join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[PREFIX + f.name.upper()] = str(value)
    return env


def drop_keys(settings: Settings) -> None:
    """Removes a deployment's records, and its broker's keys when the broker is the records' Redis."""
    from services.store import Store
    store = Store.from_settings(settings)
    try:
        drop_prefix(store.redis, store.prefix)
        if settings.broker_url is None:
            drop_prefix(store.redis, settings.redis_prefix)
    finally:
        store.redis.close()


def drop_prefix(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
    for i in range(0, len(keys), 1000):
        pipe = client.pipeline(transaction=False)  # one DEL per key: on a cluster keys may lie apart
        for key in keys[i:i + 1000]:
            pipe.delete(key)
        pipe.execute()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class WorkerProcess:
    """`vsearch worker` in a subprocess, with its log in a file."""

    def __init__(self, settings: Settings, log_dir: Path, queues: str = "ingest,index", concurrency: int = 2,
                 name: str | None = None):
        self.name = name or f"w{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"{self.name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "-Q", queues, "-c", str(concurrency),
             "-n", f"{self.name}@%h"],
            cwd=ROOT, env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        stop_process(self.proc, timeout_s=15)
        if not self._log.closed:
            self._log.close()


def start_gateway(settings: Settings, workers: int = 2, threads: int = 8,
                  timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """The gateway under gunicorn on a free loopback port, returned once /readyz answers 200:
    (the process, the API's base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:gateway.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers),
         "--threads", str(threads), "gateway:create_app()"],
        cwd=ROOT, env=settings_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"the gateway did not become ready (exit code {proc.returncode})")
        time.sleep(0.2)


def wait_until(predicate, timeout_s: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout_s} s")


def wait_for_job(store, job_id: str, timeout_s: float = 180, workers=()) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job and job["state"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    logs = "\n".join(w.log()[-3000:] for w in workers)
    raise TimeoutError(f"job {job_id} not finished: {store.get_job(job_id)}\n{logs}")


def wait_for_index(store, model_key: str, count: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = store.get_index_info(model_key)
        if info and info["count"] >= count:
            return info
        time.sleep(0.2)
    raise TimeoutError(f"index of {model_key} never reached {count}: {store.get_index_info(model_key)}")


def start_milvus_lite(data_dir: Path, timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """`milvus-lite server` (Milvus's API, embedded engine) on a free loopback port, shared by every
    process of a test deployment as a Milvus server would be: (the process, its URI)."""
    import socket
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"milvus-lite server did not start (exit code {proc.returncode})")
            time.sleep(0.2)


def index_class_folders(deployment, photos, tree: Path, headers=None) -> dict:
    """Indexes `photos` through the API as one directory job over a folder-per-class tree made
    under `tree` (the ImageNet class as the label); returns the finished job."""
    from tests.conftest import imagenet_label
    for p in photos:
        folder = tree / f"class_{imagenet_label(p):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    response = deployment.client().post("/api/v1/jobs", json={"directory": str(tree)}, headers=headers)
    assert response.status_code == 202, response.json
    from services.store import Store
    return wait_for_job(Store.from_settings(deployment.settings), response.json["job_id"], workers=[deployment.worker])
