"""gunicorn settings of the gateway: `gunicorn -c python:gateway.gunicorn_conf 'gateway:create_app()'`.

Prometheus multiprocess collection. Each gunicorn worker is a process with metric values of its
own, so a scrape answered by one of them saw only its share. With this file every worker writes
its values to files in PROMETHEUS_MULTIPROC_DIR (a fresh folder per start unless the variable is
set) and /metrics adds them up (gateway/metrics.py). prometheus_client chooses where values live
when it is first imported, so the variable is set before any worker starts, and this module does
not import prometheus_client before that.

Errors gunicorn answers itself, before the app sees the request (a malformed request line or
header, a bad chunk size, a request line or headers over its limits), leave in the API's error
shape, `{"error": {"code", "message"}}` as JSON, instead of gunicorn's HTML page: its
`util.write_error`, which every worker calls for them, is replaced when this file is loaded.

`forwarder_headers` is empty: gunicorn's default lets a client at a trusted address (loopback by
default) set SCRIPT_NAME and PATH_INFO by header, so any local client could reroute a request, and
a SCRIPT_NAME the path does not start with was a 500. The API is never mounted under a prefix.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from gunicorn import util

forwarder_headers = ""
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


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's `util.write_error`, answering JSON in the API's error shape. Its 501 for a
    transfer coding it does not know is a 400: the request is refused, the server did not fail."""
    if status_int == 501:
        status_int, reason = 400, "Bad Request"
    body = json.dumps({"error": {"code": reason.lower().replace(" ", "_"), "message": mesg or reason}}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


util.write_error = write_json_error
