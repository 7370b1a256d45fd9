"""Liveness and readiness: /healthz answers while the process runs; /readyz checks what search needs."""
from __future__ import annotations

from flask import Blueprint

from gateway import resources

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@bp.get("/api/v1/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/readyz")
@bp.get("/api/v1/readyz")
def readyz():
    res = resources.get()
    checks = {}
    try:
        res.store.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {exc}"
    try:
        versions = res.model.available_versions(timeout_s=2)
        checks["model_server"] = "ok" if versions else "no model version available"
    except Exception as exc:
        checks["model_server"] = f"unavailable: {exc}"
    try:
        error = res.searcher.status()["error"]
        checks["index"] = "ok" if error is None else (
            f"serving the previous version: {error}" if res.searcher.builds else f"unavailable: {error}")
    except Exception as exc:
        checks["index"] = f"unavailable: {exc}"
    # An Annoy searcher that cannot load a new file keeps serving the old one; Milvus down is down.
    index_ok = checks["index"] == "ok" or checks["index"].startswith("serving")
    ready = checks["redis"] == "ok" and checks["model_server"] == "ok" and index_ok
    return {"ready": ready, "checks": checks}, 200 if ready else 503
