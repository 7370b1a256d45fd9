"""The worker's Celery app: the shared configuration (services.broker) plus the task modules."""
from __future__ import annotations

from celery import Celery

from services.broker import make_celery as _make_celery
from services.config import Settings


def make_celery(settings: Settings | None = None) -> Celery:
    return _make_celery(settings, include=("worker.tasks", "worker.duplicate_tasks", "worker.watchdog"))
