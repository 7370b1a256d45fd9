"""Redis memory per image, key by key: the layout before the segment files (vectors, layouts and
keypoints in Redis hashes), the same deployment after `vsearch migrate`, and one written by today's
ingest path; with the segment files' bytes per image and the migration's rate.

    python benchmarks/redis_footprint.py [--images 5000] [--source-chars 100] [--redis-url redis://...]

Realistic records (a `photos/class_xxx/image_xxxxx.jpg` source, a label, size and format fields),
1280-d unit vectors (EfficientNet-Lite0's width), layouts [4, 256] float16 and 9,000 bytes of
keypoints (250 ORB keypoints, services/verify.py) per image; `MEMORY USAGE <key> SAMPLES 0` (exact)
over every key of a fresh prefix on the test Redis (db 15), divided by the number of images. Also
a query's re-rank read (vectors and layouts of 30 random images) from the hashes and from the
segment files (warm page cache), and an index build's scan of every vector (iter_vectors), side by
side.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.store import Store  # noqa: E402
from services.store.connection import connect  # noqa: E402
from services.store.migration import migrate  # noqa: E402
from tests.legacy_store import write_legacy  # noqa: E402
from tests.workers import drop_prefix  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/15"
MODEL, DIM, KEYPOINT_BYTES = "effnet_lite0:1", 1280, 9000


def dataset(n: int, rng, source_chars: int = 0) -> dict:
    """`source_chars`: pad each source path to that length (a deep folder, a URL)."""
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    sources = [f"photos/class_{i % 1000:03d}/image_{i:05d}.jpg" for i in range(n)]
    sources = ["d" * (source_chars - len(src) - 1) + "/" + src if source_chars > len(src) + 1 else src
               for src in sources]
    return {"ids": [f"{i:064x}" for i in range(n)],
            "records": [{"source": sources[i], "label": f"class_{i % 1000:03d}",
                         "width": 640, "height": 480, "format": "JPEG", "size_bytes": 100_000 + i,
                         "created_at": time.time()} for i in range(n)],
            "vectors": vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
            "layouts": rng.standard_normal((n, 4, 256)).astype(np.float16),
            "keypoints": [rng.bytes(KEYPOINT_BYTES) for _ in range(n)]}


def footprint(store: Store, n: int) -> dict:
    """Bytes per image, by kind of key (the part of the key after the prefix, up to ':')."""
    sizes: dict[str, int] = {}
    for key in store.redis.scan_iter(match=store.prefix + "*", count=1000):
        kind = key.decode()[len(store.prefix):].split(":")[0]
        sizes[kind] = sizes.get(kind, 0) + store.redis.memory_usage(key, samples=0)
    out = {kind: round(size / n) for kind, size in sorted(sizes.items())}
    return out | {"total": round(sum(sizes.values()) / n)}


def read_times(read, ids: list[str], reps: int = 300) -> dict:
    """A query's re-rank read: the vectors and layouts of 30 random candidates; wall p50 and CPU
    per read (ms)."""
    rng = np.random.default_rng(1)
    picks = [[ids[j] for j in rng.choice(len(ids), 30, replace=False)] for _ in range(reps)]
    walls, cpu0 = [], time.process_time()
    for chosen in picks:
        t0 = time.perf_counter()
        read(chosen)
        walls.append(time.perf_counter() - t0)
    return {"p50 ms": round(float(np.median(walls)) * 1000, 3),
            "cpu ms": round((time.process_time() - cpu0) / reps * 1000, 3)}


def legacy_read(store: Store):
    """What get_vectors_and_layouts did with the hashes: two HMGETs in one round trip, decoded."""
    def read(ids):
        pipe = store.redis.pipeline(transaction=False)
        pipe.hmget(store.key("vectors", MODEL), ids).hmget(store.key("layouts", MODEL), ids)
        vectors, layouts = pipe.execute()
        return (np.frombuffer(b"".join(vectors), "<f4").reshape(len(ids), -1),
                np.stack([np.frombuffer(b, np.float16).reshape(4, 256).astype(np.float32) for b in layouts]))
    return read


def scan_rate(scan, n: int) -> dict:
    """An index build's read of every vector: images per second and CPU µs per image."""
    t0, cpu0 = time.perf_counter(), time.process_time()
    assert scan() == n
    return {"images/s": round(n / (time.perf_counter() - t0)),
            "cpu us": round((time.process_time() - cpu0) / n * 1e6, 1)}


def legacy_scan(store: Store):
    """What iter_vectors did with the hash: HSCAN in chunks of 1,000, decoded."""
    def scan():
        count, cursor = 0, None
        while cursor != 0:
            cursor, chunk = store.redis.hscan(store.key("vectors", MODEL), cursor or 0, count=1000)
            count += len(np.frombuffer(b"".join(chunk.values()), "<f4").reshape(len(chunk), -1))
        return count
    return scan


def segment_bytes(store: Store, n: int) -> int:
    return round(sum(p.stat().st_size for p in store.vector_dir.iterdir()) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--source-chars", type=int, default=0, help="pad source paths to this length")
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args()
    n = args.images
    data = dataset(n, np.random.default_rng(0), args.source_chars)
    client = connect(args.redis_url)
    out = {"images": n, "source chars": len(data["records"][0]["source"]),
           "hash-max-listpack-value": client.config_get("hash-max-listpack-value")["hash-max-listpack-value"]}
    for name in ("migrated", "ingested"):
        vector_dir = tempfile.mkdtemp(prefix="bench-vectors-")
        store = Store(client, f"bench-{uuid.uuid4().hex[:8]}:", vector_dir)
        try:
            if name == "migrated":
                write_legacy(store, MODEL, data["ids"], data["records"], data["vectors"], data["layouts"],
                             data["keypoints"])
                out["before: redis bytes per image"] = footprint(store, n)
                out["before: re-rank read of 30"] = read_times(legacy_read(store), data["ids"])
                out["before: build's scan"] = scan_rate(legacy_scan(store), n)
                t0 = time.perf_counter()
                summary = migrate(store)
                out["migrate: images/s"] = round(n / (time.perf_counter() - t0))
                assert summary.moved == {MODEL: n}, summary
            else:
                for s in range(0, n, 32):  # what an ingest chunk writes
                    chunk = slice(s, s + 32)
                    store.create_images(list(zip(data["ids"][chunk], data["records"][chunk])))
                    store.put_vectors(MODEL, data["ids"][chunk], data["vectors"][chunk], data["layouts"][chunk],
                                      data["keypoints"][chunk])
            out[f"{name}: redis bytes per image"] = footprint(store, n)
            out[f"{name}: segment file bytes per image"] = segment_bytes(store, n)
            out[f"{name}: re-rank read of 30"] = read_times(
                lambda ids: store.get_vectors_and_layouts(MODEL, ids, (4, 256)), data["ids"])
            out[f"{name}: build's scan"] = scan_rate(lambda: sum(len(ids) for ids, _ in store.iter_vectors(MODEL)), n)
        finally:
            drop_prefix(store.redis, store.prefix)
            shutil.rmtree(vector_dir)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
