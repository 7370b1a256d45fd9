"""Search latency through the real gateway on an index of 30,000 images.

    python benchmarks/search_latency.py [--n 30000] [--seconds 10] [--rounds 3]

A deployment of its own (Redis db 14 under a fresh prefix, `vsearch model-server`, the gateway under
gunicorn with 2 processes x 8 threads), an index of `n` vectors: 10 of the 20 real foolbox photos
indexed through the model, plus synthetic vectors for the rest, each at a cosine of 0.3-0.75 from one of
the 20 photos (`--far`: around random centres instead, the first rounds' index); every synthetic item also
gets a real photo's layouts and keypoints, so that re-ranking and geometric verification do their
real work on whatever the shortlist holds. Queries: by `image_id` (stored vector, no model call) and
by upload of the 20 real photos (decode, resize, embed, search): half of them are indexed (a copy
to find), half are not (nothing verifies: the most work for the verifier). 1 and 8
concurrent clients, each with its own HTTP session; reports p50/p99 latency and throughput, and the p50
of the handler's own `took_ms` (the rest is HTTP, gunicorn and the client). The four cases run in
turn, `--rounds` times; each figure is the median over the rounds.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.config import Settings  # noqa: E402
from services.index import build_index  # noqa: E402
from services.images import load_for_model  # noqa: E402
from services.store import Store, image_id  # noqa: E402
from services.tfs_client import ModelClient  # noqa: E402
from modelserver.process import start_model_server, stop_process  # noqa: E402
from tests.conftest import free_port, imagenet_photos  # noqa: E402
from tests.workers import drop_keys, isolated_settings, start_gateway  # noqa: E402


def populate(settings: Settings, model_server: str, n: int, near: bool = True) -> list[str]:
    """Real photos embedded for real, synthetic neighbours for the rest; then one index build.
    `near`: each synthetic vector lies at a cosine of 0.3-0.75 from one of the 20 photos (indexed
    or not), as a real collection's similar images do, so every query's shortlist is close enough
    to be verified (services/copies.py skips candidates below the published `verify_cosine`);
    otherwise around 1,000 random centres, far from every photo (the first rounds' index)."""
    store = Store.from_settings(settings)
    client = ModelClient(model_server, "effnet_lite0")
    info = client.info()
    store.redis.set(store.key("active_model", "effnet_lite0"), info.key)
    photos = imagenet_photos()[:10]
    arrays = np.stack([load_for_model(p.read_bytes(), 224) for p in photos])
    vectors = client.embed(arrays)
    real_ids = [image_id(p.read_bytes()) for p in photos]
    store.create_images([(i, {"source": p.name, "label": p.stem}) for i, p in zip(real_ids, photos)])
    from services import copy_detection
    layouts = copy_detection.index_layouts(arrays)
    features = _keypoints(photos)
    # layouts and keypoints of the real photos, also lent to the synthetic images
    store.put_vectors(info.key, real_ids, vectors, layouts, features)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, info.embedding_dim)).astype(np.float32)
    everyone = client.embed(np.stack([load_for_model(p.read_bytes(), 224) for p in imagenet_photos()]))
    everyone /= np.linalg.norm(everyone, axis=1, keepdims=True)
    for start in range(len(photos), n, 2000):
        count = min(2000, n - start)
        if near:
            noise = rng.standard_normal((count, info.embedding_dim)).astype(np.float32)
            noise /= np.linalg.norm(noise, axis=1, keepdims=True)
            cosine = rng.uniform(0.3, 0.75, (count, 1)).astype(np.float32)
            synth = cosine * everyone[rng.integers(0, len(everyone), count)] + np.sqrt(1 - cosine ** 2) * noise
        else:
            synth = centres[rng.integers(0, 1000, count)] + 0.6 * rng.standard_normal((count, info.embedding_dim))
        ids = [f"{start + i:064x}" for i in range(count)]
        store.create_images([(i, {"source": "synthetic", "label": "synthetic"}) for i in ids])
        rows = np.arange(start, start + count) % len(photos)
        store.put_vectors(info.key, ids, synth.astype(np.float32), layouts[rows], [features[r] for r in rows])
    build_index(store, info.key, settings.index_dir)
    client.close()
    return real_ids


def _keypoints(photos) -> list[bytes]:
    try:
        from services import images, verify
    except ImportError:  # code without geometric verification
        return [b""] * len(photos)
    return [verify.pack(verify.features(images.to_rgb(images.decode(p.read_bytes(), draft_for=224)))) for p in photos]


def run_clients(call, clients: int, seconds: float) -> tuple[list[float], list[float], int]:
    """Client-side latencies, the handler's own `took_ms` of each answer, and the error count."""
    latencies, took, errors = [], [], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def loop(i):
        session = requests.Session()
        n = i
        while time.monotonic() < stop:
            t = time.perf_counter()
            r = call(session, n)
            elapsed = time.perf_counter() - t
            with lock:
                latencies.append(elapsed)
                if r.status_code == 200:
                    took.append(r.json()["took_ms"])
                else:
                    errors[0] += 1
            n += clients
        session.close()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, took, errors[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-base", type=Path, default=ROOT / "var" / "models")
    parser.add_argument("--far", action="store_true", help="synthetic neighbours far from every photo (rounds 1-2)")
    args = parser.parse_args()
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="vsearch-search-"))
    port = free_port()
    server = start_model_server(args.model_base, port)
    settings = isolated_settings(tmp, f"127.0.0.1:{port}", redis_url="redis://127.0.0.1:6379/14")
    gateway = None
    try:
        real_ids = populate(settings, f"127.0.0.1:{port}", args.n, near=not args.far)
        gateway, base = start_gateway(settings)
        uploads = [p.read_bytes() for p in imagenet_photos()]
        rng = np.random.default_rng(1)
        id_queries = [real_ids[i % len(real_ids)] if i % 2 else f"{int(rng.integers(20, args.n)):064x}"
                      for i in range(1000)]

        def by_id(session, n):
            return session.post(base + "/search", json={"image_id": id_queries[n % len(id_queries)], "k": 10})

        def by_upload(session, n):
            return session.post(base + "/search", files={"file": ("q.jpg", uploads[n % len(uploads)])},
                                data={"k": "10"})

        for call in (by_id, by_upload):  # warm both gunicorn processes
            run_clients(call, 4, 2)
        cases = [(name, call, clients) for name, call in (("by image_id", by_id), ("by upload", by_upload))
                 for clients in (1, 8)]
        runs = {case[::2]: [] for case in cases}
        for _ in range(args.rounds):  # rounds, so that drift on a shared machine hits every case alike
            for name, call, clients in cases:
                lat, took, errors = run_clients(call, clients, args.seconds)
                runs[name, clients].append((np.array(lat) * 1000, np.array(took), errors))
                print(name, clients, f"p50 {np.percentile(lat, 50) * 1000:.2f} ms", flush=True)
        rows = []
        for (name, clients), results in runs.items():
            rows.append({"query": name, "clients": clients, "errors": sum(r[2] for r in results),
                         "requests": sum(len(r[0]) for r in results),
                         "p50_ms": round(float(np.median([np.percentile(r[0], 50) for r in results])), 2),
                         "handler_p50_ms": round(float(np.median([np.percentile(r[1], 50) for r in results])), 2),
                         "p99_ms": round(float(np.median([np.percentile(r[0], 99) for r in results])), 2),
                         "per_s": round(float(np.median([len(r[0]) / args.seconds for r in results])), 1),
                         "round_p50s": [round(float(np.percentile(r[0], 50)), 2) for r in results]})
        print(f"\nindex of {args.n} images; {args.rounds} rounds of {args.seconds:.0f} s per case; medians over rounds")
        print(f"{'query':12} {'clients':>7} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7} {'errors':>6} {'handler p50':>11}")
        for r in rows:
            print(f"{r['query']:12} {r['clients']:7d} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['per_s']:7.1f} "
                  f"{r['errors']:6d} {r['handler_p50_ms']:11.2f}   rounds' p50: {r['round_p50s']}")
        print(json.dumps(rows))
    finally:
        if gateway:
            stop_process(gateway, timeout_s=20)
        stop_process(server)
        drop_keys(settings)


if __name__ == "__main__":
    main()
