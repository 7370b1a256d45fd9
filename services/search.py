"""The one query path: the gateway and `vsearch search --local` both call `search`.

A query is an image's bytes (an upload, or a URL fetched here) or the id of an indexed image.
Bytes are decoded at the model's size and embedded in the views `copy_detection` asks for, then
shortlisted in the index and re-ranked; an indexed image is its own query vector. Callers map the
errors: `images.ImageError` (bad image), `sources.SourceError` (URL), `NotIndexed`, and the model
client's `ModelServerUnavailable`/`ModelServerError`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from services import copy_detection, images
from services.sources import fetch_with_settings


class NotIndexed(Exception):
    """The query names an image id that is not in the index."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity of the query view that ranked it
    match: float  # the ranking score (cosine plus copy evidence)
    record: dict | None  # the image's metadata, None if it vanished meanwhile


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    kind: str  # "upload", "url" or "image_id"
    took_ms: float
    index_version: int


def search(ctx, *, data: bytes | None = None, url: str | None = None, image_id: str | None = None,
           k: int = 10) -> SearchResult:
    """The k best matches, best first, for exactly one of `data`, `url`, `image_id`."""
    if sum(x is not None for x in (data, url, image_id)) != 1:
        raise ValueError("give exactly one of data, url, image_id")
    started = time.perf_counter()
    if image_id is not None:
        kind = "image_id"
        try:  # the query is an indexed image itself: its neighbours by cosine
            ranked = [(i, s, s) for i, s in ctx.searcher.search_by_id(image_id, k)]
        except KeyError:
            raise NotIndexed(f"no indexed image {image_id!r}") from None
    else:
        kind = "upload" if data is not None else "url"
        if url is not None:
            data = fetch_with_settings(url, ctx.settings)
        embeddings, layouts = embed_views(ctx, data)
        ranked = copy_detection.search_copies(ctx.searcher, ctx.store, ctx.model_key, embeddings, layouts, k)
    records = ctx.store.get_images([i for i, _, _ in ranked])
    hits = [Hit(i, score, match, record) for (i, score, match), record in zip(ranked, records)]
    return SearchResult(hits, kind, round((time.perf_counter() - started) * 1000, 2), ctx.searcher.version)


def embed_views(ctx, data: bytes):
    """Embeddings and layouts of the query's views (itself or de-rotated, mirrored, trimmed)."""
    size = ctx.model.info().input_size[0]
    image = images.decode(data, ctx.settings.max_image_pixels, draft_for=size)
    return copy_detection.query_embeddings(ctx.model, image)
