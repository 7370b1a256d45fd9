"""The OpenAPI description of /api/v1, served at /api/v1/openapi.json (tests check it against the routes)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("openapi", __name__)

_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_GROUP = {"name": "group_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"}}
_ID = {"name": "image_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}


def _json(schema: dict, description: str = "ok") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, responses: dict, *, body: dict | None = None, params: list | None = None,
        auth: bool = False) -> dict:
    op = {"summary": summary, "responses": {**responses, "4XX": _ERROR, "5XX": _ERROR}}
    if body:
        op["requestBody"] = {"required": True, "content": body}
    if params:
        op["parameters"] = params
    if auth:
        op["security"] = [{"bearer": []}, {}]
    return op


_COLLECTION = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$",
               "description": "a collection the images belong to (search can keep to some)"}
_NAMES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                                               "maxItems": 100}]}
_TIME = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
         "description": "epoch seconds or ISO 8601"}
_FILTER = {"type": "object", "additionalProperties": False, "properties": {
    "label": _NAMES, "collection": _NAMES, "created_after": _TIME, "created_before": _TIME}}
_MULTIPART_FILES = {"type": "object", "properties": {
    "file": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "label": {"type": "string", "maxLength": 200}, "collection": _COLLECTION}, "required": ["file"]}
_SEARCH_JSON = {"type": "object", "properties": {
    "url": {"type": "string"}, "image_id": {"type": "string"},
    "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    "collection": _COLLECTION, "filter": _FILTER,
    "min_verdict": {"type": "string", "enum": ["exact", "copy", "similar"],
                    "description": "only results whose verdict is at least this"}}}
_VERDICT = {"type": "string", "enum": ["exact", "copy", "similar", "none"],
            "description": "exact: the same picture resized or re-encoded; copy: an edited copy (crop, rotation, "
                           "mirror, overlay, colour...); similar: similar content; none"}
_URLS = {"type": "object", "properties": {
    "url": {"type": "string"}, "urls": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "label": {"type": "string", "maxLength": 200}, "collection": _COLLECTION}}

SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "vsearch", "version": "1", "description": "Visual search: index images, find look-alikes."},
    "servers": [{"url": "/"}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Job": {"type": "object", "required": ["job_id", "state", "total", "done", "failed", "errors"],
                    "properties": {"job_id": {"type": "string"},
                                   "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
                                   "total": {"type": "integer", "nullable": True}, "done": {"type": "integer"},
                                   "failed": {"type": "integer"}, "duplicates": {"type": "integer"},
                                   "near_duplicates": {"type": "integer"},
                                   "errors": {"type": "array", "items": {"type": "object"}},
                                   "created_at": {"type": "number"},
                                   "finished_at": {"type": "number", "nullable": True},
                                   "progress_at": {"type": "number", "description": "time of the last item counted"},
                                   "resent": {"type": "integer", "description": "messages (its start or its chunks) "
                                              "sent again after a worker died with them"}}},
            "SearchResults": {"type": "object", "required": ["results", "took_ms", "index_version"], "properties": {
                "results": {"type": "array", "items": {"type": "object", "required": ["id", "score"], "properties": {
                    "id": {"type": "string"},
                    "score": {"type": "number", "description": "cosine similarity (best over the query's views)"},
                    "match": {"type": "number", "description": "ranking score: the cosine plus bonuses when the "
                              "layout or the keypoint geometry confirms an edited copy; results are ordered by it"},
                    "verdict": _VERDICT,
                    "label": {"type": "string", "nullable": True}, "source": {"type": "string", "nullable": True},
                    "thumbnail_url": {"type": "string"}}}},
                "verdict": {**_VERDICT, "description": "the best result's verdict, none without results"},
                "took_ms": {"type": "number"}, "index_version": {"type": "integer"}}},
            "DuplicateGroup": {"type": "object", "required": ["group_id", "tier", "status", "images", "keep"], "properties": {
                "group_id": {"type": "string"}, "tier": {"type": "string", "enum": ["exact", "copy"]},
                "status": {"type": "string", "enum": ["open", "resolved"]},
                "keep": {"type": "array", "items": {"type": "string"}, "description": "proposed (open) or "
                         "chosen (resolved) images to keep; originals come before edited copies"},
                "rule": {"type": "string", "nullable": True}, "resolved_at": {"type": "number", "nullable": True},
                "images": {"type": "array", "items": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": "string"}, "width": {"type": "integer", "nullable": True},
                    "height": {"type": "integer", "nullable": True},
                    "size_bytes": {"type": "integer", "nullable": True},
                    "created_at": {"type": "number", "nullable": True},
                    "source": {"type": "string", "nullable": True}, "label": {"type": "string", "nullable": True},
                    "thumbnail_url": {"type": "string"},
                    "score": {"type": "number", "description": "its strongest duplicate pair's score"},
                    "edited": {"type": "boolean", "description": "another member contains it (a crop)"},
                    "deleted": {"type": "boolean"}}}}}},
            "Accepted": {"type": "object", "required": ["job_id"], "properties": {
                "job_id": {"type": "string"}, "images": {"type": "array", "items": {"type": "object"}}}},
        },
    },
    "paths": {
        "/api/v1/images": {"post": _op("Add images (uploads or URLs)", {"202": _json(_ref("Accepted"))}, auth=True,
                                       body={"multipart/form-data": {"schema": _MULTIPART_FILES},
                                             "application/json": {"schema": _URLS}})},
        "/api/v1/images/{image_id}": {
            "get": _op("Image metadata", {"200": _json({"type": "object"})}, params=[_ID]),
            "delete": _op("Delete an image", {"204": {"description": "deleted"}}, params=[_ID], auth=True)},
        "/api/v1/images/{image_id}/thumbnail": {"get": _op(
            "Thumbnail (JPEG)", {"200": {"description": "image", "content": {"image/jpeg": {}}}}, params=[_ID])},
        "/api/v1/images/{image_id}/content": {"get": _op(
            "Original bytes", {"200": {"description": "image", "content": {"image/*": {}}}}, params=[_ID])},
        "/api/v1/jobs": {
            "post": _op("Bulk indexing job", {"202": _json(_ref("Accepted"))}, auth=True, body={
                "application/json": {"schema": {"type": "object", "properties": {
                    "directory": {"type": "string"}, "urls": {"type": "array", "items": {"type": "string"}},
                    "collection": _COLLECTION}}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {
                    "archive": {"type": "string", "format": "binary"}, "collection": _COLLECTION},
                    "required": ["archive"]}}}),
            "get": _op("Recent jobs", {"200": _json({"type": "object"})},
                       params=[{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}])},
        "/api/v1/jobs/{job_id}": {"get": _op("Job progress", {"200": _json(_ref("Job"))},
                                             params=[{"name": "job_id", "in": "path", "required": True,
                                                      "schema": {"type": "string"}}])},
        "/api/v1/search": {"post": _op("Search by upload, URL or image id", {"200": _json(_ref("SearchResults"))}, body={
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary"}, "k": {"type": "integer", "minimum": 1, "maximum": 100},
                "collection": _COLLECTION, "filter": {"type": "string", "description": "the filter object as JSON"},
                "min_verdict": {"type": "string", "enum": ["exact", "copy", "similar"]}},
                "required": ["file"]}},
            "application/json": {"schema": _SEARCH_JSON}})},
        "/api/v1/index": {"get": _op("Index state", {"200": _json({"type": "object", "properties": {
            "count": {"type": "integer"}, "version": {"type": "integer"}, "built_at": {"type": "number", "nullable": True},
            "pending": {"type": "integer"}, "backend": {"type": "string", "enum": ["annoy", "milvus"]}}})})},
        "/api/v1/index/rebuild": {"post": _op("Request an index build (Annoy; Milvus has none: 200)", {
            "202": _json({"type": "object"}), "200": _json({"type": "object"})}, auth=True)},
        "/api/v1/duplicates/scan": {"post": _op(
            "Find duplicate groups (a job): images added since the last scan, or all with full", {
                "202": _json(_ref("Accepted"))}, auth=True,
            body={"application/json": {"schema": {"type": "object", "properties": {"full": {"type": "boolean"}}}}})},
        "/api/v1/duplicates": {"get": _op("Duplicate groups, ordered by id", {"200": _json({
            "type": "object", "required": ["groups", "next_cursor", "total"], "properties": {
                "groups": {"type": "array", "items": _ref("DuplicateGroup")},
                "next_cursor": {"type": "string", "nullable": True}, "total": {"type": "integer"}}})},
            params=[{"name": "tier", "in": "query", "schema": {"type": "string", "enum": ["exact", "copy"]}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["open", "resolved"]}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200}}])},
        "/api/v1/duplicates/export": {"get": _op("Every group, one row per image", {"200": {
            "description": "rows", "content": {"application/json": {"schema": {"type": "object"}}, "text/csv": {}}}},
            params=[{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["csv", "json"]}},
                    {"name": "tier", "in": "query", "schema": {"type": "string", "enum": ["exact", "copy"]}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["open", "resolved"]}}])},
        "/api/v1/duplicates/{group_id}": {"get": _op("One duplicate group", {"200": _json(_ref("DuplicateGroup"))},
                                                     params=[_GROUP])},
        "/api/v1/duplicates/{group_id}/resolve": {"post": _op(
            "Keep the chosen images (or the one a rule picks); optionally delete the others", {
                "200": _json(_ref("DuplicateGroup"))}, params=[_GROUP], auth=True, body={"application/json": {
                    "schema": {"type": "object", "properties": {
                        "keep": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "rule": {"type": "string", "enum": ["most_pixels", "largest_file", "oldest", "newest"]},
                        "delete_others": {"type": "boolean"}}}}})},
        "/api/v1/healthz": {"get": _op("Liveness", {"200": _json({"type": "object"})})},
        "/api/v1/readyz": {"get": _op("Readiness", {"200": _json({"type": "object"}), "503": _json({"type": "object"})})},
        "/api/v1/openapi.json": {"get": _op("This description", {"200": _json({"type": "object"})})},
    },
}


@bp.get("/api/v1/openapi.json")
def openapi():
    return SPEC
