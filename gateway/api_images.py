"""Images: add (uploads or URLs), metadata, thumbnail and original bytes, delete."""
from __future__ import annotations

import re
import uuid

from flask import Blueprint, send_file

from gateway import resources
from gateway.auth import require_token
from gateway.errors import ApiError
from gateway.inputs import json_body, optional_collection, optional_label, shown_source, uploaded_files, url_list
from services import files
from services.sources import printable
from services.images import ALLOWED_FORMATS, ImageError, sniff_format
from services.store import image_id as hash_id
from services.jobs import request_rebuild, submit_job

bp = Blueprint("images", __name__, url_prefix="/api/v1/images")
_ID = re.compile(r"[0-9a-f]{64}")
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
         "BMP": "image/bmp", "TIFF": "image/tiff"}


def checked_id(image_id: str) -> str:
    if not _ID.fullmatch(image_id):
        raise ApiError(404, "not_found", f"no image {image_id!r} (ids are 64 hex characters)")
    return image_id


def save_uploads(res, uploads: list[tuple[str, bytes]], label: str | None, collection: str | None = None):
    """Keeps valid uploads in incoming/ for the job; answers per upload."""
    items, answers = [], []
    for n, (name, data) in enumerate(uploads):
        name = printable(name)
        fmt = sniff_format(data) if data else None
        if fmt not in ALLOWED_FORMATS:
            reason = "the file is empty" if not data else f"not a supported image ({fmt or 'unknown format'})"
            answers.append({"id": None, "filename": name, "status": "rejected", "error": reason})
            continue
        iid = hash_id(data)
        path = files.incoming_dir(res.settings.data_dir) / f"{uuid.uuid4().hex}-{iid[:16]}"
        files.write_atomic(path, data)
        existing = res.store.get_image(iid)
        status = "duplicate" if existing and existing["status"] == "indexed" else "queued"
        answers.append({"id": iid, "filename": name, "status": status})
        items.append({"key": f"{n}:{name}", "source": name, "path": str(path), "label": label,
                      "collection": collection})
    return items, answers


@bp.post("")
@require_token
def add_images():
    res = resources.get()
    body = json_body()
    label, collection = optional_label(body), optional_collection(body)
    uploads = uploaded_files()
    if uploads:
        items, answers = save_uploads(res, uploads, label, collection)
        if not items:
            raise ApiError(415 if any(d for _, d in uploads) else 400, "no_valid_image",
                           "; ".join(f"{a['filename']}: {a['error']}" for a in answers))
        job_id = submit_job(res.celery, res.store, {"kind": "items", "items": items}, total=len(items))
        return {"job_id": job_id, "images": answers}, 202
    if "url" in body or "urls" in body:
        urls = url_list(body, res.settings.max_urls_per_job)
        spec = {"kind": "urls", "urls": urls, "label": label, "collection": collection}
        job_id = submit_job(res.celery, res.store, spec, total=len(urls))
        return {"job_id": job_id, "images": [{"id": None, "url": u, "status": "queued"} for u in urls]}, 202
    raise ApiError(400, "no_images", "send multipart 'file' parts, or JSON with 'url' or 'urls'")


@bp.get("/<image_id>")
def get_image(image_id: str):
    res = resources.get()
    record = res.store.get_image(checked_id(image_id))
    if record is None or record["status"] == "deleted":
        raise ApiError(404, "not_found", f"no image {image_id}")
    return record | {"source": shown_source(res.settings, record.get("source"))}


def _send(path, mimetype: str):
    if not path.exists():
        raise ApiError(404, "not_found", "no such file for this image")
    return send_file(path, mimetype=mimetype, max_age=86400)


@bp.get("/<image_id>/thumbnail")
def thumbnail(image_id: str):
    try:
        path = files.ensure_thumbnail(resources.get().settings.data_dir, checked_id(image_id))
    except ImageError:
        raise ApiError(404, "not_found", "this image's original cannot be decoded any more") from None
    return _send(path, "image/jpeg")


@bp.get("/<image_id>/content")
def content(image_id: str):
    res = resources.get()
    record = res.store.get_image(checked_id(image_id)) or {}
    return _send(files.original_path(res.settings.data_dir, image_id),
                 _MIME.get(record.get("format"), "application/octet-stream"))


@bp.delete("/<image_id>")
@require_token
def delete_image(image_id: str):
    if not remove_image(resources.get(), checked_id(image_id)):
        raise ApiError(404, "not_found", f"no image {image_id}")
    return "", 204


def remove_image(res, image_id: str) -> bool:
    """The one delete path (this route, resolving duplicates); False if there is no such image."""
    record = res.store.get_image(image_id)
    if record is None or record["status"] == "deleted" or not res.store.delete_image(image_id):
        return False
    files.remove_image_files(res.settings.data_dir, image_id)
    res.searcher.remove([image_id])  # Milvus drops it now; Annoy filters it at once
    if res.searcher.builds:  # and drops it from the file at the next build
        request_rebuild(res.celery, res.store, res.model_key)
    return True
