"""The seed's result row: the query and its best matches side by side, with scores, as one image."""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

TILE = 160
CAPTION = 36


def _tile(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        im.thumbnail((TILE, TILE))
    tile = Image.new("RGB", (TILE, TILE), (240, 240, 240))
    tile.paste(im, ((TILE - im.width) // 2, (TILE - im.height) // 2))
    return tile


def result_row(query: bytes | None, hits: list[tuple[dict, bytes]]) -> Image.Image:
    """`hits`: (result dict with score/label, thumbnail bytes), best first."""
    tiles = ([("query", _tile(query))] if query else []) + [
        (f"#{i} {hit['score']:.3f}\n{(hit.get('label') or '')[:20]}", _tile(thumb))
        for i, (hit, thumb) in enumerate(hits, 1)]
    row = Image.new("RGB", (max(1, len(tiles)) * (TILE + 8) + 8, TILE + CAPTION + 16), "white")
    draw = ImageDraw.Draw(row)
    font = ImageFont.load_default(size=13)
    for i, (caption, tile) in enumerate(tiles):
        x = 8 + i * (TILE + 8)
        row.paste(tile, (x, 8))
        draw.multiline_text((x, TILE + 12), caption, fill=(30, 30, 30), font=font, spacing=2)
        if caption == "query":
            draw.rectangle((x - 3, 5, x + TILE + 2, TILE + 10), outline=(30, 90, 200), width=3)
    return row
