"""Search without a gateway (`vsearch search --local`): embed through the model server, read the
index and the records directly, as the gateway does."""
from __future__ import annotations

import time
from pathlib import Path

from services import files, images, robust_search
from services.config import Settings
from services.context import Context
from services.sources import fetch_with_settings


def search_local(settings: Settings, *, img_file: Path | None = None, img_url: str | None = None,
                 image_id: str | None = None, k: int = 10) -> dict:
    started = time.perf_counter()
    ctx = Context(settings)
    if image_id:
        hits = [(i, s, s) for i, s in ctx.searcher.search_by_id(image_id, k)]  # KeyError if unknown
    else:
        data = img_file.read_bytes() if img_file else fetch_with_settings(img_url, settings)
        size = ctx.model.info().input_size[0]
        image = images.decode(data, settings.max_image_pixels, draft_for=size)
        embeddings, layouts = robust_search.query_embeddings(ctx.model, image)
        hits = robust_search.search_copies(ctx.searcher, ctx.store, ctx.model_key, embeddings, layouts, k)
    records = ctx.store.get_images([i for i, _, _ in hits])
    results = [{"id": i, "score": s, "match": m, "label": (r or {}).get("label"), "source": (r or {}).get("source")}
               for (i, s, m), r in zip(hits, records)]
    return {"results": results, "took_ms": round((time.perf_counter() - started) * 1000, 2),
            "index_version": ctx.searcher.version,
            "thumbnails": lambda iid: files.ensure_thumbnail(settings.data_dir, iid).read_bytes()}
