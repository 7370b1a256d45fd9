"""Filtered search: the Filter itself (parsing, masks), and both backends against exact search over
synthetic vectors (real Redis; Annoy files; a Milvus API server)."""
from __future__ import annotations

from uuid import uuid4

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import services.index.searcher as searcher_mod
from services.index import Filter, Searcher, build_index
from services.index.filters import Attributes
from tests.test_index import clustered

MODEL = "effnet_lite0:1"
NAMES = ["a", "b", "c", None]


def test_parse_reads_the_api_shape():
    assert Filter.parse() is None and Filter.parse(None, {}) is None
    f = Filter.parse("alpha", {"label": ["x", "y"], "created_after": "2026-01-01T00:00:00Z", "created_before": 5e9})
    assert f == Filter(frozenset({"x", "y"}), frozenset({"alpha"}), 1767225600.0, 5e9)
    # the top-level collection narrows the filter's collections
    assert Filter.parse("a", {"collection": ["a", "b"]}).collections == {"a"}
    assert Filter.parse("c", {"collection": ["a", "b"]}).collections == frozenset()
    assert Filter.parse("", {}) is None  # an empty form field is no filter
    for bad in ({"label": 3}, {"collection": "a b"}, {"created_after": True}, {"when": 1}, {"label": []}):
        with pytest.raises(ValueError):
            Filter.parse(None, bad)


records = st.lists(st.fixed_dictionaries({"label": st.sampled_from(NAMES), "collection": st.sampled_from(NAMES),
                                          "created_at": st.one_of(st.none(), st.floats(0, 100))}), max_size=40)
filters = st.builds(Filter, st.none() | st.frozensets(st.sampled_from(NAMES[:3] + ["z"])),
                    st.none() | st.frozensets(st.sampled_from(NAMES[:3])),
                    st.none() | st.floats(0, 100), st.none() | st.floats(0, 100))


@settings(max_examples=200, deadline=None)
@given(records, filters)
def test_mask_keeps_exactly_the_matching_records(recs, f):
    def keeps(r):
        t = r["created_at"]
        return ((f.labels is None or r["label"] in f.labels)
                and (f.collections is None or r["collection"] in f.collections)
                and (f.created_after is None or (t is not None and t >= f.created_after))
                and (f.created_before is None or (t is not None and t < f.created_before)))
    assert f.mask(Attributes.of(recs)).tolist() == [keeps(r) for r in recs]


def test_attributes_survive_a_file(tmp_path):
    attrs = Attributes.of([{"label": "x", "collection": None, "created_at": 3.0}, None, {"label": "é\"'"}])
    attrs.save(tmp_path / "a")
    back = Attributes.load(tmp_path / "a")
    f = Filter(labels=frozenset({"é\"'"}))
    assert f.mask(back).tolist() == f.mask(attrs).tolist() == [False, False, True]


# -- both backends against exact search --------------------------------------------------------------
SIZES = {"tiny": 15, "small": 300, "big": 1785}  # of 2,100 items: 0.7 %, 14 %, 85 %


@pytest.fixture(params=["annoy", "milvus"])
def backend(request, store, tmp_path, monkeypatch):
    if request.param == "annoy":
        monkeypatch.setattr(searcher_mod, "EXACT_SCAN_MAX", 200)  # "small" and "big" over-fetch
        yield Searcher(store, MODEL, tmp_path)
        return
    from services.index.milvus import MilvusIndex
    index = MilvusIndex(store, MODEL, request.getfixturevalue("milvus_uri"))
    yield index
    index.client.drop_collection(index.collection)


def test_filtered_search_matches_exact_search(backend, store, tmp_path):
    vecs = clustered(2100, d=32, clusters=30, noise=0.5, seed=1)
    collections = np.repeat(list(SIZES), list(SIZES.values()))
    np.random.default_rng(2).shuffle(collections)
    ids = [uuid4().hex for _ in vecs]
    for i, (iid, c) in enumerate(zip(ids, collections)):
        store.create_image(iid, collection=str(c), label=f"l{i % 7}", created_at=float(i))
    # Annoy: the first 1,800 in the file, the rest fresh (searched exactly)
    store.put_vectors(MODEL, ids[:1800], vecs[:1800])
    if backend.builds:
        build_index(store, MODEL, tmp_path, n_trees=8, n_jobs=1)
    store.put_vectors(MODEL, ids[1800:], vecs[1800:])
    backend.add(ids, vecs, store.get_images(ids))
    deleted = {ids[j] for j in range(0, 2100, 50)}
    for iid in deleted:
        store.delete_image(iid)
    backend.remove(list(deleted))

    records, pos = store.get_images(ids), {iid: j for j, iid in enumerate(ids)}
    queries = clustered(40, d=32, clusters=30, noise=0.5, seed=1)[:40] + 0.01
    for where in [Filter(collections=frozenset({name})) for name in SIZES] + [
            Filter(labels=frozenset({"l3"}), created_after=500.0, created_before=1500.0),
            Filter(collections=frozenset({"tiny", "small"}), labels=frozenset({"l1", "l2"}))]:
        keep = np.array([where.matches(r) and r["id"] not in deleted for r in records])
        recall = []
        for q in queries:
            hits = backend.search(q, k=10, where=where)
            exact_scores = vecs[keep] @ (q / np.linalg.norm(q))
            exact = {ids[j] for j in np.flatnonzero(keep)[np.argsort(-exact_scores)[:10]]}
            assert len(hits) == min(10, keep.sum())
            assert all(keep[pos[i]] for i, _ in hits), where
            recall.append(len(exact & {i for i, _ in hits}) / len(exact))
        assert np.mean(recall) >= 0.95, (where, np.mean(recall))


def test_milvus_down_is_index_unavailable(store):
    from services.index import IndexUnavailable
    from services.index.milvus import MilvusIndex
    from tests.conftest import free_port
    index = MilvusIndex(store, MODEL, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert index.status()["error"] and index.status()["count"] == 0
    with pytest.raises(IndexUnavailable):
        index.search(np.ones(8, np.float32), 3)
    with pytest.raises(IndexUnavailable):
        index.add(["a"], np.ones((1, 8), np.float32), [None])


def test_the_gateway_answers_503_while_milvus_is_down(tmp_path, model_server):
    from gateway import create_app
    from services.store import Store
    from tests.conftest import free_port
    from tests.workers import drop_keys, isolated_settings
    settings = isolated_settings(tmp_path, model_server, index_backend="milvus",
                                 milvus_uri=f"http://127.0.0.1:{free_port()}")
    client = create_app({"SETTINGS": settings, "TESTING": True}).test_client()
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["checks"]["index"].startswith("unavailable")
        store = Store.from_settings(settings)
        store.create_image("f" * 64)
        store.put_vectors(client.get("/api/v1/index").json["model"], ["f" * 64], [np.ones(1280, np.float32)])
        answer = client.post("/api/v1/search", json={"image_id": "f" * 64})
        assert answer.status_code == 503 and answer.json["error"]["code"] == "index_unavailable"
        assert answer.headers["Retry-After"] == "5"
    finally:
        drop_keys(settings)


def test_an_index_built_before_filters_reads_its_items_fields_from_the_store(store, tmp_path):
    vecs = clustered(40, d=8, seed=3)
    ids = [uuid4().hex for _ in vecs]
    for i, iid in enumerate(ids):
        store.create_image(iid, collection="even" if i % 2 == 0 else "odd")
    store.put_vectors(MODEL, ids, vecs)
    info = build_index(store, MODEL, tmp_path, n_trees=2, n_jobs=1)
    (tmp_path / info["path"]).with_suffix(".attrs").unlink()
    hits = Searcher(store, MODEL, tmp_path).search(vecs[1], 5, Filter(collections=frozenset({"even"})))
    assert len(hits) == 5 and all(ids.index(i) % 2 == 0 for i, _ in hits)
