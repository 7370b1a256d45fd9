"""The Celery application: Redis broker and result backend from `Settings`, one place for the config.

Queues: `ingest` (decode, resize, embed, store: any number of workers) and `index` (Annoy builds: one
consumer, `vsearch worker --queues index --concurrency 1`). Tasks are idempotent (image id = SHA-256
of the bytes), so they are acknowledged late and a task whose worker dies is delivered again.
"""
from __future__ import annotations

from celery import Celery

from services.config import Settings

INGEST_QUEUE = "ingest"
INDEX_QUEUE = "index"


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("vsearch", include=["worker.tasks", "worker.duplicate_tasks", "worker.watchdog"])
    app.conf.update(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        # Keys of the broker and of results share the configured prefix, so several
        # deployments (or test runs) can share one Redis.
        broker_transport_options={
            "global_keyprefix": settings.redis_prefix,
            # A task not acknowledged within this time (its worker died) is delivered again.
            "visibility_timeout": settings.task_visibility_timeout_s,
            # ...and the sweep that redelivers it runs this often (kombu's default is ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.task_visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"global_keyprefix": settings.redis_prefix},
        result_expires=24 * 3600,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=INGEST_QUEUE,
        task_routes={"worker.tasks.build_index": {"queue": INDEX_QUEUE}},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s - 30,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    app.conf.vsearch_settings = settings
    return app
