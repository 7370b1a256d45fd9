"""The gateway's long-lived resources, one set per process: store, model client, searcher, Celery.

Made on first use (after gunicorn forks) and shared by the request threads of the process.
"""
from __future__ import annotations

import threading
from functools import cached_property

from celery import Celery
from flask import Flask, current_app

from services.context import Context
from worker.celery_app import make_celery


class Resources(Context):
    @cached_property
    def celery(self) -> Celery:
        return make_celery(self.settings)


_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.extensions["vsearch"] = None


def get() -> Resources:
    app = current_app._get_current_object()
    with _lock:
        if app.extensions.get("vsearch") is None:
            app.extensions["vsearch"] = Resources(app.config["SETTINGS"])
        return app.extensions["vsearch"]
