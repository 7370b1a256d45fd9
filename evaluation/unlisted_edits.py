"""Edit families nobody listed: a check that copy detection generalises beyond evaluation/edits.py.

Nothing in the service was tuned on these. They were written after the method and its thresholds
were fixed, to stand in for the edits an outside evaluation brings: camera and geometry changes
outside the listed ones (keystone perspective, shear, quarter turns, upside-down, lens distortion),
tone and filter changes (gamma, sharpening, posterisation, pixelation, vignette, motion blur,
WebP), and what people and platforms do to pictures (letterboxed onto a blurred copy of itself,
shown inside an application window, a tiled watermark, parts cut out). Same contract as the
listed families: (image, generator, pool) -> (edited image, parameters).
"""
from __future__ import annotations

import io
import math

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from evaluation.edits import Edit, _background, _font, _u


def _warp(im: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill) -> Image.Image:
    out = cv2.warpPerspective(np.asarray(im), matrix, size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(int(c) for c in fill))
    return Image.fromarray(out)


def perspective(im, rng, pool):
    """A print or a screen photographed at an angle: each corner moved inwards by 0-20 % of a side."""
    w, h = im.size
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    strength = _u(rng, 0.05, 0.2)
    dst = src + np.float32([[sx * w, sy * h] for sx, sy in
                            rng.uniform(0, strength, (4, 2)) * [[1, 1], [-1, 1], [-1, -1], [1, -1]]])
    return _warp(im, cv2.getPerspectiveTransform(src, dst), (w, h), _background(im)), {"strength": round(strength, 2)}


def shear(im, rng, pool):
    """Horizontal or vertical shear by 8-25 degrees, the canvas grown to hold it."""
    angle = _u(rng, 8, 25) * float(rng.choice([-1, 1]))
    t = math.tan(math.radians(angle))
    w, h = im.size
    if rng.random() < 0.5:
        m = np.float32([[1, t, max(0, -t * h)], [0, 1, 0], [0, 0, 1]])
        size = (w + round(abs(t) * h), h)
    else:
        m = np.float32([[1, 0, 0], [t, 1, max(0, -t * w)], [0, 0, 1]])
        size = (w, h + round(abs(t) * w))
    return _warp(im, m, size, _background(im)), {"angle": round(float(angle), 1)}


def quarter_turn(im, rng, pool):
    """90, 180 or 270 degrees: a photo stored without its orientation tag."""
    turns = int(rng.integers(1, 4))
    return im.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                         Image.Transpose.ROTATE_270][turns - 1]), {"degrees": 90 * turns}


def upside_down(im, rng, pool):
    return ImageOps.flip(im), {}


def lens(im, rng, pool):
    """Barrel or pincushion distortion (k1 in +-0.15..0.4 of the half-diagonal)."""
    k = _u(rng, 0.15, 0.4) * float(rng.choice([-1, 1]))
    w, h = im.size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, r0 = w / 2, h / 2, math.hypot(w / 2, h / 2)
    dx, dy = (x - cx) / r0, (y - cy) / r0
    f = 1 + k * (dx * dx + dy * dy)
    out = cv2.remap(np.asarray(im), (cx + dx * f * r0).astype(np.float32), (cy + dy * f * r0).astype(np.float32),
                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return Image.fromarray(out), {"k": round(float(k), 2)}


def gamma(im, rng, pool):
    g = math.exp(_u(rng, -0.9, 0.9))
    table = [round(255 * (i / 255) ** g) for i in range(256)] * 3
    return im.point(table), {"gamma": round(g, 2)}


def sharpen(im, rng, pool):
    radius, percent = _u(rng, 1, 5), int(rng.integers(150, 400))
    return im.filter(ImageFilter.UnsharpMask(radius, percent, 2)), {"radius": round(radius, 1), "percent": percent}


def posterize(im, rng, pool):
    bits = int(rng.integers(2, 4))
    return ImageOps.posterize(im, bits), {"bits": bits}


def pixelate(im, rng, pool):
    """Mosaic: blocks of 1.5-4 % of the long side."""
    block = max(2, round(max(im.size) * _u(rng, 0.015, 0.04)))
    small = im.resize((max(1, im.width // block), max(1, im.height // block)), Image.Resampling.BOX)
    return small.resize(im.size, Image.Resampling.NEAREST), {"block": block}


def vignette(im, rng, pool):
    strength = _u(rng, 0.5, 0.9)
    w, h = im.size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((x - w / 2) / (w / 2), (y - h / 2) / (h / 2)) / math.sqrt(2)
    mask = 1 - strength * np.clip(r, 0, 1) ** 2
    return Image.fromarray((np.asarray(im, np.float32) * mask[..., None]).astype(np.uint8)), \
        {"strength": round(strength, 2)}


def motion_blur(im, rng, pool):
    length = max(3, round(max(im.size) * _u(rng, 0.01, 0.04)))
    angle = _u(rng, 0, 180)
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    kernel /= max(kernel.sum(), 1e-6)
    return Image.fromarray(cv2.filter2D(np.asarray(im), -1, kernel)), {"length": length, "angle": round(angle)}


def webp(im, rng, pool):
    q = int(rng.integers(5, 41))
    buffer = io.BytesIO()
    im.save(buffer, "WEBP", quality=q)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), {"quality": q}


def letterbox(im, rng, pool):
    """Fitted into a square or 9:16 canvas whose empty part shows a blurred, enlarged copy of it."""
    ratio = float(rng.choice([1.0, 9 / 16, 16 / 9]))
    w, h = im.size
    W, H = (max(w, round(h * ratio)), max(h, round(w / ratio)))
    back = ImageOps.fit(im, (W, H)).filter(ImageFilter.GaussianBlur(max(4, W // 25)))
    back.paste(im, ((W - w) // 2, (H - h) // 2))
    return back, {"ratio": round(ratio, 2)}


def app_window(im, rng, pool):
    """A screenshot of the picture shown in an application: title bar, side panel, status bar."""
    w, h = im.size
    bar, side, status = round(h * _u(rng, 0.05, 0.12)), round(w * _u(rng, 0.1, 0.4)), round(h * _u(rng, 0.03, 0.08))
    panel = tuple(int(c) for c in rng.integers(20, 240, 3))
    canvas = Image.new("RGB", (w + side, h + bar + status), panel)
    x = int(rng.integers(0, 2)) * side  # the panel left or right
    canvas.paste(im, (side - x, bar))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas.width, bar), fill=tuple(255 - c for c in panel))
    font = _font(max(8, bar // 2))
    draw.text((bar // 2, bar // 4), "photo_0412.jpg - Viewer", fill=panel, font=font)
    for i in range(int(rng.integers(3, 9))):
        draw.text((x + 6, bar + 6 + i * (bar + 4)), f"item {i}", fill=(0, 0, 0), font=font)
    return canvas, {"bar": bar, "side": side}


def tiled_watermark(im, rng, pool):
    """A word repeated across the whole picture, translucent, at an angle."""
    w, h = im.size
    size = max(8, round(min(w, h) * _u(rng, 0.05, 0.12)))
    layer = Image.new("RGBA", (w * 2, h * 2), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    colour = (*[int(c) for c in rng.integers(0, 256, 3)], int(rng.integers(60, 140)))
    for y in range(0, h * 2, size * 3):
        draw.text(((y // (size * 3)) % 2 * size * 2, y), "SAMPLE  " * (2 * w // size + 1), fill=colour, font=_font(size))
    layer = layer.rotate(_u(rng, -40, 40)).crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    out = im.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB"), {"size": size}


def cutout(im, rng, pool):
    """One to four rectangles filled flat, 10-30 % of the area in all."""
    out = im.copy()
    draw = ImageDraw.Draw(out)
    w, h = im.size
    n = int(rng.integers(1, 5))
    share = _u(rng, 0.1, 0.3) / n
    for _ in range(n):
        rw = max(2, round(w * math.sqrt(share) * _u(rng, 0.6, 1.6)))
        rh = max(2, round(w * h * share / rw))
        x, y = int(rng.integers(0, max(1, w - rw))), int(rng.integers(0, max(1, h - rh)))
        draw.rectangle((x, y, x + rw, y + rh), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return out, {"rectangles": n}


SINGLE: dict[str, Edit] = {
    "perspective": perspective, "shear": shear, "quarter_turn": quarter_turn, "upside_down": upside_down,
    "lens": lens, "gamma": gamma, "sharpen": sharpen, "posterize": posterize, "pixelate": pixelate,
    "vignette": vignette, "motion_blur": motion_blur, "webp": webp, "letterbox": letterbox,
    "app_window": app_window, "tiled_watermark": tiled_watermark, "cutout": cutout,
}


def chain(im, rng, pool):
    steps = []
    for name in rng.choice(sorted(SINGLE), 2, replace=False):
        im, params = SINGLE[str(name)](im, rng, pool)
        steps.append({str(name): params})
    return im, {"steps": steps}


FAMILIES: dict[str, Edit] = {**SINGLE, "unlisted_chain": chain}
