"""Reading what clients send: JSON bodies, uploaded files, `k`, query images; bad input -> 4xx."""
from __future__ import annotations

from flask import request

from gateway.errors import ApiError
from services.images import ImageError
from services.sources import SourceError

MAX_K = 100
_IMAGE_STATUS = {"too_large": 413, "unsupported_format": 415}


def json_body() -> dict:
    if not request.is_json:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


def uploaded_files(field: str = "file") -> list[tuple[str, bytes]]:
    return [(f.filename or "upload", f.read()) for f in request.files.getlist(field)]


def parse_k(body: dict) -> int:
    raw = body.get("k", request.form.get("k", request.args.get("k", 10)))
    try:
        k = int(raw)
        if isinstance(raw, float) and raw != k or isinstance(raw, bool):
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(400, "bad_k", f"k must be an integer from 1 to {MAX_K}") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, "bad_k", f"k must be an integer from 1 to {MAX_K}, got {k}")
    return k


def parse_min_verdict(body: dict) -> str | None:
    """`min_verdict` (exact, copy, similar) from the JSON body, the form or the query string."""
    raw = body.get("min_verdict", request.form.get("min_verdict", request.args.get("min_verdict")))
    if raw is None or raw == "":
        return None
    if raw not in ("exact", "copy", "similar"):
        raise ApiError(400, "bad_min_verdict", "min_verdict must be one of exact, copy, similar")
    return raw


def image_error(exc: ImageError) -> ApiError:
    return ApiError(_IMAGE_STATUS.get(exc.code, 400), exc.code, exc.message)


def source_error(exc: SourceError) -> ApiError:
    return ApiError(413 if exc.code == "too_large" else 400, exc.code, exc.message)


def url_list(body: dict, limit: int) -> list[str]:
    urls = body.get("urls") if "urls" in body else [body["url"]] if "url" in body else None
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise ApiError(400, "bad_urls", "give 'url' (a string) or 'urls' (a non-empty list of strings)")
    if len(urls) > limit:
        raise ApiError(400, "too_many_urls", f"{len(urls)} URLs; at most {limit} per request")
    return urls


def optional_label(body: dict) -> str | None:
    label = body.get("label", request.form.get("label"))
    if label is not None and (not isinstance(label, str) or len(label) > 200):
        raise ApiError(400, "bad_label", "label must be a string of at most 200 characters")
    return label or None
