"""Planning a job: listing its items (uploads, URLs, a directory, an archive), giving each a key of
its own, cutting them into chunks; and the index rebuild policy. Plain functions over a context
(`services.context.Context`), called by worker.tasks."""
from __future__ import annotations

import shutil
from pathlib import Path

from services import sources
from worker.ingest import Item

# Fresh items (embedded since the last build) are searchable at once by exact search, a cost to
# every query that grows with their number; a build costs the whole index. Building when the fresh
# items reach half the index, kept within these bounds, makes the build work of a job grow with what
# it adds: a job of 30,000 images into an empty index builds 6 times, not 15 (docs/benchmarks.md).
REBUILD_PENDING_MIN, REBUILD_PENDING_MAX = 2000, 10000


def rebuild_due(store, model_key: str) -> bool:
    info = store.get_index_info(model_key) or {}
    threshold = min(max(info.get("count", 0) // 2, REBUILD_PENDING_MIN), REBUILD_PENDING_MAX)
    return store.pending_count(model_key, info) >= threshold


def plan_job(ctx, job_id: str, spec: dict) -> tuple[list[list[dict]], list[tuple[str, str]]]:
    """(chunks of item dicts, [(key, error)] of items refused while listing); every key distinct."""
    items, skipped = list_items(ctx, job_id, spec)
    keys = distinct_keys([item.key for item in items] + [key for key, _ in skipped])
    for item, key in zip(items, keys):
        item.key = key
    skipped = [(key, error) for key, (_, error) in zip(keys[len(items):], skipped)]
    size = ctx.settings.ingest_chunk
    return [[item.to_json() for item in items[i:i + size]] for i in range(0, len(items), size)], skipped


def distinct_keys(keys: list[str]) -> list[str]:
    """The keys made unique ("k", "k (2)"...): a job counts each key once, so two archive members
    of one name (zip allows it) or a URL listed twice must not share one, or the job never ends."""
    used, out = set(), []
    for key in keys:
        unique, n = key, 1
        while unique in used:
            n += 1
            unique = f"{key} ({n})"
        used.add(unique)
        out.append(unique)
    return out


def list_items(ctx, job_id: str, spec: dict) -> tuple[list[Item], list[tuple[str, str]]]:
    kind, s = spec["kind"], ctx.settings
    if kind == "items":  # uploads already saved by the gateway
        return [Item(**i) for i in spec["items"]], []
    if kind == "urls":
        # Credentials in a URL are used to fetch it, never shown (job errors, image metadata).
        return [Item(key=sources.redact_url(url), source=sources.redact_url(url), url=url, label=spec.get("label"))
                for url in spec["urls"]], []
    if kind == "directory":
        found = sources.iter_directory(spec["directory"], s.allowed_roots)
        return [Item(key=str(f.path), source=str(f.path), path=str(f.path), label=f.label) for f in found], []
    if kind == "archive":
        return extract(ctx, job_id, Path(spec["path"]), spec.get("name") or Path(spec["path"]).name)
    raise ValueError(f"unknown job kind {kind!r}")


def extract(ctx, job_id: str, archive: Path, name: str):
    s = ctx.settings
    dest = ctx.settings.data_dir / "incoming" / f"job-{job_id}"
    if dest.exists():  # a redelivered start: extract again from scratch
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    result = sources.extract_archive(archive, dest, max_members=s.max_archive_members,
                                     max_total_bytes=s.max_archive_mb * 1024 * 1024,
                                     max_member_bytes=s.max_upload_mb * 1024 * 1024)
    items = [Item(key=f"{name}:{m.member}", source=f"{name}:{m.member}", path=str(m.path), label=m.label)
             for m in result.items]
    skipped = [(f"{name}:{member}", error) for member, error in result.skipped]
    return items, skipped
