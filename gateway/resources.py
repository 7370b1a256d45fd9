"""The gateway's `services.context.Context`, one per process: made on first use (after gunicorn
forks) and shared by the request threads of the process."""
from __future__ import annotations

import threading

from flask import Flask, current_app

from services.context import Context

_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.extensions["vsearch"] = None


def get() -> Context:
    app = current_app._get_current_object()
    with _lock:
        if app.extensions.get("vsearch") is None:
            app.extensions["vsearch"] = Context(app.config["SETTINGS"])
        return app.extensions["vsearch"]
