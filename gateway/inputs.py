"""Reading what clients send: JSON bodies, uploaded files, `k`, query images; bad input -> 4xx."""
from __future__ import annotations

import json
import math
from pathlib import PurePosixPath

from flask import g, request

from gateway.errors import ApiError
from services.index.filters import Filter, check_collection
from services.images import ImageError
from services.sources import SourceError
from services.store import check_label

MAX_K = 100
MAX_JSON_DEPTH = 16  # the API's bodies are two levels deep
_IMAGE_STATUS = {"too_large": 413, "unsupported_format": 415}


def json_body() -> dict:
    """The JSON object sent, or {} for another content type. Strict: what Python's json would
    accept but nothing downstream can hold is a 400 `bad_json` (NaN, Infinity, numbers beyond a
    float like 1e400, integers of thousands of digits, lone surrogates, deep nesting)."""
    if not request.is_json:
        return {}
    if "json_body" not in g:
        g.json_body = _parse_json(request.get_data(cache=True))
    return g.json_body


def _parse_json(raw: bytes) -> dict:
    try:
        body = strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON ({type(exc).__name__})") from None
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return body


def strict_json(text: str):
    """`json.loads`, refusing (ValueError) what nothing downstream can hold: NaN, Infinity,
    numbers beyond a float, integers of thousands of digits, lone surrogates, deep nesting. For the
    body and for JSON sent inside a form field (a search's `filter`)."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{type(exc).__name__}: {exc.msg}") from None
    except RecursionError:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    _check_values(value)
    return value


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond a float")
    return value


def _check_values(value) -> None:
    """Nesting depth and text (keys too) that encodes as UTF-8, checked without recursion."""
    stack = [([value], 0)]  # the value in a list of its own: its own text is checked too
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            for text in (key, item):
                if isinstance(text, str) and not _utf8(text):
                    raise ValueError("a lone surrogate (\\ud800-\\udfff)")
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


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


def optional_collection(body: dict) -> str | None:
    """The collection images are added to (none: no collection)."""
    try:
        return check_collection(body.get("collection", request.form.get("collection")))
    except ValueError as exc:
        raise ApiError(400, "bad_collection", str(exc)) from None


def search_filter(body: dict) -> Filter | None:
    """`collection` and `filter` of a search (a form field `filter` holds JSON)."""
    where = body.get("filter", request.form.get("filter"))
    try:
        if isinstance(where, str):
            where = strict_json(where)
        return Filter.parse(body.get("collection", request.form.get("collection")), where)
    except ValueError as exc:
        raise ApiError(400, "bad_filter", str(exc)) from None


def optional_label(body: dict) -> str | None:
    """The `label` of a JSON body or a form, checked as the worker checks it (store.check_label)."""
    try:
        return check_label(body.get("label", request.form.get("label")))
    except ValueError as exc:
        raise ApiError(400, "bad_label", str(exc)) from None


def shown_source(settings, source: str | None) -> str | None:
    """An image's `source` as this caller may see it: read-only callers get a directory job's
    server path relative to its allowed root (URLs are stored redacted already)."""
    if source is None or g.get("can_write") or not source.startswith("/"):
        return source
    path = PurePosixPath(source)
    root = next((r for r in settings.allowed_roots if path.is_relative_to(r)), None)
    return str(path.relative_to(root)) if root is not None else path.name
