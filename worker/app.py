"""Celery entry point: `celery -A worker.app worker` (or `vsearch worker`)."""
from worker.celery_app import make_celery

app = make_celery()
