"""Shared fixtures: real photos, an exported default model, a running model server.

Everything here is real: the model is exported from the packaged weights once per session and served
by `vsearch model-server` in a subprocess, as in production.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imagenet_photos() -> list[Path]:
    """The 20 real ImageNet photos shipped in foolbox; the class index is the file name's last part."""
    import foolbox
    return sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg"))


def imagenet_label(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return imagenet_photos()


@pytest.fixture(scope="session")
def model_base(tmp_path_factory) -> Path:
    from model_export.export import export_model
    base = tmp_path_factory.mktemp("models")
    export_model(model="effnet_lite0", out=base, version=1)
    return base


def start_model_server(model_base: Path, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "model-server", "--model-base", str(model_base),
         "--host", "127.0.0.1", "--port", str(port), "--poll-s", "0", *extra],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_model_server(f"127.0.0.1:{port}", proc)
    return proc


def wait_for_model_server(target: str, proc: subprocess.Popen | None = None, timeout_s: float = 90) -> None:
    from services.tfs_client import ModelClient, ModelServerError
    client = ModelClient(target, "effnet_lite0", timeout_s=2)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"model server exited: {proc.stderr.read()[-2000:]}")
            try:
                if client.available_versions(timeout_s=1):
                    return
            except ModelServerError:
                time.sleep(0.2)
        raise TimeoutError(f"model server at {target} not ready after {timeout_s}s")
    finally:
        client.close()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(scope="session")
def model_server(model_base) -> str:
    port = free_port()
    proc = start_model_server(model_base, port)
    yield f"127.0.0.1:{port}"
    stop_process(proc)
