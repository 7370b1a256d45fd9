"""Celery entry point: `celery -A worker.app worker` (or `vsearch worker`)."""
from services.process import configure_process

configure_process()

from worker.celery_app import make_celery  # noqa: E402  (after the process settings)

app = make_celery()
