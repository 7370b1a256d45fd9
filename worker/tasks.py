"""Celery tasks: thin wrappers over `worker.planning`, `worker.ingest` and `services.index`.

Tasks get ids, paths and URLs, never image bytes. Ingest is idempotent, so its tasks are acked
late; a model server that is down is retried with backoff, a Redis that is down makes the task's
own message come back (see `_redeliver_when_redis_is_down`); anything else fails the items it
concerns, at once, reported in the job: a job always ends. Index builds are acked on receipt: a
build can outlast the visibility timeout, and must not be delivered again while it runs; a build
whose builder died is found by the Redis state it left (`Store.index_build_orphaned`) and started
again by worker.watchdog.

Celery's threads pool ignores `task_time_limit`: the code that can hang carries its own deadlines
(URL fetches incl. DNS, archive extraction; files are read only when regular, so never block).
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import kombu.exceptions
from celery import current_app, shared_task
from celery.exceptions import Reject
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger

from services import context, sources
from services.precision import PrecisionMismatch
from services.broker import BUILD_INDEX_TASK, INGEST_TASK, START_JOB_TASK
from services.index import IndexUnavailable, run_coalesced_build
from services.store.connection import UNAVAILABLE as STORE_UNAVAILABLE
from services.jobs import request_rebuild
from services.tfs_client import ModelServerUnavailable
from worker.ingest import Item, failed, ingest_chunk, remove_incoming
from worker.planning import plan_job, rebuild_due

logger = get_task_logger(__name__)
TRANSIENT = (ModelServerUnavailable, IndexUnavailable)
REDIS_DOWN = (*STORE_UNAVAILABLE, kombu.exceptions.OperationalError, ConnectionError)
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
    chunk = [Item(**i) for i in items]
    try:
        result = ingest_chunk(ctx, job_id, chunk)
    except TRANSIENT as exc:
        if self.request.retries < self.max_retries:
            raise  # retried with backoff
        # Out of retries: report the items, or the job would wait for them forever.
        result = _fail_items(ctx, job_id, chunk, f"{exc} (gave up after {self.max_retries} retries)")
    except PrecisionMismatch as exc:  # a configuration error: every chunk would meet it
        return _fail_items(ctx, job_id, chunk, str(exc))
    except REDIS_DOWN:
        raise
    except Exception as exc:  # a bug or a refusal nobody foresaw: the items fail, the job ends
        logger.exception("job %s: chunk failed", job_id)
        result = _fail_items(ctx, job_id, chunk, f"unexpected error ({type(exc).__name__}: {exc})")
    _maybe_rebuild(ctx, job_id)
    return result


def _fail_items(ctx, job_id: str, items: list[Item], error: str) -> dict:
    """Each item not counted yet is counted failed (the store ignores those already counted)."""
    ctx.store.job_progress_many(job_id, [failed(item, error) for item in items])
    remove_incoming(ctx, items)
    return {"embedded": 0, "near_duplicates": 0}


def _maybe_rebuild(ctx, job_id: str) -> None:
    job = ctx.store.get_job(job_id)
    finished = job is not None and job["state"] in ("done", "failed")
    if not ctx.searcher.builds:
        return
    if finished or rebuild_due(ctx.store, ctx.model_key):
        request_rebuild(current_app, ctx.store, ctx.model_key)


@shared_task(name=BUILD_INDEX_TASK, acks_late=False, autoretry_for=TRANSIENT, retry_backoff=2, max_retries=10)
def build_index(model_key: str) -> list[dict]:
    """Builds while builds are requested; returns at once when another builder holds the lock
    (it serves the request). Acked on receipt: see the module's docstring."""
    ctx = context.get_context()
    s = ctx.settings
    builds = run_coalesced_build(ctx.store, model_key, s.index_dir, n_trees=s.index_trees,
                                 lock_ttl_s=s.index_lock_ttl_s, pca_dims=s.index_pca)
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
        return _fail_job(ctx, job_id, spec, exc.message)
    except REDIS_DOWN:
        raise
    except Exception as exc:  # e.g. disk full while extracting: the job ends, failed
        logger.exception("job %s: listing its items failed", job_id)
        return _fail_job(ctx, job_id, spec, f"unexpected error ({type(exc).__name__}: {exc})")
    ctx.store.save_job_chunks(job_id, chunks)
    ctx.store.start_job(job_id, total=sum(map(len, chunks)) + len(skipped), failures=skipped)
    _remove_archive(spec)
    for chunk in chunks:
        ingest.delay(job_id, chunk)
    if not chunks:
        _maybe_rebuild(ctx, job_id)
    return sum(map(len, chunks))


def _fail_job(ctx, job_id: str, spec: dict, message: str) -> int:
    ctx.store.fail_job(job_id, message)
    _remove_archive(spec)
    if spec["kind"] == "items":
        remove_incoming(ctx, [Item(**i) for i in spec["items"]])
    return 0


def _remove_archive(spec: dict) -> None:
    """The uploaded archive, once its members are out (or it is refused)."""
    if spec["kind"] == "archive":
        Path(spec["path"]).unlink(missing_ok=True)
