"""The segment files that hold vectors, layouts and keypoints (services/store/segments.py), with the
store that locates them in the real Redis."""
from __future__ import annotations

import multiprocessing
import os
import threading
import zlib

import numpy as np
import pytest

from services.store import Store
from services.store.segments import MAGIC

MODEL = "effnet_lite0:1"


def f16(v):
    return np.asarray(v, np.float16).astype(np.float32)


def add(store, ids, dim=16, seed=0, **kw):
    vectors = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    store.create_images([(i, {}) for i in ids])
    assert all(store.put_vectors(MODEL, ids, vectors, **kw))
    return vectors


def test_vector_layouts_and_keypoints_are_one_record(store):
    ids = ["a", "b"]
    layouts = np.random.default_rng(1).standard_normal((2, 4, 256)).astype(np.float16)
    vectors = add(store, ids, layouts=layouts, features=[b"kp-a" * 100, b""])
    found, m, lay = store.get_vectors_and_layouts(MODEL, ["b", "a"], (4, 256))
    assert found == ["b", "a"] and np.array_equal(m, f16(vectors[[1, 0]]))
    assert np.array_equal(lay, layouts[[1, 0]].astype(np.float32))
    assert store.get_features(["a", "b", "missing"]) == [b"kp-a" * 100, b"", None]
    assert [p.name for p in store.vector_dir.iterdir()] == ["00000001.seg"]
    assert "vec:" + MODEL not in store.get_image("a")  # where it is stays out of the API's record
    store.put_features(["b"], [b"kp-b"])  # written later: a new copy of b's record
    store.create_image("c")
    with pytest.raises(ValueError, match="put_vectors"):  # before its vector: nowhere to put them
        store.put_layouts(MODEL, ["c"], layouts[:1])
    with pytest.raises(ValueError, match="put_vectors"):
        store.put_features(["c", "gone"], [b"x", b"y"])
    assert store.get_features(["a", "b"]) == [b"kp-a" * 100, b"kp-b"]
    assert np.array_equal(store.get_vectors(MODEL, ["b"])[1][0], f16(vectors[1]))


def test_vectors_beyond_float16_keep_float32(store):
    store.create_image("big")
    v = np.array([1e6, -3.5, 2.0], np.float32)
    store.put_vector(MODEL, "big", v)
    assert np.array_equal(store.get_vectors(MODEL, ["big"])[1][0], v)


def test_a_location_that_does_not_lead_to_its_record_reads_as_missing(store):
    vectors = add(store, ["a", "b", "c"])
    seg = store.vector_dir / "00000001.seg"
    # another image's location (a corrupted record, another deployment's file): not its data
    loc_a = store.redis.hget(store.key("image", "a"), "vec:" + MODEL)
    store.redis.hset(store.key("image", "b"), "vec:" + MODEL, loc_a)
    # the file lost its tail (a host crashed after Redis kept the location): c is torn
    os.truncate(seg, seg.stat().st_size - 10)
    found, m = store.get_vectors(MODEL, ["a", "b", "c"])
    assert found == ["a"] and np.array_equal(m[0], f16(vectors[0]))
    add(store, ["d"], seed=2)  # appended at the file's real end
    assert store.get_vectors(MODEL, ["d"])[0] == ["d"]


def test_vectors_are_read_without_the_layouts_and_keypoints(store):
    """An index build reads and checks only a record's front: a lost tail costs the keypoints."""
    vectors = add(store, ["a"], features=[b"k" * 9000])
    seg = store.vector_dir / "00000001.seg"
    os.truncate(seg, seg.stat().st_size - 100)
    found, m = store.get_vectors(MODEL, ["a"])
    assert found == ["a"] and np.array_equal(m[0], f16(vectors[0]))
    assert store.get_features(["a"]) == [None] and store.get_vectors_and_layouts(MODEL, ["a"], (4, 256))[0] == []


def test_a_torn_last_record_is_never_named(store, monkeypatch):
    add(store, ["a"])
    real_write = os.write
    # the disk fills in the middle of the next chunk's records
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:len(data) // 2])) // 0)
    store.create_images([("b", {}), ("c", {})])
    with pytest.raises(ZeroDivisionError):
        store.put_vectors(MODEL, ["b", "c"], np.ones((2, 16), np.float32))
    monkeypatch.undo()
    assert store.get_image("b")["status"] == "pending" and store.get_vectors(MODEL, ["b", "c"])[0] == []
    assert store.put_vectors(MODEL, ["b", "c"], np.ones((2, 16), np.float32)) == [True, True]  # the retry
    assert sorted(p.name for p in store.vector_dir.iterdir()) == ["00000001.seg", "00000002.seg"]
    assert store.get_vectors(MODEL, ["a", "b", "c"])[0] == ["a", "b", "c"]


def _write_from_threads(store: Store, part: int, threads: int = 3, per_thread: int = 40) -> None:
    def work(t):
        for n in range(0, per_thread, 8):
            ids = [f"p{part}-t{t}-{n + j}" for j in range(8)]
            seed = zlib.crc32(ids[0].encode())
            add(store, ids, seed=seed, features=[i.encode() * 50 for i in ids])
    runners = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for r in runners:
        r.start()
    for r in runners:
        r.join()


def test_concurrent_writers_each_append_to_their_own_segment(store):
    """Worker processes (forked from one that already wrote, as Celery's pool is) and their threads
    all append at once; every record reads back as written, and no file has two writers."""
    add(store, ["parent"])
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_from_threads, args=(store, p)) for p in range(3)]
    for p in procs:
        p.start()
    _write_from_threads(store, 3)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    ids = [f"p{p}-t{t}-{n}" for p in range(4) for t in range(3) for n in range(40)]
    found, m = store.get_vectors(MODEL, ids)
    assert found == ids
    for start in range(0, len(ids), 8):
        chunk = ids[start:start + 8]
        expected = np.random.default_rng(zlib.crc32(chunk[0].encode())).standard_normal((8, 16)).astype(np.float32)
        assert np.array_equal(m[start:start + 8], f16(expected))
    assert store.get_features(ids[:5]) == [i.encode() * 50 for i in ids[:5]]
    segments = sorted(store.vector_dir.iterdir())
    assert len(segments) == 4  # the parent's, then one per child process
    for seg in segments:  # each holds whole records only, back to back
        data = seg.read_bytes()
        assert data.count(MAGIC) >= 1 and data.startswith(MAGIC)


def test_a_store_without_a_vector_dir_holds_records_only(records_url):
    from services.store.connection import connect
    store = Store(connect(records_url), "x-novec:")
    with pytest.raises(RuntimeError, match="vector_dir"):
        store.get_vectors(MODEL, ["a"])
    store.redis.close()
