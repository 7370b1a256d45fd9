"""Search by upload, URL or stored image id; the index's state; rebuild requests."""
from __future__ import annotations

import time

from flask import Blueprint, url_for

from gateway import resources
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import image_error, json_body, parse_k, shown_source, source_error, uploaded_files
from gateway.metrics import SEARCH_SECONDS
from services import robust_search
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


def embed_views(res, data: bytes):
    """Embeddings and layouts of the query's views (itself or de-rotated, mirrored, trimmed)."""
    size = model_call(res.model.info).input_size[0]
    try:
        image = decode(data, res.settings.max_query_pixels, draft_for=size)  # the query pixel budget
    except ImageError as exc:
        raise image_error(exc) from None
    return model_call(robust_search.query_embeddings, res.model, image)


def query_hits(res, body: dict, k: int) -> tuple[list[tuple[str, float, float]], str]:
    """[(id, cosine, ranking score)] best first, and the kind of query."""
    files = uploaded_files()
    if files:
        return _copies(res, embed_views(res, files[0][1]), k), "upload"
    if "image_id" in body:
        image_id = body["image_id"]
        try:  # the query is an indexed image itself: its neighbours by cosine
            hits = res.searcher.search_by_id(str(image_id), k)
        except KeyError:
            raise ApiError(404, "not_found", f"no indexed image {image_id!r}") from None
        return [(i, s, s) for i, s in hits], "image_id"
    if "url" in body:
        if not isinstance(body["url"], str):
            raise ApiError(400, "bad_url", "url must be a string")
        try:
            data = fetch_with_settings(body["url"], res.settings)
        except SourceError as exc:
            raise source_error(exc) from None
        return _copies(res, embed_views(res, data), k), "url"
    raise ApiError(400, "no_query", "send a multipart 'file', or JSON with 'url' or 'image_id'")


def _copies(res, views, k: int):
    embeddings, layouts = views
    return robust_search.search_copies(res.searcher, res.store, res.model_key, embeddings, layouts, k)


def describe(res, hits: list[tuple[str, float, float]]) -> list[dict]:
    records = res.store.get_images([image_id for image_id, _, _ in hits])
    return [{"id": image_id, "score": round(score, 6), "match": round(match, 6),
             "label": (record or {}).get("label"),
             "source": shown_source(res.settings, (record or {}).get("source")),
             "near_duplicate_of": (record or {}).get("near_duplicate_of"),
             "thumbnail_url": url_for("images.thumbnail", image_id=image_id)}
            for (image_id, score, match), record in zip(hits, records)]


@bp.post("/search")
def search():
    started = time.perf_counter()
    body = json_body()
    k = parse_k(body)
    res = resources.get()
    hits, kind = query_hits(res, body, k)
    took = time.perf_counter() - started
    SEARCH_SECONDS.labels(kind).observe(took)
    return {"results": describe(res, hits), "took_ms": round(took * 1000, 2),
            "index_version": res.searcher.version}


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
