"""Keeping the gateway up under hostile clients: a deadline on reading request bodies, and a cap
on the expensive requests a process runs at once.

Body deadline: gunicorn's threads block in the socket read of a body; a client sending one byte a
second would hold a thread for as long as it likes. Before the app runs, the whole body is read
with the socket's timeout set to what is left of `request_body_timeout_s` (408 when it runs out),
and handed on spooled (in memory up to 1 MiB, then a temp file). Without gunicorn's socket (tests,
the dev server) the body is left alone.

Concurrency: POSTs to /api/v1 (search decodes and embeds; uploads hash and write) take a slot of
`max_concurrent_requests` per process; a request that finds none free within a second is answered
503 with Retry-After, instead of queueing without bound behind the others.
"""
from __future__ import annotations

import json
import socket
import tempfile
import threading
import time

from flask import Flask, g, request

from gateway.errors import ApiError

SLOT_WAIT_S = 1.0
_SPOOL_BYTES = 1024 * 1024
_READ = 64 * 1024


def init_app(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.request_body_timeout_s, app.config["MAX_CONTENT_LENGTH"])

    @app.before_request
    def _take_slot():
        if request.method == "POST" and request.path.startswith("/api/v1/"):
            if not slots.acquire(timeout=SLOT_WAIT_S):
                raise ApiError(503, "busy", "too many requests at once; try again shortly", {"Retry-After": "1"})
            g.slot = True

    @app.teardown_request
    def _give_back(_exc):
        if g.pop("slot", False):
            slots.release()


class BodyDeadline:
    """WSGI middleware: the request body read within `seconds`, or 408."""

    def __init__(self, app, seconds: float, max_bytes: int):
        self.app, self.seconds, self.max_bytes = app, seconds, max_bytes

    def __call__(self, environ, start_response):
        sock = environ.get("gunicorn.socket")
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if sock is None or not (chunked or length.isdigit() and 0 < int(length) <= self.max_bytes):
            return self.app(environ, start_response)  # no body, or one Flask refuses by its length
        try:
            body, size = self._read(environ["wsgi.input"], sock, int(length) if length else None)
        except TimeoutError:
            return _answer(start_response, "408 Request Timeout", "request_timeout",
                           f"the request body did not arrive within {self.seconds:g} s")
        if size > self.max_bytes:
            return _answer(start_response, "413 Request Entity Too Large", "request_entity_too_large",
                           f"the request body is larger than {self.max_bytes} bytes")
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = body, str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return self.app(environ, start_response)

    def _read(self, stream, sock: socket.socket, length: int | None):
        deadline = time.monotonic() + self.seconds
        previous = sock.gettimeout()
        body = tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
        size, limit = 0, self.max_bytes + 1 if length is None else length
        try:
            while size < limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                try:
                    chunk = stream.read(min(_READ, limit - size))
                except OSError as exc:  # socket.timeout is a TimeoutError; others: the client left
                    raise TimeoutError from exc
                if not chunk:
                    break
                body.write(chunk)
                size += len(chunk)
        finally:
            sock.settimeout(previous)
        body.seek(0)
        return body, size


def _answer(start_response, status: str, code: str, message: str):
    data = json.dumps({"error": {"code": code, "message": message}}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                            ("Connection", "close")])
    return [data]
