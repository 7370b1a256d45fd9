"""Celery tasks of a duplicate scan (services/duplicates/scan.py does the work).

`scan_duplicates` plans the job and sends one `scan_duplicates_range` per range of images; the
task that counts the last range groups the pairs (one claimant), records what the scan covered and
counts the grouping step as the job's last item, so a job reads `done` only once its groups are
written. Every step is idempotent: a range judged twice writes the same pairs, counted once.
"""
from __future__ import annotations

from celery import shared_task
from celery.utils.log import get_task_logger

from services import context
from services.broker import SCAN_DUPLICATES_TASK, SCAN_GROUPING_TASK, SCAN_RANGE_TASK
from services.store.duplicates import DuplicateStore
from services.duplicates import scan
from services.duplicates.judge import VerdictJudge
from worker.tasks import REDIS_DOWN, _redeliver_when_redis_is_down

logger = get_task_logger(__name__)
GROUPING_ITEM = "grouping"


@shared_task(name=SCAN_DUPLICATES_TASK, acks_late=True)
@_redeliver_when_redis_is_down
def scan_duplicates(job_id: str, full: bool = False) -> int:
    ctx = context.get_context()
    job = ctx.store.get_job(job_id)
    if job is None or job["state"] != "queued":
        return 0
    ranges, upto = scan.plan(ctx.store, DuplicateStore(ctx.store), ctx.model_key, full)
    # Saved like an ingest job's chunks: worker.watchdog sends a lost range again.
    ctx.store.save_job_chunks(job_id, [[{"key": _range_key(r.after, r.upto), "after": r.after, "upto": r.upto,
                                         "count": r.count, "scan_upto": upto}] for r in ranges]
                              + [[{"key": GROUPING_ITEM, "grouping": True, "scan_upto": upto}]])
    ctx.store.start_job(job_id, total=sum(r.count for r in ranges) + 1)
    for r in ranges:
        scan_duplicates_range.delay(job_id, r.after, r.upto, r.count, upto)
    if not ranges:
        _group_when_scanned(ctx, job_id, upto)
    return len(ranges)


@shared_task(name=SCAN_RANGE_TASK, acks_late=True)
@_redeliver_when_redis_is_down
def scan_duplicates_range(job_id: str, after: int, upto: int, count: int, scan_upto: int) -> int:
    ctx = context.get_context()
    dups = DuplicateStore(ctx.store)
    found = scan.scan_range(ctx.store, dups, ctx.searcher, VerdictJudge(ctx.store, ctx.model_key),
                            ctx.model_key, after, upto, job_id)
    ctx.store.job_progress(job_id, _range_key(after, upto), done=count)
    _group_when_scanned(ctx, job_id, scan_upto)
    return found


@shared_task(name=SCAN_GROUPING_TASK, acks_late=True)
@_redeliver_when_redis_is_down
def scan_duplicates_group(job_id: str, scan_upto: int) -> None:
    """The grouping step on its own: what worker.watchdog sends when the task that should have
    grouped a finished scan died."""
    _group_when_scanned(context.get_context(), job_id, scan_upto)


def _range_key(after: int, upto: int) -> str:
    return f"seq {after}-{upto}"


def _group_when_scanned(ctx, job_id: str, scan_upto: int) -> None:
    job = ctx.store.get_job(job_id)
    if job is None or job["done"] + job["failed"] < job["total"] - 1:
        return
    dups = DuplicateStore(ctx.store)
    if not dups.claim_grouping(job_id, ttl_s=ctx.settings.task_visibility_timeout_s):
        return
    try:
        counts = scan.regroup(ctx.store, dups, ctx.model_key)
    except REDIS_DOWN:
        dups.release_grouping(job_id)  # the message comes back (see _redeliver_when_redis_is_down)
        raise
    except Exception as exc:
        ctx.store.fail_job(job_id, f"grouping failed: {exc}")
        raise
    dups.set_scanned_seq(ctx.model_key, scan_upto)
    dups.forget_judged(job_id)
    ctx.store.job_progress(job_id, GROUPING_ITEM, done=1)
    logger.info("duplicate scan %s: %s", job_id, counts)
