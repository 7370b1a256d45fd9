"""`vsearch migrate`: a deployment whose vectors, layouts and keypoints are still in Redis (the
layout before segment files) moved into the segment files, against the real Redis, killed half-way
and run again."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.index import Searcher, build_index
from services.store import Store
from services.store.migration import legacy_keys, migrate, remaining
from tests import legacy_store
from tests.workers import drop_prefix, isolated_settings, settings_env

ROOT = Path(__file__).resolve().parent.parent
MODEL = "effnet_lite0:1"
N, DIM = 3000, 64


def write_legacy(store: Store, n: int = N) -> dict:
    rng = np.random.default_rng(7)
    data = {"ids": [f"{i:064x}" for i in range(n)],
            "vectors": rng.standard_normal((n, DIM)).astype(np.float32),
            "layouts": rng.standard_normal((n, 4, 256)).astype(np.float16),
            "keypoints": [bytes(rng.integers(0, 256, 40 * (i % 5), np.uint8)) for i in range(n)]}
    records = [{"source": f"photos/{i}.jpg", "created_at": 1.0} for i in range(n)]
    legacy_store.write_legacy(store, MODEL, data["ids"], records, data["vectors"], data["layouts"], data["keypoints"])
    store.redis.hset(store.key("layouts", MODEL), "no-vector", b"\0" * 2048)  # left by a chunk that failed
    return data


@pytest.fixture
def deployment(tmp_path):
    settings = isolated_settings(tmp_path, "127.0.0.1:1")
    store = Store.from_settings(settings)
    yield settings, store
    drop_prefix(store.redis, store.prefix)
    store.redis.close()


def run_migrate(settings, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "migrate", *args], cwd=ROOT, env=settings_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_migrate_killed_half_way_resumes_and_moves_everything_once(deployment):
    settings, store = deployment
    data = write_legacy(store)
    log_before = store.added_since(MODEL, 0)

    first = run_migrate(settings, "--batch", "100")
    progress = []
    while len(progress) < 3:
        line = first.stdout.readline()
        assert line, "migrate ended before it could be killed"
        if line.startswith(MODEL + ":") and "/" in line:
            progress.append(line)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    left = remaining(store)
    assert 0 < left < N, f"{left} left: the kill was not half-way"

    second = run_migrate(settings, "--batch", "100")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert f"{MODEL}: {N}/{left}" not in out and "0 left in Redis" in out, out
    moved = int(out.split(f"{MODEL}: ")[-1].split(" moved")[0])
    assert moved <= left and legacy_keys(store) == [] and remaining(store) == 0

    # every image reads back as it was written, the log is untouched, nothing is doubled
    found, vectors, layouts = store.get_vectors_and_layouts(MODEL, data["ids"], (4, 256))
    assert found == data["ids"]
    assert np.array_equal(vectors, data["vectors"].astype(np.float16).astype(np.float32))
    assert np.array_equal(layouts, data["layouts"].astype(np.float32))
    assert store.get_features(data["ids"]) == data["keypoints"]
    assert store.added_since(MODEL, 0) == log_before and store.count_vectors(MODEL) == N
    assert store.get_image(data["ids"][0])["status"] == "indexed"

    # the builder and the searcher read the moved vectors
    build_index(store, MODEL, settings.index_dir, n_trees=4, n_jobs=1)
    searcher = Searcher(store, MODEL, settings.index_dir)
    assert searcher.search_by_id(data["ids"][123], k=1)[0][0] == data["ids"][123]

    third = run_migrate(settings)
    out, _ = third.communicate(timeout=60)
    assert third.returncode == 0 and "nothing to migrate" in out, out


def test_a_batch_moved_but_not_yet_deleted_from_redis_is_not_moved_twice(deployment):
    """The kill between pointing the images at their records and deleting the Redis copies."""
    settings, store = deployment
    data = write_legacy(store, 50)
    summary = migrate(store, batch=20)
    assert summary.moved == {MODEL: 50} and summary.keypoints_deleted == 50
    location = store.redis.hget(store.key("image", data["ids"][3]), "vec:" + MODEL)
    store.redis.hset(store.key("vectors", MODEL), data["ids"][3], data["vectors"][3].tobytes())
    size = sum(p.stat().st_size for p in settings.vector_dir.iterdir())
    again = migrate(store, batch=20)
    assert (again.moved, again.already) == ({MODEL: 0}, {MODEL: 1})
    assert store.redis.hget(store.key("image", data["ids"][3]), "vec:" + MODEL) == location
    assert sum(p.stat().st_size for p in settings.vector_dir.iterdir()) == size and remaining(store) == 0


def test_vectors_of_deleted_images_are_dropped(deployment):
    settings, store = deployment
    data = write_legacy(store, 10)
    store.redis.hset(store.key("image", data["ids"][0]), "status", "deleted")  # a delete raced the old write
    store.redis.delete(store.key("image", data["ids"][1]))  # a record lost
    summary = migrate(store)
    assert (summary.moved, summary.dropped) == ({MODEL: 8}, {MODEL: 2})
    assert store.get_vectors(MODEL, data["ids"])[0] == data["ids"][2:]
