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
        self.ports: list[int] = []
        self.bus_ports: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen] = {}
        try:
            while len(self.ports) < primaries * (1 + replicas):
                self.ports.append(self._start_new_node())
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", str(replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def _start_new_node(self, attempts: int = 5) -> int:
        """A node on fresh ports; a port taken between the check and the start means other ports."""
        for attempt in range(attempts):
            port, bus_port = _free_ports(2, taken=[*self.ports, *self.bus_ports.values()])
            self.bus_ports[port] = bus_port
            try:
                self.start_node(port)
                return port
            except NodeExited:
                del self.bus_ports[port]
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def start_node(self, port: int) -> None:
        """Start (or restart, after `kill`) the node on `port` and wait until it answers."""
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        log_path = node_dir / "redis.log"
        with open(log_path, "a") as log:
            proc = self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--cluster-port", str(self.bus_ports[port]),
                 "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(node_dir)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not _ping(port):
            if proc.poll() is not None:
                del self.procs[port]
                raise NodeExited(f"redis-server on {port} exited with {proc.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on {port} not answering after 30 s: {_tail(log_path)}")
            time.sleep(0.1)

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


class NodeExited(RuntimeError):
    pass


def _free_ports(count: int, taken: list[int]) -> list[int]:
    """Free loopback ports below the kernel's ephemeral range, so that no outgoing connection of
    this or another process is handed one of them between this check and the node's start."""
    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_ephemeral = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(10000, max(first_ephemeral, 12000) - 1)
        if port not in taken and port not in chosen and _free(port):
            chosen.append(port)
    return chosen


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return client.ping()
    except redis.RedisError:
        return False


def _cluster_info(port: int) -> dict:
    try:
        with redis.Redis(port=port, socket_timeout=1) as client:
            return client.cluster("info")
    except redis.RedisError:
        return {}


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.1)
