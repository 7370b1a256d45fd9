"""Store against the real Redis (db 15, a unique prefix per test, only that prefix cleaned up)."""
from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from services.config import Settings
from services.store import Store, image_id
from tests.workers import TEST_REDIS_URL as REDIS_URL

MODEL = "effnet_lite0:1"



def unit(rng, n, d=8):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def f16(v):
    """What the store gives back: vectors are stored as float16 (services/store/vectors.py)."""
    return np.asarray(v, np.float16).astype(np.float32)


KEY_TEXT = st.text(max_size=12) | st.text(alphabet="ab:{}", max_size=12)  # braces often


@given(prefix=KEY_TEXT.filter(bool), parts=st.lists(st.lists(KEY_TEXT, min_size=1, max_size=3), min_size=2, max_size=6))
def test_on_a_cluster_every_key_of_a_deployment_lies_in_one_slot(prefix, parts):
    """The keys one Lua script or transaction touches must share a slot: on a cluster every key of
    a deployment does, whatever its prefix (one with braces that form no hash tag is refused)."""
    from redis.crc import key_slot

    from services.store.connection import key_prefix
    try:
        tagged = key_prefix(prefix, cluster=True)
    except ValueError:  # braces that make no hash tag: refused, never silently spread over slots
        assert "{" in prefix or "}" in prefix
        return
    store = Store.__new__(Store)
    store.prefix = tagged
    keys = [store.key(*p) for p in parts]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert prefix in tagged and key_prefix(prefix, cluster=False) == prefix


def test_image_id_is_sha256_hex():
    assert image_id(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_from_settings_and_decode_responses_refused():
    store = Store.from_settings(Settings(redis_url=REDIS_URL, redis_prefix="x:"))
    assert store.prefix == "x:" and store.redis.ping()
    store.redis.close()
    with pytest.raises(ValueError, match="decode_responses"):
        Store(redis.Redis.from_url(REDIS_URL, decode_responses=True), "x:")


def test_create_image_is_idempotent_and_typed(store):
    assert store.create_image("a", source="upload", label="cat", width=300, height=200,
                              format="JPEG", size_bytes=1234)
    before = store.get_image("a")
    assert not store.create_image("a", label="dog", width=1)
    assert store.get_image("a") == before
    assert before["label"] == "cat" and before["width"] == 300 and before["size_bytes"] == 1234
    assert before["status"] == "pending" and isinstance(before["created_at"], float)
    assert before["near_duplicate_of"] is None and before["model"] is None
    assert store.get_image("missing") is None
    assert store.get_images(["missing", "a"]) == [None, before]


def test_concurrent_creates_make_one_image(store):
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(store.create_image("same", label=str(i))))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


def test_update_image(store):
    store.create_image("a", error="x")
    assert store.update_image("a", status="failed", near_duplicate_of="b", error=None)
    img = store.get_image("a")
    assert (img["status"], img["near_duplicate_of"], img["error"]) == ("failed", "b", None)
    with pytest.raises(KeyError):
        store.update_image("nope", label="x")
    with pytest.raises(ValueError):
        store.update_image("a", status="deleted")
    store.delete_image("a")
    assert not store.update_image("a", status="failed")  # a racing worker does not undelete
    assert store.get_image("a")["status"] == "deleted"


def test_update_images_sets_each_its_own_fields(store):
    store.create_images([("a", {}), ("b", {}), ("c", {})])
    store.delete_image("c")
    assert store.update_images([("a", {"near_duplicate_of": "x"}), ("b", {"label": "dog"}),
                                ("c", {"label": "cat"})]) == [True, True, False]
    a, b, c = store.get_images(["a", "b", "c"])
    assert (a["near_duplicate_of"], a["label"], b["near_duplicate_of"], b["label"]) == ("x", None, None, "dog")
    assert c["label"] is None and c["status"] == "deleted"
    with pytest.raises(KeyError, match="nope"):
        store.update_images([("a", {"label": "x"}), ("nope", {"label": "x"})])


def test_vectors_and_layouts_come_together_in_the_order_asked(store):
    rng = np.random.default_rng(1)
    vectors = unit(rng, 3)
    store.create_images([(i, {}) for i in "abc"])
    store.put_vectors(MODEL, list("abc"), vectors)
    layouts = rng.standard_normal((2, 4, 256)).astype(np.float16)
    store.put_layouts(MODEL, ["c", "a"], layouts)  # "b" has none
    ids, m, lay = store.get_vectors_and_layouts(MODEL, ["c", "missing", "b", "a"], (4, 256))
    assert ids == ["c", "b", "a"]
    assert np.array_equal(m, f16(vectors[[2, 1, 0]]))
    assert np.array_equal(lay[0], layouts[0].astype(np.float32)) and np.array_equal(lay[2], layouts[1].astype(np.float32))
    assert not lay[1].any()  # no layout stored: zeros, so no layout bonus
    assert store.get_vectors_and_layouts(MODEL, [], (4, 256))[2].shape == (0, 4, 256)


def test_vector_write_is_atomic_and_not_duplicated(store):
    rng = np.random.default_rng(0)
    v = unit(rng, 1)[0]
    store.create_image("a")
    assert store.put_vector(MODEL, "a", v)
    seq = store.current_seq()
    assert not store.put_vector(MODEL, "a", v + 1)  # second write: nothing changes
    assert store.current_seq() == seq
    assert store.added_since(MODEL, 0) == [("a", seq)]
    ids, m = store.get_vectors(MODEL, ["a", "missing"])
    assert ids == ["a"] and np.array_equal(m[0], f16(v)) and m.dtype == np.float32
    img = store.get_image("a")
    assert img["status"] == "indexed" and img["model"] == MODEL
    assert store.get_vectors("other:1", ["a"])[0] == []  # models never mix
    with pytest.raises(KeyError):
        store.put_vector(MODEL, "unknown", v)
    for bad in ([np.nan, 1.0], [0.0, 0.0], [[1.0]]):
        with pytest.raises(ValueError):
            store.put_vector(MODEL, "a", bad)


def test_iter_vectors_reads_everything_once_in_chunks(store):
    rng = np.random.default_rng(1)
    vecs = unit(rng, 2500)
    ids = [f"i{n}" for n in range(len(vecs))]
    pipe = store.redis.pipeline(transaction=False)
    for i in ids:
        pipe.hset(store.key("image", i), "status", "pending")
    pipe.execute()
    assert all(store.put_vectors(MODEL, ids, vecs))
    got = {}
    for chunk_ids, matrix in store.iter_vectors(MODEL, batch=500):
        assert matrix.shape == (len(chunk_ids), 8)
        got.update(zip(chunk_ids, matrix))
    assert len(got) == 2500 and store.count_vectors(MODEL) == 2500
    assert np.array_equal(got["i42"], f16(vecs[42]))
    assert list(store.iter_vectors("empty:1")) == []


def test_delete(store):
    v = unit(np.random.default_rng(2), 1)[0]
    assert not store.delete_image("unknown")
    store.create_image("a")
    store.put_vector(MODEL, "a", v)
    store.put_vector("alexnet:1", "a", np.ones(4))
    seq = store.current_seq()
    assert store.delete_image("a")
    assert store.get_image("a")["status"] == "deleted"
    assert store.deleted_since(0) == {"a"} and store.deleted_since(seq + 1) == set()
    assert store.current_seq() == seq + 1  # searchers notice through the one counter
    for model in (MODEL, "alexnet:1"):
        assert store.get_vectors(model, ["a"])[0] == [] and store.added_since(model, 0) == []
    assert not store.put_vector(MODEL, "a", v)  # a late worker cannot bring it back
    assert store.delete_image("a")  # deleting twice is fine
    assert store.deleted_among(["a", "b"]) == [True, False]


def test_deleted_image_ingested_again_starts_over(store):
    store.create_image("a", label="old")
    store.delete_image("a")
    assert store.create_image("a", label="new")
    img = store.get_image("a")
    assert img["status"] == "pending" and img["label"] == "new"
    assert store.deleted_since(0) == set()
    assert store.put_vector(MODEL, "a", np.ones(8))


def test_a_delete_made_while_a_job_ran_is_not_undone_by_it(store):
    store.create_image("a")
    store.put_vector(MODEL, "a", np.ones(8))
    store.create_job("before", None, "items")  # a job created before the delete...
    store.delete_image("a")
    seq = store.get_job("before")["seq"]
    assert store.create_images([("a", {})], deleted_after=seq) == [None]  # ...cannot bring it back
    assert store.get_image("a")["status"] == "deleted"
    store.create_job("after", None, "items")  # a job created after it can
    assert store.create_images([("a", {})], deleted_after=store.get_job("after")["seq"]) == [True]


def test_job_progress_counts_retried_items_once(store):
    assert store.create_job("j", 3, "directory", source="/photos")
    assert not store.create_job("j", 5, "urls")
    job = store.get_job("j")
    assert job["state"] == "queued" and job["total"] == 3 and job["finished_at"] is None
    assert job["kind"] == "directory" and job["source"] == "/photos"
    assert store.job_progress("j", "a.jpg", done=1)
    assert store.get_job("j")["state"] == "running"
    assert not store.job_progress("j", "a.jpg", done=1)  # redelivered task
    assert store.job_progress("j", "b.jpg", done=1, duplicates=1)
    assert store.job_progress("j", "c.jpg", failed=1, error="cannot identify image file")
    assert not store.job_progress("j", "c.jpg", failed=1, error="again")
    job = store.get_job("j")
    assert (job["state"], job["done"], job["failed"], job["duplicates"]) == ("done", 2, 1, 1)
    assert job["errors"] == [{"item": "c.jpg", "error": "cannot identify image file"}]
    assert job["finished_at"] >= job["created_at"]
    assert 0 < store.redis.ttl(store.key("job", "j")) <= 7 * 86400
    assert store.get_job("missing") is None
    with pytest.raises(KeyError):
        store.job_progress("missing", "x", done=1)


def test_job_errors_are_capped(store):
    store.create_job("j", 10, "urls")
    for n in range(10):
        store.job_progress("j", f"u{n}", failed=1, error="404", max_errors=3)
    job = store.get_job("j")
    assert job["failed"] == 10 and len(job["errors"]) == 3 and job["state"] == "done"


def test_job_total_known_later_empty_and_failed(store):
    store.create_job("j", None, "archive")
    assert store.get_job("j")["total"] is None
    store.job_progress("j", "x", done=1)
    assert store.get_job("j")["state"] == "running"  # total unknown: never done early
    store.start_job("j", total=1)
    assert store.get_job("j")["state"] == "done"
    store.create_job("empty", 0, "directory")
    assert store.get_job("empty")["state"] == "done"
    store.create_job("bad", None, "archive")
    store.fail_job("bad", "not a zip or tar archive")
    job = store.get_job("bad")
    assert job["state"] == "failed" and job["errors"] == [{"item": None, "error": "not a zip or tar archive"}]


def test_start_job_counts_skipped_items_in_the_same_step(store):
    store.create_job("j", None, "archive")
    store.start_job("j", total=3, failures=[("a/../x.jpg", "outside the archive"), ("big.jpg", "too large")])
    job = store.get_job("j")
    assert (job["state"], job["total"], job["failed"]) == ("running", 3, 2)
    assert [e["item"] for e in job["errors"]] == ["a/../x.jpg", "big.jpg"]
    assert not store.job_progress("j", "big.jpg", failed=1)  # already counted
    with pytest.raises(KeyError):
        store.start_job("missing", total=1, failures=[("x", "y")])


def test_unfinished_chunks_and_stalled_jobs(store):
    store.create_job("j", None, "directory")
    store.save_job_spec("j", {"kind": "directory", "directory": "/photos"})
    chunks = [[{"key": "a"}, {"key": "b"}], [{"key": "c"}], [{"key": "d", "path": "/photos/d.jpg"}]]
    store.save_job_chunks("j", chunks)
    assert store.active_jobs() == ["j"] and store.get_job_spec("j")["directory"] == "/photos"
    assert store.claim_stalled_job("j", 0) == "queued"  # no progress since it was created
    assert store.claim_stalled_job("j", 60) is None  # claimed: quiet for another stall period
    store.start_job("j", total=4)
    store.job_progress("j", "a", done=1)
    store.job_progress("j", "c", done=1)
    assert store.unfinished_chunks("j") == [chunks[0], chunks[2]]  # b and d not counted yet
    job = store.get_job("j")
    assert job["progress_at"] >= job["created_at"] and store.claim_stalled_job("j", 60) is None
    time.sleep(0.05)
    assert store.claim_stalled_job("j", 0.01) == "running"
    store.add_resent("j", 2)
    store.job_progress_many("j", [{"item": "b", "done": 1}, {"item": "d", "failed": 1, "error": "x"}])
    job = store.get_job("j")
    assert (job["state"], job["resent"]) == ("done", 2)
    assert store.active_jobs() == [] and store.claim_stalled_job("j", 0) is None
    assert store.get_job_spec("j") is None and store.unfinished_chunks("j") == []  # nothing left to send

    store.create_job("bad", None, "archive")
    store.fail_job("bad", "not an archive")
    store.create_job("gone", None, "urls")
    store.redis.delete(store.key("job", "gone"))
    assert store.claim_stalled_job("gone", 0) is None and store.active_jobs() == []


def test_index_pointer_only_moves_forward(store):
    assert store.get_index_info(MODEL) is None
    info = {"version": 2, "path": "x.ann", "count": 3, "dim": 8, "size": 100, "built_at": time.time(),
            "max_seq": 7, "n_trees": 32}
    assert store.publish_index(MODEL, info)
    assert not store.publish_index(MODEL, info | {"version": 1})
    assert store.get_index_info(MODEL) == info
    assert store.poll(MODEL) == (2, 0)
    assert store.reserve_index_version(MODEL) < store.reserve_index_version(MODEL)


def test_build_requests_and_lock(store):
    assert store.request_index_build(MODEL)  # nobody builds: the caller should
    assert store.acquire_index_lock(MODEL, "t1", 5)
    assert not store.acquire_index_lock(MODEL, "t2", 5)
    assert not store.request_index_build(MODEL)  # the running builder will pick it up
    assert store.take_index_build_request(MODEL) and not store.take_index_build_request(MODEL)
    assert not store.refresh_index_lock(MODEL, "t2", 5) and store.refresh_index_lock(MODEL, "t1", 5)
    assert not store.release_index_lock(MODEL, "t2") and store.release_index_lock(MODEL, "t1")
    assert store.acquire_index_lock(MODEL, "t2", 5)


def test_recent_jobs_newest_first_and_expired_dropped(store):
    for n in range(3):
        store.create_job(f"j{n}", 1, "urls")
    store.redis.delete(store.key("job", "j1"))  # as if its TTL ran out
    assert [j["job_id"] for j in store.recent_jobs(10)] == ["j2", "j0"]
    assert "errors" not in store.recent_jobs(1)[0] and store.recent_jobs(1)[0]["state"] == "queued"
    assert store.redis.zcard(store.key("jobs")) == 2
