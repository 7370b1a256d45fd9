"""Edit families with random parameters: the copy-detection queries.

Each family draws its parameters from a `numpy.random.Generator`, so a seed fixes a whole query set
(the test split's is fixed: `TEST_SEED`). A family takes an RGB Pillow image, the generator and a
pool of unrelated photos (for collages) and returns the edited image and the parameters it drew.
The families are the issue's list: rotation by any angle in [-45, 45] with the fill a contrasting
colour, the background colour or blurred content; crops of 30-90 % of the area at any position;
aspect change; scale down (to as little as 64 px); mirror; overlays (text, logo, emoji, bars) at
random places; pasted into a larger unrelated photo (collage) or framed; colour, brightness,
contrast, grey scale, blur, noise, JPEG 10-50; and chains of 2 or 3 of those.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

TEST_SEED = 20261202
DEV_SEED = 7

Edit = Callable[[Image.Image, np.random.Generator, Sequence[Image.Image]], tuple[Image.Image, dict]]


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _background(im: Image.Image) -> tuple[int, int, int]:
    """The median colour of the outermost pixels."""
    a = np.asarray(im)
    edge = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return tuple(int(v) for v in np.median(edge, axis=0))


def _contrasting(colour: tuple[int, int, int], rng) -> tuple[int, int, int]:
    """A random colour far from `colour` (every channel at least 100 away where possible)."""
    out = []
    for c in colour:
        lo, hi = (0, c - 100) if c >= 128 else (c + 100, 255)
        out.append(int(rng.integers(lo, hi + 1)))
    return tuple(out)


def rotate(im, rng, pool):
    angle = _u(rng, -45, 45)
    fill = str(rng.choice(["contrasting", "background", "blurred"]))
    if fill == "blurred":
        out = im.rotate(angle, Image.Resampling.BICUBIC, expand=True)
        mask = Image.new("L", im.size, 255).rotate(angle, Image.Resampling.BICUBIC, expand=True)
        back = im.resize(out.size, Image.Resampling.BILINEAR).filter(ImageFilter.GaussianBlur(max(4, out.width // 20)))
        back.paste(out, mask=mask)
        out = back
    else:
        colour = _background(im) if fill == "background" else _contrasting(_background(im), rng)
        out = im.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=colour)
    return out, {"angle": round(angle, 1), "fill": fill}


def crop(im, rng, pool):
    area, aspect = _u(rng, 0.3, 0.9), math.exp(_u(rng, -0.4, 0.4))
    fw, fh = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
    w, h = max(8, round(im.width * fw)), max(8, round(im.height * fh))
    left, top = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    return im.crop((left, top, left + w, top + h)), {"area": round(fw * fh, 2), "at": (left, top)}


def aspect(im, rng, pool):
    factor = math.exp(_u(rng, -0.5, 0.5))
    w, h = (round(im.width * factor), im.height) if rng.random() < 0.5 else (im.width, round(im.height * factor))
    return im.resize((max(8, w), max(8, h)), Image.Resampling.BILINEAR), {"factor": round(factor, 2)}


def downscale(im, rng, pool):
    longest = max(im.size)
    target = round(math.exp(_u(rng, math.log(64), math.log(max(65, longest * 0.8)))))
    scale = min(1.0, target / longest)
    size = (max(4, round(im.width * scale)), max(4, round(im.height * scale)))
    return im.resize(size, Image.Resampling.BILINEAR), {"long_side": max(size)}


def mirror(im, rng, pool):
    return ImageOps.mirror(im), {}


def _font(size: int):
    return ImageFont.load_default(size=max(8, size))


def overlay(im, rng, pool):
    kind = str(rng.choice(["text", "logo", "emoji", "bar"]))
    out = im.copy()
    draw = ImageDraw.Draw(out, "RGBA")
    w, h = im.size
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    alpha = int(rng.integers(140, 256))
    if kind == "text":
        size = max(8, round(h * _u(rng, 0.06, 0.18)))
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789 ©@#"), int(rng.integers(6, 18))))
        x, y = int(rng.integers(0, max(1, w - size))), int(rng.integers(0, max(1, h - size)))
        draw.text((x, y), text, fill=(*colour, alpha), font=_font(size), stroke_width=1, stroke_fill=(0, 0, 0, alpha))
    elif kind == "logo":
        s = max(8, round(min(w, h) * _u(rng, 0.12, 0.3)))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        draw.rounded_rectangle((x, y, x + s, y + s), radius=s // 5, fill=(*colour, alpha))
        draw.text((x + s // 6, y + s // 4), "".join(rng.choice(list("ABCXYZ"), 2)), fill=(255, 255, 255, alpha),
                  font=_font(s // 2))
    elif kind == "emoji":
        for _ in range(int(rng.integers(1, 4))):
            s = max(8, round(min(w, h) * _u(rng, 0.1, 0.25)))
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            draw.ellipse((x, y, x + s, y + s), fill=(255, 205, 40, 255), outline=(120, 80, 0, 255))
            draw.ellipse((x + s * 0.28, y + s * 0.3, x + s * 0.4, y + s * 0.45), fill=(40, 30, 0, 255))
            draw.ellipse((x + s * 0.6, y + s * 0.3, x + s * 0.72, y + s * 0.45), fill=(40, 30, 0, 255))
            draw.arc((x + s * 0.25, y + s * 0.35, x + s * 0.75, y + s * 0.8), 20, 160, fill=(40, 30, 0, 255),
                     width=max(1, s // 14))
    else:
        thick = max(2, round(h * _u(rng, 0.06, 0.2)))
        y = int(rng.choice([0, h - thick, int(rng.integers(0, h - thick + 1))]))
        draw.rectangle((0, y, w, y + thick), fill=(*colour, alpha))
    return out, {"kind": kind}


def collage(im, rng, pool):
    back = pool[int(rng.integers(len(pool)))]
    share = _u(rng, 0.25, 0.6)  # of the collage's area
    scale = math.sqrt(share * back.width * back.height / (im.width * im.height))
    piece = im.resize((max(8, round(im.width * scale)), max(8, round(im.height * scale))), Image.Resampling.BILINEAR)
    W, H = max(back.width, piece.width + 8), max(back.height, piece.height + 8)
    canvas = back.resize((W, H), Image.Resampling.BILINEAR)
    x, y = int(rng.integers(0, W - piece.width + 1)), int(rng.integers(0, H - piece.height + 1))
    canvas.paste(piece, (x, y))
    return canvas, {"share": round(piece.width * piece.height / (W * H), 2)}


def frame(im, rng, pool):
    pad = round(max(im.size) * _u(rng, 0.04, 0.2))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    out = ImageOps.expand(im, border=pad, fill=colour)
    if rng.random() < 0.5:  # a mat and an outer frame
        out = ImageOps.expand(out, border=max(2, pad // 2), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return out, {"pad": pad}


def colour(im, rng, pool):
    shift = int(rng.integers(-60, 61))
    h, s, v = im.convert("HSV").split()
    h = h.point(lambda x: (x + shift) % 256)
    out = Image.merge("HSV", (h, s, v)).convert("RGB")
    sat = _u(rng, 0.4, 1.8)
    return ImageEnhance.Color(out).enhance(sat), {"hue": shift, "saturation": round(sat, 2)}


def brightness(im, rng, pool):
    f = math.exp(_u(rng, -0.7, 0.5))
    return ImageEnhance.Brightness(im).enhance(f), {"factor": round(f, 2)}


def contrast(im, rng, pool):
    f = math.exp(_u(rng, -0.9, 0.6))
    return ImageEnhance.Contrast(im).enhance(f), {"factor": round(f, 2)}


def greyscale(im, rng, pool):
    return ImageOps.grayscale(im).convert("RGB"), {}


def blur(im, rng, pool):
    r = _u(rng, 0.5, 0.02 * max(im.size) + 0.5)
    return im.filter(ImageFilter.GaussianBlur(r)), {"radius": round(r, 1)}


def noise(im, rng, pool):
    sigma = _u(rng, 5, 30)
    a = np.asarray(im, np.float32) + rng.normal(0, sigma, (im.height, im.width, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), {"sigma": round(sigma, 1)}


def jpeg(im, rng, pool):
    q = int(rng.integers(10, 51))
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=q)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), {"quality": q}


SINGLE: dict[str, Edit] = {
    "rotate": rotate, "crop": crop, "aspect": aspect, "downscale": downscale, "mirror": mirror,
    "overlay": overlay, "collage": collage, "frame": frame, "colour": colour, "brightness": brightness,
    "contrast": contrast, "greyscale": greyscale, "blur": blur, "noise": noise, "jpeg": jpeg,
}


def chain(im, rng, pool):
    names = list(rng.choice(sorted(SINGLE), int(rng.integers(2, 4)), replace=False))
    steps = []
    for name in names:
        im, params = SINGLE[name](im, rng, pool)
        steps.append({name: params})
    return im, {"steps": steps}


FAMILIES: dict[str, Edit] = {**SINGLE, "chain": chain}


def make_queries(originals: Sequence[Image.Image], sources: Sequence[int], pool: Sequence[Image.Image],
                 seed: int, families: Sequence[str] = tuple(FAMILIES),
                 table: dict[str, Edit] = FAMILIES) -> list[tuple[str, int, Image.Image, dict]]:
    """[(family, source index, edited image, parameters)] for every family (by name, from `table`)
    and source, all drawn from one generator seeded with `seed` (the same seed and inputs give the
    same queries)."""
    rng = np.random.default_rng(seed)
    out = []
    for family in families:
        for i in sources:
            image, params = table[family](originals[i], rng, pool)
            out.append((family, int(i), image.convert("RGB"), params))
    return out
