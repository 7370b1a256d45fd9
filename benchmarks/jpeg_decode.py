"""JPEG decoding for the model: Pillow's draft decode against libjpeg-turbo's scaled decode through
OpenCV (what `images.model_input` uses), on a 12 MP camera photo and a Caltech-sized one (one
thread, CPU time).

    python benchmarks/jpeg_decode.py [--repeats 20]

Both libraries wrap libjpeg-turbo. At 1/8 scale the inverse DCT is nearly free, so what is left is
the entropy (Huffman) decoding of the whole file, which no resampling library (pillow-simd
included) touches.
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services import images  # noqa: E402
from tests.conftest import imagenet_photos  # noqa: E402


def cpu_ms(fn, repeats: int) -> float:
    fn()
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    photo = Image.open(imagenet_photos()[0]).convert("RGB")
    for name, size, quality in (("camera 4000x3000", (4000, 3000), 92), ("small 300x250", (300, 250), 90)):
        buf = io.BytesIO()
        photo.resize(size, Image.BICUBIC).save(buf, "JPEG", quality=quality)
        data = buf.getvalue()
        raw = np.frombuffer(data, np.uint8)
        repeats = args.repeats * (1 if size[0] > 1000 else 20)
        cases = {
            "Pillow draft decode (the service's decode)": lambda: images.decode(data, draft_for=224),
            "Pillow draft decode + model input (the Pillow path)": lambda: images.prepare(
                images.decode(data, draft_for=224), 224),
            "images.model_input (OpenCV decode + model input)": lambda: images.model_input(data, 224),
            "OpenCV IMREAD_REDUCED_COLOR_8": lambda: cv2.imdecode(raw, cv2.IMREAD_REDUCED_COLOR_8),
            "OpenCV IMREAD_REDUCED_COLOR_4": lambda: cv2.imdecode(raw, cv2.IMREAD_REDUCED_COLOR_4),
            "OpenCV full decode": lambda: cv2.imdecode(raw, cv2.IMREAD_COLOR),
        }
        print(f"\n{name}, {len(data) / 1e6:.2f} MB")
        for case, fn in cases.items():
            print(f"  {case:52s} {cpu_ms(fn, repeats):7.2f} ms")


if __name__ == "__main__":
    main()
