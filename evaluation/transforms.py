"""Edited copies of an image, as people make them: the queries of copy detection.

Used by the tests, the evaluation harness and the benchmarks; each takes and returns an RGB Pillow
image except `jpeg`, which round-trips through the encoder.
"""
from __future__ import annotations

import io
from typing import Callable

from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps


def mirror(im: Image.Image) -> Image.Image:
    return ImageOps.mirror(im)


def rotate(degrees: float) -> Callable[[Image.Image], Image.Image]:
    def apply(im: Image.Image) -> Image.Image:
        return im.rotate(degrees, resample=Image.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    apply.__name__ = f"rotate{degrees:g}"
    return apply


def center_crop(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def apply(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = round(w * fraction), round(h * fraction)
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch))
    apply.__name__ = f"crop{round(fraction * 100)}"
    return apply


def watermark(im: Image.Image, text: str = "(c) SAMPLE COPY") -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    size = max(12, im.width // 12)
    font = ImageFont.load_default(size=size)
    for y in range(size, im.height, im.height // 3):
        draw.text((im.width // 10, y), text, fill=(255, 255, 255, 160), font=font, stroke_width=1,
                  stroke_fill=(0, 0, 0, 160))
    return out


def jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def apply(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    apply.__name__ = f"jpeg{quality}"
    return apply


def grayscale(im: Image.Image) -> Image.Image:
    return ImageOps.grayscale(im).convert("RGB")


def half_scale(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BILINEAR)


def brightness_contrast(im: Image.Image) -> Image.Image:
    return ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.3)).enhance(0.8)


def combined(im: Image.Image) -> Image.Image:
    return jpeg(50)(watermark(center_crop(0.85)(rotate(5)(mirror(im)))))


TRANSFORMS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "mirror": mirror,
    "rotate10": rotate(10),
    "rotate30": rotate(30),
    "crop70": center_crop(0.7),
    "crop50": center_crop(0.5),
    "watermark": watermark,
    "jpeg20": jpeg(20),
    "grayscale": grayscale,
    "half_scale": half_scale,
    "brightness_contrast": brightness_contrast,
    "combined": combined,
}


def to_jpeg_bytes(im: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    im.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
