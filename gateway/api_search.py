"""Search by upload, URL or stored image id; the index's state; rebuild requests."""
from __future__ import annotations

import time

from flask import Blueprint, url_for

from gateway import resources
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import image_error, json_body, parse_k, parse_min_verdict, source_error, uploaded_files
from gateway.metrics import SEARCH_SECONDS
from services import copies, verdicts
from services.images import ImageError, decode
from services.sources import SourceError, fetch_with_settings
from services.tfs_client import ModelServerError, ModelServerUnavailable
from worker.jobs import request_rebuild

bp = Blueprint("search", __name__, url_prefix="/api/v1")


def model_call(fn, *args):
    """Runs a model-server call, turning its failures into 503/502 answers."""
    try:
        return fn(*args)
    except ModelServerUnavailable as exc:
        raise ApiError(503, "model_unavailable", f"the model server is not available, try again shortly ({exc})",
                       {"Retry-After": "5"}) from None
    except ModelServerError as exc:
        raise ApiError(502, "model_error", str(exc)) from None


def query_views(res, data: bytes) -> copies.Query:
    """The query's views embedded (itself or de-rotated, mirrored, trimmed), ready for copy search."""
    size = model_call(res.model.info).input_size[0]
    try:
        image = decode(data, res.settings.max_image_pixels, draft_for=size)
    except ImageError as exc:
        raise image_error(exc) from None
    return model_call(copies.prepare, res.model, image)


def query_hits(res, body: dict, k: int, min_verdict: str | None) -> tuple[list[copies.Hit], str]:
    """Results best first, each with its verdict, and the kind of query."""
    info = model_call(res.model.info)
    thresholds = verdicts.published(info.name, info.version)
    files = uploaded_files()
    if files:
        query, kind = query_views(res, files[0][1]), "upload"
    elif "image_id" in body:
        try:  # the query is an indexed image itself: its stored vector, layouts and keypoints
            return copies.search_by_id(res.searcher, res.store, res.model_key, str(body["image_id"]), k,
                                       thresholds, min_verdict), "image_id"
        except KeyError:
            raise ApiError(404, "not_found", f"no indexed image {body['image_id']!r}") from None
    elif "url" in body:
        if not isinstance(body["url"], str):
            raise ApiError(400, "bad_url", "url must be a string")
        try:
            data = fetch_with_settings(body["url"], res.settings)
        except SourceError as exc:
            raise source_error(exc) from None
        query, kind = query_views(res, data), "url"
    else:
        raise ApiError(400, "no_query", "send a multipart 'file', or JSON with 'url' or 'image_id'")
    return copies.search(res.searcher, res.store, res.model_key, query, k, thresholds, min_verdict), kind


def describe(store, hits: list[copies.Hit]) -> list[dict]:
    records = store.get_images([h.image_id for h in hits])
    return [{"id": h.image_id, "score": round(h.cosine, 6), "match": round(h.score, 6), "verdict": h.verdict,
             "label": (record or {}).get("label"),
             "source": (record or {}).get("source"),
             "near_duplicate_of": (record or {}).get("near_duplicate_of"),
             "thumbnail_url": url_for("images.thumbnail", image_id=h.image_id)}
            for h, record in zip(hits, records)]


@bp.post("/search")
def search():
    started = time.perf_counter()
    body = json_body()
    k = parse_k(body)
    min_verdict = parse_min_verdict(body)
    res = resources.get()
    hits, kind = query_hits(res, body, k, min_verdict)
    took = time.perf_counter() - started
    SEARCH_SECONDS.labels(kind).observe(took)
    return {"results": describe(res.store, hits), "verdict": copies.top_verdict(hits),
            "took_ms": round(took * 1000, 2), "index_version": res.searcher.version}


@bp.get("/index")
def index_state():
    res = resources.get()
    status = res.searcher.status()
    return {"count": status["count"], "version": status["version"], "built_at": status["built_at"],
            "pending": res.store.pending_count(res.model_key), "model": res.model_key, "error": status["error"]}


@bp.post("/index/rebuild")
@require_token
def rebuild():
    res = resources.get()
    started = request_rebuild(res.celery, res.store, res.model_key)
    return {"requested": True, "started": started}, 202
