"""Search by upload, URL or stored image id; the index's state; rebuild requests."""
from __future__ import annotations

from flask import Blueprint, url_for

from gateway import resources
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import image_error, json_body, parse_k, parse_min_verdict, source_error, uploaded_files
from gateway.metrics import SEARCH_SECONDS
from services import search as search_service
from services.images import ImageError
from services.search import Hit, NotIndexed, SearchResult
from services.sources import SourceError
from services.tfs_client import ModelServerError, ModelServerUnavailable
from services.jobs import request_rebuild

bp = Blueprint("search", __name__, url_prefix="/api/v1")


def query_of(body: dict) -> dict:
    """The query's keyword arguments for `services.search.search`, from the request."""
    files = uploaded_files()
    if files:
        return {"data": files[0][1]}
    if "image_id" in body:
        return {"image_id": str(body["image_id"])}
    if "url" in body:
        if not isinstance(body["url"], str):
            raise ApiError(400, "bad_url", "url must be a string")
        return {"url": body["url"]}
    raise ApiError(400, "no_query", "send a multipart 'file', or JSON with 'url' or 'image_id'")


def run_search(res, query: dict, k: int, min_verdict: str | None = None) -> SearchResult:
    """`services.search.search`, its failures turned into API errors."""
    try:
        return search_service.search(res, k=k, min_verdict=min_verdict, **query)
    except ImageError as exc:
        raise image_error(exc) from None
    except SourceError as exc:
        raise source_error(exc) from None
    except NotIndexed as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except ModelServerUnavailable as exc:
        raise ApiError(503, "model_unavailable", f"the model server is not available, try again shortly ({exc})",
                       {"Retry-After": "5"}) from None
    except ModelServerError as exc:
        raise ApiError(502, "model_error", str(exc)) from None


def describe(hit: Hit) -> dict:
    record = hit.record or {}
    return {"id": hit.id, "score": round(hit.score, 6), "match": round(hit.match, 6), "verdict": hit.verdict,
            "label": record.get("label"), "source": record.get("source"),
            "near_duplicate_of": record.get("near_duplicate_of"),
            "thumbnail_url": url_for("images.thumbnail", image_id=hit.id)}


@bp.post("/search")
def search():
    body = json_body()
    k = parse_k(body)
    min_verdict = parse_min_verdict(body)
    res = resources.get()
    result = run_search(res, query_of(body), k, min_verdict)
    SEARCH_SECONDS.labels(result.kind).observe(result.took_ms / 1000)
    return {"results": [describe(hit) for hit in result.hits], "verdict": result.verdict,
            "took_ms": result.took_ms, "index_version": result.index_version}


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
