"""The one query path: the gateway and `vsearch search --local` both call `search`.

A query is an image's bytes (an upload, or a URL fetched here) or the id of an indexed image.
Bytes are decoded at the model's size and embedded in the views `copy_detection` asks for, then
shortlisted in the index, re-ranked and verified (`services.copies`); an indexed image is its own
query (its stored vector, layout and keypoints). Every hit carries a verdict (`services.verdicts`:
exact, copy, similar, none, from the thresholds published for the model version); `min_verdict`
leaves out the weaker ones. Callers map the
errors: `images.ImageError` (bad image), `sources.SourceError` (URL), `NotIndexed`, and the model
client's `ModelServerUnavailable`/`ModelServerError`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from services import copies, images, verdicts
from services.sources import fetch_with_settings


class NotIndexed(Exception):
    """The query names an image id that is not in the index."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity of the query view that ranked it
    match: float  # the ranking score (cosine plus copy evidence)
    record: dict | None  # the image's metadata, None if it vanished meanwhile
    verdict: str = "none"  # exact, copy, similar or none


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    kind: str  # "upload", "url" or "image_id"
    took_ms: float
    index_version: int

    @property
    def verdict(self) -> str:
        """The best result's verdict, or `none` when there is no result."""
        return self.hits[0].verdict if self.hits else "none"


def search(ctx, *, data: bytes | None = None, url: str | None = None, image_id: str | None = None,
           k: int = 10, min_verdict: str | None = None) -> SearchResult:
    """The k best matches, best first, for exactly one of `data`, `url`, `image_id`; with
    `min_verdict`, only those whose verdict reaches it."""
    if sum(x is not None for x in (data, url, image_id)) != 1:
        raise ValueError("give exactly one of data, url, image_id")
    started = time.perf_counter()
    thresholds = verdicts.for_model_key(ctx.model_key)
    if image_id is not None:
        kind = "image_id"
        try:
            ranked = copies.search_by_id(ctx.searcher, ctx.store, ctx.model_key, image_id, k, thresholds, min_verdict)
        except KeyError:
            raise NotIndexed(f"no indexed image {image_id!r}") from None
    else:
        kind = "upload" if data is not None else "url"
        if url is not None:
            data = fetch_with_settings(url, ctx.settings)
        ranked = copies.search(ctx.searcher, ctx.store, ctx.model_key, embed_views(ctx, data), k, thresholds,
                               min_verdict)
    records = ctx.store.get_images([h.image_id for h in ranked])
    hits = [Hit(h.image_id, h.cosine, h.score, record, h.verdict) for h, record in zip(ranked, records)]
    return SearchResult(hits, kind, round((time.perf_counter() - started) * 1000, 2), ctx.searcher.version)


def embed_views(ctx, data: bytes) -> copies.Query:
    """The query's views (itself or de-rotated, mirrored, trimmed) embedded in one model call."""
    size = ctx.model.info().input_size[0]
    image = images.decode(data, ctx.settings.max_image_pixels, draft_for=size)
    return copies.prepare(ctx.model, image)
