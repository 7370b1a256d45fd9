"""Sends again the work that a dead worker took with it.

Kombu's Redis transport pops a message first and records it as unacknowledged a moment later; a
worker killed in between (SIGKILL, the OOM killer, a lost node) loses that message for good, and
its job would wait forever. So every worker runs a sweep in a thread: a job with no progress for
`Settings.task_visibility_timeout_s` (the time after which an unacknowledged message counts as
abandoned), while the ingest queue is empty, gets its start message or its unfinished chunks sent
again (`Store.save_job_spec`, `Store.save_job_chunks`). A copy of a message that was not lost after
all is harmless: `start_job` runs once per job, and every item is counted once.

Each loop also touches HEARTBEAT, the worker's liveness signal (deploy/k8s): it shows the process
runs without asking Redis, so a Redis outage does not get every worker restarted.

The same sweep restarts index builds nobody serves: requested (or taken by a builder that died)
while no builder holds the lock. Build messages are acked on receipt, so this, not redelivery, is
what finishes a dead builder's work.
"""
from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

from services import context
from services.store import Store
from services.broker import (
    BUILD_INDEX_TASK, INGEST_QUEUE, INGEST_TASK, SCAN_DUPLICATES_TASK, SCAN_GROUPING_TASK,
    SCAN_RANGE_TASK, START_JOB_TASK,
)

log = logging.getLogger(__name__)
HEARTBEAT = Path(tempfile.gettempdir()) / "vsearch-worker-alive"


def resend_lost_work(app: Celery, store: Store, stall_s: float) -> dict[str, int]:
    """One sweep: {job id: messages sent} for the jobs it sent something for."""
    sent: dict[str, int] = {}
    if _waiting_messages(app):  # work is still flowing: a job's turn may simply not have come
        return sent
    for job_id in store.active_jobs():
        state = store.claim_stalled_job(job_id, stall_s)
        if state == "queued":
            spec = store.get_job_spec(job_id)
            if spec is not None:
                app.send_task(*_start_message(job_id, spec))
                sent[job_id] = 1
        elif state == "running":
            for items in store.unfinished_chunks(job_id):
                app.send_task(*_chunk_message(job_id, items))
                sent[job_id] = sent.get(job_id, 0) + 1
        if job_id in sent:
            store.add_resent(job_id, sent[job_id])
    for job_id, count in sent.items():
        log.warning("job %s made no progress for %.0f s: sent %d message(s) again", job_id, stall_s, count)
    return sent


def restart_orphaned_builds(app: Celery, store: Store, orphaned_before: set[str]) -> set[str]:
    """Model keys whose wanted build has had no builder: orphaned now and at the sweep before
    (a build task just sent may still be waiting for its builder). One build task for each."""
    orphaned = {key for key in store.model_keys() if store.index_build_orphaned(key)}
    for key in orphaned & orphaned_before:
        app.send_task(BUILD_INDEX_TASK, args=[key])
        log.warning("index %s: a build was wanted and no builder held the lock: sent again", key)
    return orphaned


def _start_message(job_id: str, spec: dict) -> tuple[str, list]:
    """The task that starts a job of this spec, and its arguments."""
    if spec["kind"] == "duplicates":
        return SCAN_DUPLICATES_TASK, [job_id, spec.get("full", False)]
    return START_JOB_TASK, [job_id, spec]


def _chunk_message(job_id: str, items: list[dict]) -> tuple[str, list]:
    """The task that does one saved chunk: an ingest chunk, or a duplicate scan's range of images."""
    if len(items) == 1 and "scan_upto" in items[0]:
        r = items[0]
        if r.get("grouping"):
            return SCAN_GROUPING_TASK, [job_id, r["scan_upto"]]
        return SCAN_RANGE_TASK, [job_id, r["after"], r["upto"], r["count"], r["scan_upto"]]
    return INGEST_TASK, [job_id, items]


def _waiting_messages(app: Celery) -> int:
    """Messages ready in the ingest queue (not those held by workers). The queue is declared as
    configured, which changes nothing when it exists and works on every transport (a passive
    declare does not: kombu's Redis transport ignores its key prefix there and finds no queue)."""
    with app.connection_for_read() as conn:
        queue = app.amqp.queues[INGEST_QUEUE].bind(conn.default_channel)
        return queue.queue_declare().message_count


def _run(app: Celery) -> None:
    stall_s = context.get_context().settings.task_visibility_timeout_s
    orphaned: set[str] = set()
    while True:
        time.sleep(min(30.0, max(1.0, stall_s / 4)))  # often enough for the heartbeat
        HEARTBEAT.touch()
        try:
            store = context.get_context().store
            orphaned = restart_orphaned_builds(app, store, orphaned)
            resend_lost_work(app, store, stall_s)
        except Exception:  # Redis away, say: the next sweep tries again
            log.warning("watchdog sweep failed", exc_info=True)


@worker_ready.connect
def _start(sender, **_):
    HEARTBEAT.touch()
    threading.Thread(target=_run, args=(sender.app,), name="job-watchdog", daemon=True).start()
