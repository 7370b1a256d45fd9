"""Celery tasks: thin wrappers over `worker.planning`, `worker.ingest` and `services.index`.

Tasks get ids, paths and URLs, never image bytes. Everything is idempotent, so tasks are acked
late; a model server that is down is retried with backoff, a Redis that is down makes the task's
own message come back (see `_redeliver_when_redis_is_down`); bad input fails its item at once and
is reported in the job.
"""
from __future__ import annotations

import functools
import time

import kombu.exceptions
import redis
from celery import current_app, shared_task
from celery.exceptions import Reject
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger

from services import sources
from services.index import request_build, run_coalesced_build
from services.tfs_client import ModelServerError, ModelServerUnavailable
from services import context
from services.broker import BUILD_INDEX_TASK, INGEST_TASK, START_JOB_TASK
from services.jobs import request_rebuild
from worker.ingest import Item, ingest_chunk
from worker.planning import plan_job, rebuild_due

logger = get_task_logger(__name__)
TRANSIENT = (ModelServerUnavailable,)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, kombu.exceptions.OperationalError, ConnectionError)
REDIS_BACKOFF_S = 2.0


@worker_process_init.connect
def _fresh_resources(**_):
    context.reset()


def _redeliver_when_redis_is_down(run):
    """Redis errors must not go through Celery's retry: a retry publishes a new message, which
    fails while Redis is down, and the failed publish then rejects the original message for good
    (a lost chunk, a job that never ends). Instead the original message is requeued, or, when Redis
    cannot take even that, stays unacknowledged and comes back after the visibility timeout."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except REDIS_DOWN as exc:
            time.sleep(REDIS_BACKOFF_S)  # no hot loop of redeliveries while Redis restarts
            raise Reject(exc, requeue=True) from exc
    return wrapper


@shared_task(bind=True, name=INGEST_TASK, acks_late=True, autoretry_for=TRANSIENT,
             retry_backoff=2, retry_backoff_max=60, retry_jitter=True, max_retries=10)
@_redeliver_when_redis_is_down
def ingest(self, job_id: str, items: list[dict]) -> dict:
    ctx = context.get_context()
    try:
        result = ingest_chunk(ctx, job_id, [Item(**i) for i in items])
    except ModelServerUnavailable as exc:
        if self.request.retries < self.max_retries:
            raise  # retried with backoff
        # Out of retries: report the items, or the job would wait for them forever.
        result = _fail_items(ctx, job_id, items, f"{exc} (gave up after {self.max_retries} retries)")
    except ModelServerError as exc:  # a model that refuses this input will refuse it again
        result = _fail_items(ctx, job_id, items, str(exc))
    _maybe_rebuild(ctx, job_id)
    return result


def _fail_items(ctx, job_id: str, items: list[dict], error: str) -> dict:
    for item in items:
        ctx.store.job_progress(job_id, item["key"], failed=1, error=error)
    return {"embedded": 0, "near_duplicates": 0}


def _maybe_rebuild(ctx, job_id: str) -> None:
    job = ctx.store.get_job(job_id)
    finished = job is not None and job["state"] in ("done", "failed")
    if finished or rebuild_due(ctx.store, ctx.model_key):
        request_rebuild(current_app, ctx.store, ctx.model_key)


@shared_task(bind=True, name=BUILD_INDEX_TASK, acks_late=True, autoretry_for=TRANSIENT,
             retry_backoff=2, max_retries=10)
@_redeliver_when_redis_is_down
def build_index(self, model_key: str) -> list[dict]:
    ctx = context.get_context()
    s = ctx.settings
    if not self.request.retries:
        # Delivered again because its builder died mid-build? That builder had taken the request:
        # put it back. (A first delivery finds it set already.)
        request_build(ctx.store, model_key)
    builds = run_coalesced_build(ctx.store, model_key, s.index_dir, n_trees=s.index_trees,
                                 lock_ttl_s=s.index_lock_ttl_s)
    if not builds and ctx.store.index_build_requested(model_key) and self.request.retries < self.max_retries:
        # Another builder holds the lock and will fold the request in, unless it died: then its
        # lock expires within the TTL, and this retry builds.
        raise self.retry(countdown=s.index_lock_ttl_s / 2)
    for info in builds:
        logger.info("index %s version %s published: %s vectors", model_key, info.get("version"), info.get("count"))
    return builds


@shared_task(name=START_JOB_TASK, acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2,
             max_retries=10)
@_redeliver_when_redis_is_down
def start_job(job_id: str, spec: dict) -> int:
    """Lists the job's items, records the total and enqueues them in chunks; returns the total.

    Runs once per job: a job already started has its chunks saved, and worker.watchdog sends
    again whichever of them never arrived."""
    ctx = context.get_context()
    job = ctx.store.get_job(job_id)
    if job is None or job["state"] != "queued":
        return 0
    try:
        chunks, skipped = plan_job(ctx, job_id, spec)
    except sources.SourceError as exc:
        ctx.store.fail_job(job_id, exc.message)
        return 0
    ctx.store.save_job_chunks(job_id, chunks)
    ctx.store.start_job(job_id, total=sum(map(len, chunks)) + len(skipped), failures=skipped)
    for chunk in chunks:
        ingest.delay(job_id, chunk)
    if not chunks:
        _maybe_rebuild(ctx, job_id)
    return sum(map(len, chunks))


