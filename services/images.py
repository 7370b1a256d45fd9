"""Image decoding and preprocessing, shared by the worker (indexing) and the gateway (queries).

Model inputs must be bit-identical for identical bytes, so both sides call `model_input` /
`load_for_model` or, equivalently, `prepare(decode(data, draft_for=size), size)`, never their own
resize.

Exceptions (each has a machine `code` and a human message, `str(exc)`)::

    ValueError
    └── ImageError            "invalid_image"
        ├── EmptyImage        "empty"
        ├── UndecodableImage  "undecodable"         not an image, corrupt or truncated
        ├── UnsupportedFormat "unsupported_format"  an image, but not one of ALLOWED_FORMATS
        ├── ImageTooLarge     "too_large"           pixel count or a side above the limits
        └── ImageTooSmall     "too_small"

No module state is written: Pillow's global MAX_IMAGE_PIXELS and LOAD_TRUNCATED_IMAGES are left at
their defaults (truncated files are then refused), and the size limit is our own, checked from the
header before any pixel is decoded.
"""
from __future__ import annotations

import io
import math
import os
import struct
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from services.config import Settings

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # sniffed in this order; MPO is JPEG
DEFAULT_MAX_PIXELS = Settings.max_image_pixels
MAX_SIDE = 30_000
MIN_SIDE = 8
# A progressive JPEG's scans are each decoded over every block of the image: a scan of a few bytes
# of end-of-band runs costs ~5 ms at 36 MP, so 2,000 of them (260 KB) took 11 s to decode and a
# 64 MB upload would take most of an hour. Encoders write about 10 (libjpeg's progression) to a few
# dozen; more is refused before decoding, as libjpeg-turbo's own tools can (djpeg -maxscans).
MAX_JPEG_SCANS = 100
# Model inputs: a box reduction by an integer factor (Pillow's `reduce`, exact integer code) while the
# short side stays >= the target, then OpenCV's bit-exact bilinear (INTER_LINEAR_EXACT: the same
# output on every CPU, so gateway and worker agree wherever they run). The bilinear step then never
# shrinks by 2x or more, so it needs no antialiasing. For a 300x250 photo this costs 0.13 ms against
# 0.37 ms for Pillow's antialiased BILINEAR (docs/benchmarks.md). Thumbnails and the seed's resize
# keep Pillow: BICUBIC for thumbnails, made rarely; reducing_gap=3 first box-reduces while keeping
# >= 3x the target, which Pillow documents as indistinguishable from a full convolution at that gap.
RESAMPLE = Image.Resampling.BILINEAR
THUMBNAIL_RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
# JPEG draft (DCT-domain scaling by 1/2, 1/4 or 1/8) keeps the short side >= DRAFT_GAP * size.
# 1: the DCT scaling averages like a box filter, so the bilinear step after it needs no headroom.
# Against 2, a 512x512 query's work before the model call fell from 8.0 to 5.1 ms; copy detection
# stayed the same on the evaluation set, category P@1 lost two queries of 59 (docs/benchmarks.md,
# docs/quality.md).
DRAFT_GAP = 1
# OpenCV's imdecode flags for libjpeg-turbo's DCT scaling by 1/1, 1/2, 1/4, 1/8 (BGR out).
_JPEG_SCALES = {1: cv2.IMREAD_COLOR_BGR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                8: cv2.IMREAD_REDUCED_COLOR_8}
_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# What Pillow's decoders raise on corrupt or truncated data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError,
                  struct.error)
# Pillow's own global limit (~89 MP warns, ~179 MP raises) still runs inside a few plugins (a GIF
# frame larger than its screen, TIFF strips): where the warning is raised as an error, it means the
# same as the error.
_PILLOW_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
                b"msf1")


class ImageError(ValueError):
    code = "invalid_image"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class EmptyImage(ImageError):
    code = "empty"


class UndecodableImage(ImageError):
    code = "undecodable"


class UnsupportedFormat(ImageError):
    code = "unsupported_format"


class ImageTooLarge(ImageError):
    code = "too_large"


class ImageTooSmall(ImageError):
    code = "too_small"


def sniff_format(data: bytes) -> str | None:
    """The format name (Pillow's, e.g. "JPEG"; or "PDF", "SVG", "HEIF") from the first bytes only."""
    head = bytes(data[:1024])
    prefix = head[:16]  # what Pillow's own identification looks at
    Image.init()  # registers every plugin once; a no-op afterwards
    for name in ALLOWED_FORMATS:
        if _accepts(Image.OPEN[name][1], prefix):
            return name
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") and b"<svg" in head.lower():
        return "SVG"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    # Other formats Pillow knows by their magic bytes (EPS, ICO, PSD...); plugins without a
    # magic-bytes test are skipped, they would claim anything.
    return next((name for name, (_, accept) in tuple(Image.OPEN.items())
                 if name not in ALLOWED_FORMATS and accept and _accepts(accept, prefix)), None)


def _accepts(accept, prefix: bytes) -> bool:
    try:
        result = accept(prefix)
    except _DECODE_ERRORS:  # some tests index past a short prefix
        return False
    return bool(result) and not isinstance(result, str)  # a str: "maybe, but no decoder here"


def decode(data: bytes | str | os.PathLike, max_pixels: int | None = None, *,
           draft_for: int | None = None) -> Image.Image:
    """Decode to an RGB, EXIF-oriented image (the first frame of an animation).

    With `draft_for`, JPEGs are decoded at a reduced scale that still serves `prepare(_, draft_for)`
    (short side >= DRAFT_GAP * draft_for) and thumbnails; other formats are decoded in full.
    """
    im, fmt = _open(data, max_pixels)
    size = im.size
    if draft_for is not None:
        _draft(im, draft_for)
    try:
        im.load()
    except _PILLOW_BOMB as exc:
        raise ImageTooLarge(str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise UndecodableImage(f"cannot decode the {fmt} image (corrupt or truncated): {exc}") from None
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except _DECODE_ERRORS:
        pass  # unreadable EXIF: keep the stored orientation
    rgb = to_rgb(im)
    rgb.info["original_size"] = _oriented(size, rgb.size)
    rgb.info["source_format"] = fmt
    return rgb


def _open(data: bytes | str | os.PathLike, max_pixels: int | None) -> tuple[Image.Image, str]:
    """The image with only its header read, and its format; refused if not allowed or too large."""
    if isinstance(data, (str, os.PathLike)):
        data = Path(data).read_bytes()
    if not data:
        raise EmptyImage("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UndecodableImage("the data is not a recognised image")
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedFormat(f"{fmt} images are not supported; use one of "
                                f"{', '.join(ALLOWED_FORMATS)}")
    try:
        # The plugin's factory parses the header only. Image.open would do the same plus Pillow's
        # own bomb check, whose warning would leak; our limit below replaces it.
        im = Image.OPEN[fmt][0](io.BytesIO(data), "")
    except _PILLOW_BOMB as exc:  # a GIF frame far outside its screen; see _PILLOW_BOMB
        raise ImageTooLarge(str(exc)) from None
    except _DECODE_ERRORS as exc:
        raise UndecodableImage(f"cannot read the {fmt} header: {exc}") from None
    _check_size(im.size, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    if fmt == "JPEG":
        _check_scans(data)
    return im, fmt


def _check_scans(data: bytes) -> None:
    """At most MAX_JPEG_SCANS start-of-scan markers. Counted as the byte pair FF DA: in the
    entropy-coded data an FF is always followed by 00 or a restart marker, so only a pair inside
    metadata (an EXIF thumbnail's own scan) can add to the count."""
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageTooLarge(f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded")


def _draft(im: Image.Image, size: int) -> None:
    """JPEG: decode at the smallest DCT scale that keeps the short side >= DRAFT_GAP * size."""
    w, h = im.size
    scale = DRAFT_GAP * size / min(w, h)
    if scale < 1:  # draft keeps both sides >= the requested ones
        im.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))


def _oriented(size: tuple[int, int], decoded: tuple[int, int]) -> tuple[int, int]:
    """The full-resolution (width, height) turned as the decoded image is (EXIF orientation); a
    draft decode is smaller than the original."""
    w, h = size
    return (h, w) if (decoded[0] > decoded[1]) != (w > h) and w != h else (w, h)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels or max(w, h) > MAX_SIDE:
        raise ImageTooLarge(f"the image is {w}x{h} ({w * h / 1e6:.1f} MP); the limits are "
                            f"{max_pixels / 1e6:.1f} MP and {MAX_SIDE} pixels a side")
    if min(w, h) < MIN_SIDE:
        raise ImageTooSmall(f"the image is {w}x{h}; each side must be at least {MIN_SIDE} pixels")


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB of any Pillow mode: transparency over white, deep modes scaled to 8 bits."""
    if im.mode in _INT_MODES:
        return Image.fromarray(_to_uint8(im)).convert("RGB")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise UnsupportedFormat(f"cannot convert colour mode {im.mode} to RGB: {exc}") from None


def _to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit data by its full range; I and F by the range their values are in (8-bit, 16-bit,
    0..1 floats), else stretched from min to max."""
    a = np.array(im, dtype=np.float32)  # a copy; float32 is exact for 16-bit values
    np.nan_to_num(a, copy=False, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    unit = 1.0 if im.mode == "F" else 255.0
    if im.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif lo >= 0 and hi <= unit:
        lo, hi = 0.0, unit
    a -= lo
    a *= 255.0 / max(hi - lo, 1e-12)
    return np.clip(np.rint(a, out=a), 0, 255, out=a).astype(np.uint8)


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """Short side to `size`, centre crop `size` x `size`: uint8 [size, size, 3] RGB."""
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    image = to_rgb(image)
    factor = min(image.size) // size
    if factor > 1:
        image = image.reduce(factor)
    return _centre_square(np.asarray(image), size)


def _centre_square(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    s = min(w, h)
    top, left = (h - s) // 2, (w - s) // 2
    return cv2.resize(pixels[top:top + s, left:left + s], (size, size), interpolation=cv2.INTER_LINEAR_EXACT)


def model_input(data: bytes | str | os.PathLike, size: int, max_pixels: int | None = None
                ) -> tuple[np.ndarray, dict]:
    """`prepare(decode(data, max_pixels, draft_for=size), size)`, bit for bit, and the decoded
    image's `info` (original_size, source_format).

    Colour and grey JPEGs (most of what is indexed) are decoded by OpenCV, straight into an array at
    the same DCT scale as Pillow's draft and EXIF-oriented alike: the same libjpeg-turbo, without a
    Pillow image to copy out (a 300x250 photo: 0.53 -> 0.35 ms, docs/benchmarks.md). Truncated files
    fail as with Pillow; other formats and colour spaces take the Pillow path.
    """
    if isinstance(data, (str, os.PathLike)):
        data = Path(data).read_bytes()
    im, fmt = _open(data, max_pixels)
    if fmt != "JPEG" or im.mode not in ("RGB", "L") or size <= 0:
        image = decode(data, max_pixels, draft_for=size)
        return prepare(image, size), {k: image.info[k] for k in ("original_size", "source_format")}
    full = im.size
    _draft(im, size)
    scale = next(s for s in _JPEG_SCALES if all(math.ceil(f / s) == d for f, d in zip(full, im.size)))
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _JPEG_SCALES[scale])
    except cv2.error:
        pixels = None
    if pixels is None:
        raise UndecodableImage(f"cannot decode the {fmt} image (corrupt or truncated)")
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    info = {"original_size": _oriented(full, (pixels.shape[1], pixels.shape[0])), "source_format": fmt}
    if min(pixels.shape[:2]) // size > 1:  # larger than even the 1/8 scale serves: Pillow's box reduce
        return prepare(Image.fromarray(pixels), size), info
    return _centre_square(pixels, size), info


def load_for_model(data: bytes | str | os.PathLike, size: int,
                   max_pixels: int | None = None) -> np.ndarray:
    """Decode and prepare in one step (JPEGs decoded at reduced scale): uint8 [size, size, 3]."""
    return model_input(data, size, max_pixels)[0]


def thumbnail_jpeg(image: Image.Image, max_side: int = 256, quality: int = 85) -> bytes:
    """JPEG bytes of the image fitted inside max_side x max_side (never enlarged)."""
    thumb = to_rgb(image)
    thumb = thumb.copy() if thumb is image else thumb  # Image.thumbnail works in place
    thumb.thumbnail((max_side, max_side), THUMBNAIL_RESAMPLE, reducing_gap=REDUCING_GAP)
    buf = io.BytesIO()
    thumb.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def resize_exact(image: Image.Image, width: int, height: int) -> Image.Image:
    """Squash to exactly width x height, ignoring the aspect ratio (the seed's image_resize)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, not {width}x{height}")
    return to_rgb(image).resize((width, height), RESAMPLE, reducing_gap=REDUCING_GAP)
