"""services.images: decoding, refusals, orientation, colour modes and model-input preparation."""
from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from services import images
from services.config import Settings
from services.images import ImageError, decode, load_for_model, model_input, prepare, sniff_format

BG, FG = (200, 30, 60), (20, 140, 250)


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def patch_image() -> Image.Image:
    """32x32 of BG with an 8x8 FG square at (12, 12)."""
    im = Image.new("RGB", (32, 32), BG)
    im.paste(FG, (12, 12, 20, 20))
    return im


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT: nothing near that size exists."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def jpeg_header(width: int, height: int) -> bytes:
    """A real 16x16 JPEG with its SOF0 frame header rewritten to claim width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), BG), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_header(width: int, height: int) -> bytes:
    """A real 16x16 GIF whose first frame claims width x height, far outside its 16x16 screen."""
    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    frame = data.index(b",\0\0\0\0\x10\0\x10\0")
    data[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def assert_rgb(im: Image.Image, xy: tuple[int, int], expected, tol: int = 0) -> None:
    assert im.mode == "RGB"
    got = np.array(im.getpixel(xy), dtype=int)
    assert np.abs(got - np.array(expected)).max() <= tol, (xy, tuple(got), expected)


@pytest.fixture(scope="module")
def photo_bytes(photos) -> bytes:
    return photos[0].read_bytes()


@pytest.fixture(scope="module")
def camera_jpeg(photos) -> bytes:
    """A real photo upscaled to 12 MP (4000x3000), as the camera benchmark set does."""
    with Image.open(photos[1]) as im:
        return encode(im.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC), "JPEG",
                      quality=90)


# -- formats and colour modes ------------------------------------------------------------------

@pytest.mark.parametrize("fmt, kwargs, tol", [
    ("JPEG", {"quality": 95}, 8),
    ("PNG", {}, 0),
    ("GIF", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("WEBP", {"quality": 90}, 12),
    ("BMP", {}, 0),
    ("TIFF", {}, 0),
    ("TIFF", {"compression": "tiff_lzw"}, 0),
])
def test_formats_keep_colours(fmt, kwargs, tol):
    data = encode(patch_image(), fmt, **kwargs)
    assert sniff_format(data) == fmt
    im = decode(data)
    assert im.size == (32, 32)
    assert_rgb(im, (3, 3), BG, tol)
    assert_rgb(im, (16, 16), FG, tol)


def test_decode_accepts_a_path(tmp_path):
    path = tmp_path / "patch.png"
    path.write_bytes(encode(patch_image(), "PNG"))
    assert np.array_equal(np.array(decode(path)), np.array(decode(path.read_bytes())))
    assert load_for_model(str(path), 16).shape == (16, 16, 3)


def two_tone(mode: str, left, right, size=(32, 32)) -> Image.Image:
    im = Image.new(mode, size, left)
    im.paste(right, (16, 0, 32, 32))
    return im


def palette_image(transparent: bool) -> tuple[Image.Image, dict]:
    im = Image.new("P", (32, 32), 0)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    im.paste(1, (16, 0, 32, 32))
    return im, ({"transparency": 0} if transparent else {})


@pytest.mark.parametrize("make, fmt, left, right, tol", [
    (lambda: (two_tone("L", 77, 200), {}), "PNG", (77,) * 3, (200,) * 3, 0),
    (lambda: (two_tone("1", 0, 1), {}), "PNG", (0, 0, 0), (255, 255, 255), 0),
    (lambda: palette_image(False), "PNG", (0, 0, 0), (10, 200, 30), 0),
    (lambda: palette_image(True), "PNG", (255, 255, 255), (10, 200, 30), 0),
    (lambda: palette_image(True), "GIF", (255, 255, 255), (10, 200, 30), 0),
    (lambda: (two_tone("LA", (50, 0), (50, 255)), {}), "PNG", (255,) * 3, (50,) * 3, 0),
    (lambda: (two_tone("LA", (0, 128), (100, 255)), {}), "PNG", (127,) * 3, (100,) * 3, 1),
    (lambda: (two_tone("RGBA", (255, 0, 0, 0), (0, 0, 255, 255)), {}), "PNG",
     (255, 255, 255), (0, 0, 255), 0),
    (lambda: (two_tone("RGBA", (0, 0, 0, 128), (0, 0, 255, 255)), {}), "WEBP",
     (127, 127, 127), (0, 0, 255), 1),
    (lambda: (two_tone("RGB", (1, 2, 3), (9, 8, 7)), {"transparency": (1, 2, 3)}), "PNG",
     (255, 255, 255), (9, 8, 7), 0),
    (lambda: (two_tone("CMYK", (0, 255, 255, 0), (0, 0, 0, 255)), {"quality": 95}), "JPEG",
     (255, 0, 0), (0, 0, 0), 8),
    (lambda: (two_tone("CMYK", (0, 255, 255, 0), (255, 0, 255, 0)), {}), "TIFF",
     (255, 0, 0), (0, 255, 0), 0),
], ids=["L", "1", "P", "P-transparent", "GIF-transparent", "LA", "LA-half", "RGBA", "RGBA-half-webp",
        "RGB-tRNS", "CMYK-jpeg-adobe", "CMYK-tiff"])
def test_colour_modes_become_rgb_on_white(make, fmt, left, right, tol):
    im, kwargs = make()
    out = decode(encode(im, fmt, **kwargs))
    assert_rgb(out, (4, 16), left, tol)
    assert_rgb(out, (27, 16), right, tol)


def gradient(dtype, lo, hi) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, 256), (16, 1)).astype(dtype)


@pytest.mark.parametrize("array, fmt, expect_lo, expect_hi", [
    (gradient(np.uint16, 0, 65535), "PNG", 0, 255),       # I;16 by its full range
    (gradient(np.uint16, 0, 65535), "TIFF", 0, 255),
    (gradient(np.int32, 0, 65535), "TIFF", 0, 255),       # I holding 16-bit values
    (gradient(np.int32, -1000, 100_000), "TIFF", 0, 255),  # I of unknown range: stretched
    (gradient(np.int32, 10, 200), "TIFF", 10, 200),       # I holding 8-bit values: as they are
    (gradient(np.float32, 0.0, 1.0), "TIFF", 0, 255),     # F in 0..1
    (gradient(np.float32, -3.0, 7.0), "TIFF", 0, 255),    # F of unknown range: stretched
], ids=["I;16-png", "I;16-tiff", "I-16bit", "I-wide", "I-8bit", "F-unit", "F-wide"])
def test_deep_modes_keep_their_gradient(array, fmt, expect_lo, expect_hi):
    source = Image.fromarray(array)
    assert source.mode in ("I;16", "I", "F")
    out = np.array(decode(encode(source, fmt)))
    row = out[8, :, 0].astype(int)
    assert np.array_equal(out[..., 0], out[..., 2])
    assert np.all(np.diff(row) >= 0) and row[-1] - row[0] > 150
    assert abs(row[0] - expect_lo) <= 1 and abs(row[-1] - expect_hi) <= 1
    assert abs(row[128] - (expect_lo + expect_hi) / 2) <= 3  # a gradient, not clipped to white


@pytest.mark.parametrize("fmt, kwargs", [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {}),
                                         ("MPO", {"quality": 95})])
def test_animation_gives_its_first_frame(fmt, kwargs):
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **kwargs)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert_rgb(decode(data), (16, 16), (255, 0, 0), 2)


# -- EXIF orientation --------------------------------------------------------------------------

RED, GREEN = (255, 0, 0), (0, 255, 0)
# Where the stored top-left (red) and top-right (green) corners are displayed, per EXIF 2.3.
CORNERS = {1: ("TL", "TR"), 2: ("TR", "TL"), 3: ("BR", "BL"), 4: ("BL", "BR"),
           5: ("TL", "BL"), 6: ("TR", "BR"), 7: ("BR", "TR"), 8: ("BL", "TL")}


def oriented(orientation: int, fmt: str = "JPEG", size=(64, 32)) -> bytes:
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste(RED, (0, 0, 16, 16))
    im.paste(GREEN, (size[0] - 16, 0, size[0], 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def corner(im: Image.Image, name: str) -> tuple[int, int]:
    w, h = im.size
    return (8 if name[1] == "L" else w - 9, 8 if name[0] == "T" else h - 9)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation(orientation, fmt):
    im = decode(oriented(orientation, fmt))
    assert im.size == ((64, 32) if orientation <= 4 else (32, 64))
    red_at, green_at = CORNERS[orientation]
    assert_rgb(im, corner(im, red_at), RED, 10)
    assert_rgb(im, corner(im, green_at), GREEN, 10)


def test_exif_orientation_survives_the_draft_path():
    stored = Image.new("RGB", (2000, 1000), (0, 0, 255))
    stored.paste(RED, (0, 0, 2000, 500))  # top half red; orientation 6 shows it on the right
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    assert decode(data, draft_for=64).size == (125, 250)  # drafted at 1/8, then rotated
    out = load_for_model(data, 64).astype(int)
    assert np.abs(out[:, :28] - (0, 0, 255)).max() <= 10
    assert np.abs(out[:, 36:] - RED).max() <= 10


# -- refusals ----------------------------------------------------------------------------------

def icon() -> bytes:
    return encode(Image.new("RGB", (32, 32), BG), "ICO")


@pytest.mark.parametrize("data, code", [
    (b"", "empty"),
    (b"hello, I am a text file named photo.jpg\n" * 20, "undecodable"),
    (b"BM" + b"\0" * 100, "undecodable"),
    (b"\x89PNG\r\n\x1a\n" + b"\xff" * 100, "undecodable"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 100, "undecodable"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "unsupported_format"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "unsupported_format"),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 100, "unsupported_format"),
    (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + b"\0" * 100, "unsupported_format"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported_format"),
    (icon(), "unsupported_format"),
    (encode(Image.new("RGB", (7, 100)), "PNG"), "too_small"),
    (encode(Image.new("RGB", (4, 4)), "GIF"), "too_small"),
], ids=["empty", "text", "bmp-garbage", "png-garbage", "jpeg-garbage", "svg", "pdf", "heic", "avif",
        "eps", "ico", "thin", "tiny"])
def test_refusals(data, code):
    with pytest.raises(ImageError) as info:
        decode(data)
    assert info.value.code == code
    assert isinstance(info.value, ValueError) and str(info.value) == info.value.message
    with pytest.raises(ImageError):
        load_for_model(data, 32)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("progressive", [False, True])
def test_truncated_real_jpeg_is_refused(photo_bytes, fraction, progressive):
    data = photo_bytes
    if progressive:
        data = encode(Image.open(io.BytesIO(data)), "JPEG", quality=90, progressive=True)
    cut = data[:int(len(data) * fraction)]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nobody turned Pillow's guard off
    for call in (lambda: decode(cut), lambda: load_for_model(cut, 64)):
        with pytest.raises(ImageError) as info:
            call()
        assert info.value.code == "undecodable"


def test_truncated_png_is_refused():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageError) as info:
        decode(data[:len(data) // 2])
    assert info.value.code == "undecodable"


@pytest.mark.parametrize("data", [
    png_header(9000, 9000),      # 81 MP: above our 80 MP, below Pillow's warning
    png_header(10000, 10000),    # 100 MP: Pillow would warn here
    png_header(100000, 100000),  # 10 GP: Pillow would raise its own error here
    png_header(40000, 10),       # a side above 30000
    jpeg_header(65000, 65000),
    gif_header(9000, 9000),
    gif_header(10000, 10000),    # 100 MP: Pillow's GIF plugin warns while opening
    gif_header(20000, 20000),    # 400 MP: Pillow's GIF plugin raises its own error while opening
], ids=["png-81MP", "png-100MP", "png-10GP", "png-long-side", "jpeg-4GP", "gif-81MP", "gif-100MP",
        "gif-400MP"])
def test_decompression_bombs_are_refused_from_the_header(monkeypatch, data):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageError) as info:
        load_for_model(data, 224)
    assert info.value.code == "too_large"


def test_max_pixels_is_configurable():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert decode(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(images.ImageTooLarge):
        decode(data, max_pixels=9_999)
    assert images.DEFAULT_MAX_PIXELS == Settings().max_image_pixels == 80_000_000


def test_exception_codes():
    classes = [images.EmptyImage, images.UndecodableImage, images.UnsupportedFormat,
               images.ImageTooLarge, images.ImageTooSmall]
    assert [c.code for c in classes] == ["empty", "undecodable", "unsupported_format", "too_large",
                                         "too_small"]
    assert all(issubclass(c, ImageError) and issubclass(c, ValueError) for c in classes)


@pytest.mark.parametrize("data, name", [
    (encode(patch_image(), "JPEG"), "JPEG"),
    (encode(patch_image(), "PNG"), "PNG"),
    (png_header(100000, 100000), "PNG"),
    (icon(), "ICO"),
    (b"%PDF-1.4", "PDF"),
    (b"\0\0\0\x18ftypmif1", "HEIF"),
    (b"plain text", None),
    (b"", None),
])
def test_sniff_format(data, name):
    assert sniff_format(data) == name


# -- model input -------------------------------------------------------------------------------

@pytest.mark.parametrize("size_in, size", [((300, 200), 224), ((200, 300), 227), ((50, 40), 64),
                                           ((224, 224), 224)])
def test_load_for_model_shape(size_in, size):
    out = load_for_model(encode(Image.new("RGB", size_in, BG), "PNG"), size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8 and out.flags.writeable
    assert np.abs(out.astype(int) - BG).max() <= 1


@pytest.mark.parametrize("landscape", [True, False])
def test_centre_crop_takes_the_middle(landscape):
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    im.paste(RED, (90, 0, 210, 100))  # the middle 120 columns; the crop keeps the middle 100
    if not landscape:
        im = im.transpose(Image.Transpose.ROTATE_90)
    out = prepare(im, 50).astype(int)
    assert np.abs(out - RED).max() <= 2


def test_prepare_composites_transparency():
    out = prepare(Image.new("RGBA", (20, 20), (0, 0, 0, 0)), 16)
    assert (out == 255).all()


def test_draft_path_matches_a_full_decode(camera_jpeg):
    drafted = decode(camera_jpeg, draft_for=224)
    assert drafted.size == (500, 375)  # 1/8 scale: short side 375 >= 224
    fast = load_for_model(camera_jpeg, 224)
    assert np.array_equal(fast, prepare(drafted, 224))  # the one definition both sides share
    full = prepare(decode(camera_jpeg), 224)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


def test_same_bytes_same_input_across_threads(photos):
    datas = [p.read_bytes() for p in photos[:4]] * 2
    expected = [load_for_model(d, 224) for d in datas]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda d: load_for_model(d, 224), datas))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_real_photo_end_to_end(photo_bytes):
    assert sniff_format(photo_bytes) == "JPEG"
    out = load_for_model(photo_bytes, 224)
    assert out.shape == (224, 224, 3) and out.std() > 20  # real content, not a flat grey


# -- thumbnails and the seed's resize ----------------------------------------------------------

@pytest.mark.parametrize("size_in, size_out", [((1000, 750), (256, 192)), ((300, 900), (85, 256)),
                                               ((100, 60), (100, 60))])
def test_thumbnail_jpeg(size_in, size_out):
    im = Image.new("RGB", size_in, BG)
    data = images.thumbnail_jpeg(im)
    assert im.size == size_in  # the caller's image is untouched
    with Image.open(io.BytesIO(data)) as thumb:
        assert thumb.format == "JPEG" and thumb.size == size_out


def test_resize_exact_squashes():
    out = images.resize_exact(Image.new("RGBA", (300, 100), (0, 0, 0, 0)), 227, 227)
    assert out.size == (227, 227) and out.mode == "RGB"
    assert out.getpixel((100, 100)) == (255, 255, 255)
    with pytest.raises(ValueError):
        images.resize_exact(out, 0, 10)


# -- model_input: OpenCV's JPEG decode gives exactly the Pillow path's model input ----------------
@st.composite
def jpegs(draw):
    """JPEGs of real photo content: any size from tiny to 12 MP, quality, chroma subsampling,
    progressive or not, grey or colour, any EXIF orientation."""
    from tests.conftest import imagenet_photos
    photo = Image.open(draw(st.sampled_from(imagenet_photos()))).convert("RGB")
    w = draw(st.integers(16, 4000))
    h = draw(st.integers(16, 3000))
    im = photo.resize((w, h), Image.Resampling.BILINEAR).convert(draw(st.sampled_from(["RGB", "RGB", "L"])))
    exif = Image.Exif()
    orientation = draw(st.integers(0, 8))
    if orientation:
        exif[0x0112] = orientation
    return encode(im, "JPEG", quality=draw(st.integers(30, 98)), subsampling=draw(st.sampled_from([0, 1, 2])),
                  progressive=draw(st.booleans()), exif=exif.tobytes())


@given(data=jpegs(), size=st.sampled_from([32, 224, 227]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_model_input_is_the_pillow_paths_bit_for_bit(data, size):
    image = decode(data, draft_for=size)
    array, info = model_input(data, size)
    np.testing.assert_array_equal(array, prepare(image, size))
    assert info == {"original_size": image.info["original_size"], "source_format": "JPEG"}


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGB"), ("JPEG", "CMYK"), ("WEBP", "RGB")])
def test_model_input_of_other_images_takes_the_pillow_path(fmt, mode):
    noise = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise).convert(mode), fmt)
    array, info = model_input(data, 64)
    np.testing.assert_array_equal(array, prepare(decode(data, draft_for=64), 64))
    assert info == {"original_size": (120, 90), "source_format": fmt}


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(scans=st.integers(0, 3 * images.MAX_JPEG_SCANS), side=st.sampled_from([64, 500, 2000]))
def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding(scans, side):
    """Scan bombs (tests/hostile.py): any progressive JPEG with more than MAX_JPEG_SCANS scans is
    too_large, however small; one within the limit decodes."""
    from tests.hostile import jpeg_scan_bomb
    data = jpeg_scan_bomb(side, scans)
    own = jpeg_scan_bomb(side, 0).count(b"\xff\xda")  # libjpeg's progression for grey: 6 scans
    if own + scans > images.MAX_JPEG_SCANS:
        with pytest.raises(images.ImageTooLarge, match="scans"):
            model_input(data, 224)
    else:
        assert model_input(data, 224)[0].shape == (224, 224, 3)
