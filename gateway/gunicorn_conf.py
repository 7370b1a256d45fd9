"""gunicorn settings of the gateway: `gunicorn -c python:gateway.gunicorn_conf 'gateway:create_app()'`.

Prometheus multiprocess collection. Each gunicorn worker is a process with metric values of its
own, so a scrape answered by one of them saw only its share. With this file every worker writes
its values to files in PROMETHEUS_MULTIPROC_DIR (a fresh folder per start unless the variable is
set) and /metrics adds them up (gateway/metrics.py). prometheus_client chooses where values live
when it is first imported, so the variable is set before any worker starts, and this module does
not import prometheus_client before that.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_made: list[Path] = []


def on_starting(server) -> None:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        _made.append(Path(tempfile.mkdtemp(prefix="vsearch-metrics-")))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_made[0])
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # an earlier run's values are not this run's
        stale.unlink()


def on_exit(server) -> None:
    for folder in _made:
        shutil.rmtree(folder, ignore_errors=True)


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)  # its live gauges go; its counters stay counted
