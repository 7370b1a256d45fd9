"""The Celery configuration shared by the workers and every sender (gateway, CLI): one place for it.

Queues: `ingest` (decode, resize, embed, store: any number of workers) and `index` (Annoy builds: one
consumer, `vsearch worker --queues index --concurrency 1`). Tasks are idempotent (image id = SHA-256
of the bytes), so they are acknowledged late and a task whose worker dies is delivered again; index
builds are the exception (acked on receipt, see worker/tasks.py): a build may outlast the visibility
timeout and must not run twice.

The broker is `Settings.broker` (`VSEARCH_BROKER_URL`, else the records' Redis):
- Redis: keys under the records' prefix; a message unacknowledged for the visibility timeout comes
  back (kombu's Redis transport can lose a message popped by a worker killed at once: worker.watchdog).
- RabbitMQ (`amqp://`): durable quorum queues (replicated on a RabbitMQ cluster), persistent messages,
  publisher confirms. A dead consumer's unacknowledged messages are requeued by the server as soon as
  its connection drops. Countdowns (retry backoff) use RabbitMQ's native delayed delivery, which needs
  topic exchanges.
"""
from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from services.config import Settings

INGEST_QUEUE = "ingest"
INDEX_QUEUE = "index"
# Task names: the contract between senders and the worker (worker/tasks.py registers them).
START_JOB_TASK = "worker.tasks.start_job"
INGEST_TASK = "worker.tasks.ingest"
BUILD_INDEX_TASK = "worker.tasks.build_index"
# A duplicate scan (worker/duplicate_tasks.py): its start, one range of images, the grouping step.
SCAN_DUPLICATES_TASK = "worker.tasks.scan_duplicates"
SCAN_RANGE_TASK = "worker.tasks.scan_duplicates_range"
SCAN_GROUPING_TASK = "worker.tasks.scan_duplicates_group"


def is_amqp(url: str) -> bool:
    return url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def make_celery(settings: Settings | None = None, include: tuple[str, ...] = ()) -> Celery:
    """A Celery app on the configured broker. Senders need no task code: they send tasks by name
    (`services.jobs`); the worker passes its task modules in `include`."""
    settings = settings or Settings.from_env()
    app = Celery("vsearch", include=list(include))
    app.conf.update(
        broker_url=settings.broker,
        # Task results are not read by anyone: no result backend (the job records hold the outcome).
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=INGEST_QUEUE,
        task_routes={BUILD_INDEX_TASK: {"queue": INDEX_QUEUE}},
        task_time_limit=settings.task_time_limit_s,
        task_soft_time_limit=settings.task_time_limit_s - 30,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    app.conf.update(_amqp_options() if is_amqp(settings.broker) else _redis_options(settings))
    app.conf.vsearch_settings = settings
    return app


def _redis_options(settings: Settings) -> dict:
    return dict(
        # The broker's keys share the configured prefix, so several deployments (or test runs)
        # can share one Redis.
        broker_transport_options={
            "global_keyprefix": settings.redis_prefix,
            # A task not acknowledged within this time (its worker died) is delivered again.
            "visibility_timeout": settings.task_visibility_timeout_s,
            # ...and the sweep that redelivers it runs this often (kombu's default is ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.task_visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
        },
    )


def _amqp_options() -> dict:
    quorum = {"x-queue-type": "quorum"}
    return dict(
        task_queues=[Queue(name, Exchange(name, type="topic"), routing_key=name, durable=True,
                           queue_arguments=quorum)
                     for name in (INGEST_QUEUE, INDEX_QUEUE)],
        task_default_exchange_type="topic",
        task_default_delivery_mode="persistent",
        # A publish returns once the broker has the message (on a quorum queue: on a majority).
        broker_transport_options={"confirm_publish": True},
        # Stop delivering to workers that stop reading (a hung worker's prefetch returns).
        broker_heartbeat=30,
    )
