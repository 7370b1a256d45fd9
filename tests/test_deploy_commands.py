"""The container commands that need no other service, run for real outside Docker: the one-shot
model export, redis-server, gunicorn with the gateway, a worker answering its healthcheck, the TF
Serving and model-server healthchecks against stand-ins. An import failure is a failure."""
from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time

import pytest
import yaml

from tests.conftest import ROOT, free_port, stop_process
from tests.deploy_files import (
    EXPORT_ONCE, GATEWAY_PORT, GRPC_PORT, MODEL_SERVER_OVERRIDE, REST_PORT,
    _FakeTFServingStatus, _redis_reachable, environment, option_value, service,
    venv_env,
)


@pytest.fixture(scope="module")
def one_shot_export(tmp_path_factory):
    """The model-export service's command, run here into a temporary models folder."""
    base = tmp_path_factory.mktemp("models")
    command = service("model-export")["command"]
    local = [str(EXPORT_ONCE)] + [str(base) if t == option_value(command, "--out") else t for t in command[1:]]
    env = venv_env(VSEARCH_MODEL_BASE=str(base))
    first = subprocess.run(local, cwd=base, env=env, capture_output=True, text=True, timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    return base, local, env


@pytest.mark.slow
def test_model_export_one_shot_exports_once_then_does_nothing(one_shot_export):
    base, local, env = one_shot_export
    command = service("model-export")["command"]
    version_dir = base / option_value(command, "--model") / option_value(command, "--version")
    pb = version_dir / "saved_model.pb"
    assert pb.is_file() and (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    written = pb.stat().st_mtime_ns
    second = subprocess.run(local, cwd=base, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "nothing to do" in second.stdout
    assert pb.stat().st_mtime_ns == written
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [version_dir.name]


def test_export_once_passes_the_command_through_and_its_failure_too(tmp_path):
    env = venv_env(VSEARCH_MODEL_BASE=str(tmp_path))
    ran = subprocess.run([str(EXPORT_ONCE), "sh", "-c", "echo ran; exit 3", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=10)
    assert (ran.returncode, ran.stdout.strip()) == (3, "ran")
    (tmp_path / "effnet_lite0" / "1").mkdir(parents=True)
    skipped = subprocess.run([str(EXPORT_ONCE), "false", "--out", str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=10)
    assert skipped.returncode == 0 and "nothing to do" in skipped.stdout
    forced = subprocess.run([str(EXPORT_ONCE), "false", "--out", str(tmp_path), "--overwrite"], env=env,
                            capture_output=True, text=True, timeout=10)
    assert forced.returncode == 1


def test_redis_command_runs_with_persistence(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed here")
    command = service("redis")["command"]
    port = free_port()
    local = [server if t == "redis-server" else str(tmp_path) if t == option_value(command, "--dir") else t
             for t in command] + ["--port", str(port), "--bind", "127.0.0.1", "--daemonize", "no"]
    proc = subprocess.Popen(local, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import redis
        client = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.set("k", "v")
        client.close()
    finally:
        stop_process(proc)
    assert any(tmp_path.rglob("*.aof")), "append-only file written to --dir"


@pytest.mark.parametrize("state, healthy", [("AVAILABLE", True), ("LOADING", False), (None, False)])
def test_tfserving_healthcheck_needs_no_curl_and_wants_an_available_version(state, healthy):
    if shutil.which("bash") is None:
        pytest.skip("no bash here")
    test = service("tfserving")["healthcheck"]["test"]
    if state is None:
        port = free_port()  # nothing listens
        server = None
    else:
        handler = type("Handler", (_FakeTFServingStatus,), {"state": state})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        script = test[3].replace(f"/dev/tcp/127.0.0.1/{REST_PORT}", f"/dev/tcp/127.0.0.1/{port}")
        result = subprocess.run(test[1:3] + [script], capture_output=True, text=True, timeout=10)
        assert (result.returncode == 0) == healthy, result.stderr
    finally:
        if server:
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_model_server_override_command_serves_the_export_and_passes_its_healthcheck(one_shot_export, tmp_path):
    base, _, _ = one_shot_export
    override = yaml.safe_load(MODEL_SERVER_OVERRIDE.read_text())["services"]["tfserving"]
    command, test = override["command"], override["healthcheck"]["test"]
    port = free_port()
    local = [str(base) if t == option_value(command, "--model-base") else str(port) if t == str(GRPC_PORT) else t
             for t in command] + ["--host", "127.0.0.1"]
    assert test[:3] == ["CMD", "python", "-c"]
    probe = ["python", "-c", test[3].replace(f"127.0.0.1:{GRPC_PORT}", f"127.0.0.1:{port}")]
    env = venv_env()
    log_path = tmp_path / "model-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(local, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(probe, cwd=tmp_path, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, f"model server exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"healthcheck never passed:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_gateway_command_serves_and_passes_its_healthcheck(tmp_path):
    gateway = service("gateway")
    env = venv_env(**{**environment(gateway), "VSEARCH_DATA_DIR": str(tmp_path / "data"),
                      "VSEARCH_ALLOWED_ROOTS": str(tmp_path), "VSEARCH_REDIS_URL": "redis://127.0.0.1:1/0",
                      "VSEARCH_MODEL_SERVER": "127.0.0.1:1"})
    port = free_port()
    command = [t if t != f"0.0.0.0:{GATEWAY_PORT}" else f"127.0.0.1:{port}" for t in gateway["command"]]
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        probe = [t.replace(f":{GATEWAY_PORT}/", f":{port}/") for t in gateway["healthcheck"]["test"][1:]]
        deadline = time.monotonic() + 30
        while subprocess.run(probe, env=env, capture_output=True, timeout=10).returncode != 0:
            assert proc.poll() is None, f"gunicorn exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on /healthz:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.3)
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_index_builder_command_starts_and_answers_its_healthcheck(tmp_path):
    from tests.workers import TEST_REDIS_URL, drop_keys, isolated_settings, settings_env
    if not _redis_reachable(TEST_REDIS_URL):
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    settings = isolated_settings(tmp_path, "127.0.0.1:1")
    env = {**settings_env(settings), "PATH": venv_env()["PATH"]}
    indexer = service("indexer")
    log_path = tmp_path / "indexer.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(indexer["command"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, f"worker exited:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)
        check = indexer["healthcheck"]["test"]
        assert check[0] == "CMD-SHELL"
        probe = subprocess.run(["sh", "-c", check[1]], cwd=ROOT, env={**env, "HOSTNAME": socket.gethostname()},
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        other = subprocess.run(["sh", "-c", check[1].replace("-t 10", "-t 1")], cwd=ROOT,
                               env={**env, "HOSTNAME": "no-such-host"}, capture_output=True, text=True, timeout=60)
        assert other.returncode != 0, "the ping must name this worker"
    finally:
        stop_process(proc, timeout_s=20)
        drop_keys(settings)
