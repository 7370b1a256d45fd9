"""`vsearch up` and `vsearch demo` for real, as subprocesses: roles start, a dead role comes back,
the client commands work against it, Ctrl-C (SIGTERM) stops everything."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from evaluation import transforms
from services.store import image_id
from tests.conftest import ROOT, free_port, imagenet_label
from tests.workers import drop_keys, isolated_settings, settings_env


def vsearch(*args, env, cwd, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def up(tmp_path, model_base):
    port = free_port()
    settings = isolated_settings(tmp_path, f"127.0.0.1:{free_port()}", model_base=model_base)
    env = settings_env(settings) | {"VSEARCH_GATEWAY_URL": f"http://127.0.0.1:{port}", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "up.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "up", "--port", str(port), "--concurrency", "2"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while "vsearch is up" not in (tmp_path / "up.log").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
        time.sleep(0.3)
    yield proc, env, tmp_path, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    log.close()
    drop_keys(settings)


def pid_of(log_text: str, role: str) -> int:
    return int(re.findall(rf"started {role} \(pid (\d+)\)", log_text)[-1])


def test_up_serves_restarts_dead_roles_and_stops_cleanly(up, photos):
    proc, env, cwd, url = up
    tree = cwd / "photos"
    for p in photos[:8]:
        (tree / f"class_{imagenet_label(p)}").mkdir(parents=True, exist_ok=True)
        (tree / f"class_{imagenet_label(p)}" / p.name).write_bytes(p.read_bytes())

    indexed = vsearch("index", str(tree), env=env, cwd=cwd)
    assert indexed.returncode == 0, indexed.stderr
    assert "8 indexed" in indexed.stdout and "0 failed" in indexed.stdout

    with Image.open(photos[2]) as im:
        (cwd / "copy.jpg").write_bytes(transforms.to_jpeg_bytes(transforms.mirror(im.convert("RGB"))))
    found = vsearch("search", "--img-file", str(cwd / "copy.jpg"), "-k", "3", "--out", str(cwd / "row.png"),
                    env=env, cwd=cwd)
    assert found.returncode == 0, found.stderr
    assert image_id(photos[2].read_bytes())[:12] in found.stdout.splitlines()[1]
    with Image.open(cwd / "row.png") as row:
        assert row.size[0] > 3 * 160
    # without the gateway: the same answer, and thumbnails made for results nobody viewed yet
    local = vsearch("search", "--local", "--img-file", str(cwd / "copy.jpg"), "-k", "8", "--out",
                    str(cwd / "row-local.png"), env=env, cwd=cwd)
    assert local.returncode == 0, local.stderr
    assert image_id(photos[2].read_bytes())[:12] in local.stdout.splitlines()[1]

    # kill a worker and the model server: both come back and the system works again
    log = (cwd / "up.log").read_text()
    for role in ("worker-1", "model-server"):
        os.kill(pid_of(log, role), signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        log = (cwd / "up.log").read_text()
        if all(f"{r} exited with code -9; restarting it" in log for r in ("worker-1", "model-server")):
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
        assert time.monotonic() < deadline, log
        time.sleep(0.5)
    again = vsearch("index", str(photos[9]), env=env, cwd=cwd)
    assert again.returncode == 0 and "1 indexed" in again.stdout, again.stdout + again.stderr

    pids = [pid_of(log, r) for r in ("worker-1", "model-server", "index-builder", "gateway")]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_indexes_the_samples_and_finds_the_edited_copy(tmp_path, model_base):
    settings = isolated_settings(tmp_path, f"127.0.0.1:{free_port()}", model_base=model_base)
    env = settings_env(settings) | {"PYTHONPATH": str(ROOT)}
    try:
        demo = vsearch("demo", "--exit", "--port", str(free_port()), env=env, cwd=tmp_path, timeout=300)
    finally:
        drop_keys(settings)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "20 indexed" in demo.stdout and "0 failed" in demo.stdout
    first = demo.stdout.split("an edited copy of ")[1]
    name = first.split(")")[0]
    assert name in first.splitlines()[1], demo.stdout  # rank 1 is the photo the copy was made from
    assert (tmp_path / "var" / "demo-results.png").exists()
