"""Bulk indexing jobs: a server-side directory, a list of URLs or an uploaded archive; progress."""
from __future__ import annotations

import uuid

from flask import Blueprint, request

from gateway import resources
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import json_body, url_list
from services import files, sources
from services.jobs import submit_job

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")


@bp.post("")
@require_token
def create_job():
    res = resources.get()
    archive = request.files.get("archive")
    if archive is not None:
        path = files.incoming_dir(res.settings.data_dir) / f"archive-{uuid.uuid4().hex}"
        archive.save(path)
        if path.stat().st_size == 0:
            path.unlink()
            raise ApiError(400, "empty_archive", "the archive is empty")
        spec = {"kind": "archive", "path": str(path), "name": archive.filename or "archive"}
        return {"job_id": submit_job(res.celery, res.store, spec)}, 202
    body = json_body()
    if "directory" in body:
        directory = body["directory"]
        if not isinstance(directory, str) or not directory:
            raise ApiError(400, "bad_directory", "directory must be a path")
        try:
            sources.iter_directory(directory, res.settings.allowed_roots)  # checks now, lists later
        except sources.SourceError as exc:
            raise ApiError(403 if exc.code == "not_allowed" else 400, exc.code, exc.message) from None
        return {"job_id": submit_job(res.celery, res.store, {"kind": "directory", "directory": directory})}, 202
    if "urls" in body or "url" in body:
        urls = url_list(body, res.settings.max_urls_per_job)
        spec = {"kind": "urls", "urls": urls, "label": body.get("label")}
        return {"job_id": submit_job(res.celery, res.store, spec, total=len(urls))}, 202
    raise ApiError(400, "no_job", "send JSON with 'directory' or 'urls', or a multipart 'archive'")


@bp.get("/<job_id>")
def get_job(job_id: str):
    job = resources.get().store.get_job(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


@bp.get("")
def list_jobs():
    try:
        limit = min(100, max(1, int(request.args.get("limit", 20))))
    except ValueError:
        raise ApiError(400, "bad_limit", "limit must be an integer") from None
    return {"jobs": resources.get().store.recent_jobs(limit)}
