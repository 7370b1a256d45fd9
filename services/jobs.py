"""Submitting jobs and index builds: what the gateway and the CLI call. The work happens in
worker.tasks; tasks are sent by name, so senders import no worker code."""
from __future__ import annotations

import uuid

from celery import Celery

from services.broker import BUILD_INDEX_TASK, SCAN_DUPLICATES_TASK, START_JOB_TASK
from services.index import request_build
from services.store import Store

KINDS = ("items", "urls", "directory", "archive")


def submit_job(app: Celery, store: Store, spec: dict, total: int | None = None) -> str:
    """Records a queued job and enqueues the task that lists and dispatches its items."""
    if spec.get("kind") not in KINDS:
        raise ValueError(f"job kind must be one of {KINDS}")
    job_id = uuid.uuid4().hex
    store.create_job(job_id, total, spec["kind"])
    store.save_job_spec(job_id, spec)  # what the watchdog sends again if this message is lost
    app.send_task(START_JOB_TASK, args=[job_id, spec])
    return job_id


def submit_duplicate_scan(app: Celery, store: Store, full: bool = False) -> str:
    """Records a queued duplicate scan (all images, or only those added since the last scan)."""
    job_id = uuid.uuid4().hex
    store.create_job(job_id, None, "duplicates", scope="full" if full else "new")
    store.save_job_spec(job_id, {"kind": "duplicates", "full": full})  # for the watchdog
    app.send_task(SCAN_DUPLICATES_TASK, args=[job_id, full])
    return job_id


def request_rebuild(app: Celery, store: Store, model_key: str) -> bool:
    """Asks for an index build; False when one is running (it will fold this request in)."""
    if request_build(store, model_key):
        app.send_task(BUILD_INDEX_TASK, args=[model_key])
        return True
    return False
