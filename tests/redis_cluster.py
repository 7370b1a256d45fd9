"""A real Redis Cluster on loopback ports for the tests: 3 primaries, each with one replica.

Nodes keep the production durability settings (AOF, fsync every second) and a short node timeout,
so a killed primary's replica is promoted within a few seconds.
"""
from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from modelserver.process import stop_process

NODE_TIMEOUT_MS = 1000


class LocalCluster:
    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 1):
        self.directory = directory
        self.ports = []
        while len(self.ports) < primaries * (1 + replicas):
            self.ports.append(_node_port(self.ports))
        self.procs: dict[int, subprocess.Popen] = {}
        for port in self.ports:
            self.start_node(port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self.wait_healthy()

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        log = open(node_dir / "redis.log", "a")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(node_dir)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(lambda: _ping(port), 10, f"redis-server on {port}")

    def primary_of(self, key: str) -> int:
        """The port of the primary serving `key`'s slot now."""
        client = RedisCluster(host="127.0.0.1", port=self._live_port())
        try:
            return client.get_node_from_key(key).port
        finally:
            client.close()

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def wait_healthy(self, timeout_s: float = 30) -> None:
        """Every live node says the cluster is ok and agrees on who serves each slot."""
        def healthy():
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            infos = [_cluster_info(p) for p in live]
            return all(i.get("cluster_state") == "ok" for i in infos) and len(
                {i.get("cluster_current_epoch") for i in infos}) == 1
        _wait(healthy, timeout_s, "the cluster healthy")

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)

    def _live_port(self) -> int:
        return next(p for p, proc in self.procs.items() if proc.poll() is None)


def _node_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000, so at most 65535) is free too."""
    while True:
        port = random.randint(20000, 40000)
        if port not in taken and all(_free(p) for p in (port, port + 10000)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ping(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.RedisError:
        return False


def _cluster_info(port: int) -> dict:
    try:
        return redis.Redis(port=port, socket_timeout=1).cluster("info")
    except redis.RedisError:
        return {}


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.1)
