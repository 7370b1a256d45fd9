"""The duplicate report: scan (a job), list with filters and a cursor, resolve, export."""
from __future__ import annotations

import csv
import io
import re

from flask import Blueprint, Response, request, url_for

from gateway import resources
from gateway.api_images import remove_image
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import json_body
from services.store.duplicates import STATUSES, TIERS, DuplicateStore
from services.duplicates import keepers
from services.jobs import submit_duplicate_scan

bp = Blueprint("duplicates", __name__, url_prefix="/api/v1/duplicates")
_GROUP_ID = re.compile(r"[0-9a-f]{16}")
MAX_LIMIT = 200
RESOLVE_TTL_S = 60  # one resolve of a group at a time (deleting 100 members takes well under this)
EXPORT_PAGE = 1000
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection"); an
# image's source is a file name or URL the uploader chose, so the CSV export writes it after a quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
EXPORT_COLUMNS = ("group_id", "tier", "status", "image_id", "keep", "edited", "deleted", "score", "width",
                  "height", "size_bytes", "created_at", "source")


def _dups(res) -> DuplicateStore:
    return DuplicateStore(res.store)


def _choice(name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    value = request.args.get(name)
    if value is None or value == "":
        return allowed
    if value not in allowed:
        raise ApiError(400, f"bad_{name}", f"{name} must be one of {', '.join(allowed)}")
    return (value,)


def _describe(store, groups: list[dict]) -> list[dict]:
    ids = [m["id"] for g in groups for m in g["members"]]
    records = dict(zip(ids, store.get_images(ids)))
    out = []
    for g in groups:
        images = []
        for m in g["members"]:
            r = records.get(m["id"]) or {}
            images.append({"id": m["id"], "width": r.get("width"), "height": r.get("height"),
                           "size_bytes": r.get("size_bytes"), "created_at": r.get("created_at"),
                           "source": r.get("source"), "label": r.get("label"), "score": m["score"],
                           "edited": m["edited"], "deleted": r.get("status") in (None, "deleted"),
                           "thumbnail_url": url_for("images.thumbnail", image_id=m["id"])})
        out.append({"group_id": g["group_id"], "tier": g["tier"], "status": g["status"], "images": images,
                    "keep": g["keep"], "rule": g["rule"] or None, "resolved_at": g["resolved_at"]})
    return out


@bp.post("/scan")
@require_token
def scan():
    full = json_body().get("full", False)
    if not isinstance(full, bool):
        raise ApiError(400, "bad_full", "full must be true or false")
    res = resources.get()
    return {"job_id": submit_duplicate_scan(res.celery, res.store, full)}, 202


@bp.get("")
def list_groups():
    statuses, tiers = _choice("status", STATUSES), _choice("tier", TIERS)
    cursor = request.args.get("cursor") or None
    if cursor is not None and not _GROUP_ID.fullmatch(cursor):
        raise ApiError(400, "bad_cursor", "cursor must be a next_cursor from an earlier page")
    try:
        limit = int(request.args.get("limit", 50))
    except ValueError:
        raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    res = resources.get()
    groups, next_cursor, total = _dups(res).list_groups(statuses, tiers, cursor, limit)
    return {"groups": _describe(res.store, groups), "next_cursor": next_cursor, "total": total}


def _group_or_404(dups: DuplicateStore, group_id: str) -> dict:
    group = dups.get_group(group_id) if _GROUP_ID.fullmatch(group_id) else None
    if group is None:
        raise ApiError(404, "not_found", f"no duplicate group {group_id!r}")
    return group


@bp.get("/<group_id>")
def get_group(group_id: str):
    res = resources.get()
    return _describe(res.store, [_group_or_404(_dups(res), group_id)])[0]


@bp.post("/<group_id>/resolve")
@require_token
def resolve(group_id: str):
    res = resources.get()
    dups = _dups(res)
    _group_or_404(dups, group_id)
    if not dups.claim_resolving(group_id, RESOLVE_TTL_S):
        raise ApiError(409, "resolving", "another request is resolving this group; read it again, then retry",
                       {"Retry-After": "1"})
    try:
        return _resolve(res, dups, _group_or_404(dups, group_id))  # read again: as the last resolve left it
    finally:
        dups.release_resolving(group_id)


def _resolve(res, dups: DuplicateStore, group: dict) -> dict:
    group_id = group["group_id"]
    body = json_body()
    members = [m["id"] for m in group["members"]]
    live = [r for r in res.store.get_images(members) if r and r["status"] != "deleted"]
    keep, rule = body.get("keep"), body.get("rule")
    if (keep is None) == (rule is None):
        raise ApiError(400, "bad_resolve", "send either 'keep' (a list of image ids) or 'rule'")
    if rule is not None:
        if rule not in keepers.RULES:
            raise ApiError(400, "bad_rule", f"rule must be one of {', '.join(keepers.RULES)}")
        if not live:
            raise ApiError(409, "nothing_left", "every image of this group is deleted")
        edited = {m["id"] for m in group["members"] if m["edited"]}
        keep = [keepers.choose_keeper(live, rule, edited)]
    elif (not isinstance(keep, list) or not keep or not all(isinstance(k, str) for k in keep)
          or not set(keep) <= {r["id"] for r in live}):
        raise ApiError(400, "bad_keep", "keep must list one or more images of this group that still exist")
    delete_others = body.get("delete_others", False)
    if not isinstance(delete_others, bool):
        raise ApiError(400, "bad_delete_others", "delete_others must be true or false")
    deleted = set(group["deleted"])
    if delete_others:
        deleted |= {r["id"] for r in live if r["id"] not in keep and remove_image(res, r["id"])}
    dups.resolve(group_id, sorted(set(keep)), sorted(deleted), rule)
    return _describe(res.store, [dups.get_group(group_id)])[0]


@bp.get("/export")
def export():
    fmt = request.args.get("format", "json")
    if fmt not in ("csv", "json"):
        raise ApiError(400, "bad_format", "format must be csv or json")
    statuses, tiers = _choice("status", STATUSES), _choice("tier", TIERS)
    res = resources.get()
    rows, cursor = [], None
    while True:
        groups, cursor, _ = _dups(res).list_groups(statuses, tiers, cursor, EXPORT_PAGE)
        for g in _describe(res.store, groups):
            for im in g["images"]:
                rows.append({"group_id": g["group_id"], "tier": g["tier"], "status": g["status"],
                             "image_id": im["id"], "keep": im["id"] in g["keep"], "edited": im["edited"],
                             "deleted": im["deleted"], "score": im["score"], "width": im["width"],
                             "height": im["height"], "size_bytes": im["size_bytes"],
                             "created_at": im["created_at"], "source": im["source"]})
        if cursor is None:
            break
    if fmt == "json":
        return {"rows": rows}
    out = io.StringIO()
    writer = csv.DictWriter(out, EXPORT_COLUMNS)  # lines end in CRLF, so a CR or LF in a value is quoted
    writer.writeheader()
    writer.writerows(row | {"source": _inert(row["source"])} for row in rows)
    return Response(out.getvalue(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=duplicates.csv"})


def _inert(text: str | None) -> str | None:
    """Text a spreadsheet shows as text: a leading formula character gets a quote before it."""
    return "'" + text if text and text.startswith(FORMULA_STARTS) else text
