"""Prometheus metrics of a worker process, served on VSEARCH_WORKER_METRICS_PORT (0: off):
tasks by outcome, images per model batch, model-call latency."""
from __future__ import annotations

from celery.signals import task_failure, task_retry, task_success, worker_init
from prometheus_client import Counter, Histogram, start_http_server

TASKS = Counter("vsearch_worker_tasks_total", "Tasks finished, by task and outcome", ["task", "outcome"])
BATCH_IMAGES = Histogram("vsearch_worker_batch_images", "Images per model call",
                         buckets=(1, 2, 4, 8, 16, 24, 32, 64))
MODEL_SECONDS = Histogram("vsearch_worker_model_seconds", "Latency of one model call (embed a chunk)",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def _name(sender) -> str:
    return getattr(sender, "name", None) or str(sender)


@task_success.connect
def _success(sender=None, **_):
    TASKS.labels(_name(sender), "success").inc()


@task_failure.connect
def _failure(sender=None, **_):
    TASKS.labels(_name(sender), "failure").inc()


@task_retry.connect
def _retry(sender=None, **_):
    TASKS.labels(_name(sender), "retry").inc()


@worker_init.connect
def _serve(**_):
    from services.config import Settings
    port = Settings.from_env().worker_metrics_port
    if port:
        start_http_server(port)
