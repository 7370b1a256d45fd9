"""Running `vsearch model-server` as a child process and waiting until it serves: used by the
tests, the benchmarks and the quality harness (the launcher supervises its own children)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from services.tfs_client import ModelClient, ModelServerError

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_model_server(model_base: Path, port: int, *extra: str, timeout_s: float = 90) -> subprocess.Popen:
    """Starts the server on 127.0.0.1:`port` and returns once it reports an available version."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "model-server", "--model-base", str(model_base),
         "--host", "127.0.0.1", "--port", str(port), "--poll-s", "0", *extra],
        cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_model_server(f"127.0.0.1:{port}", proc, timeout_s)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def wait_for_model_server(target: str, proc: subprocess.Popen | None = None, timeout_s: float = 90,
                          model: str = "effnet_lite0") -> None:
    client = ModelClient(target, model, timeout_s=2)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"model server exited: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
            try:
                if client.available_versions(timeout_s=1):
                    return
            except ModelServerError:
                time.sleep(0.2)
        raise TimeoutError(f"model server at {target} not ready after {timeout_s}s")
    finally:
        client.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it is still running after `timeout_s`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@contextlib.contextmanager
def running_model_server(model_base: Path, port: int, *extra: str):
    """`with running_model_server(base, port) as target:` -> "127.0.0.1:port"."""
    proc = start_model_server(model_base, port, *extra)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)
