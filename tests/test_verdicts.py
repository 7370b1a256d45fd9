"""Verdicts through the real API (gateway, worker, model server, Redis), and their invariants.

Ten of foolbox's 20 ImageNet photos are indexed; the other ten are unrelated photos (never indexed:
queries with no copy to find, and the backgrounds of collages)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st
from PIL import Image

from evaluation import edits
from services import images, verdicts, verify
from services.store import Store, image_id
from tests.workers import index_class_folders, wait_for_job

TOKEN = "verdict-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEPLOYMENT = {"api_token": TOKEN}
SEED = 15


def open_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def indexed(deployment, photos):
    job = index_class_folders(deployment, photos[:10], deployment.tmp / "indexed", AUTH)
    assert (job["done"], job["failed"]) == (10, 0)
    return photos[:10]


@pytest.fixture(scope="module")
def unrelated(photos):
    return photos[10:]


def search(client, data: bytes, **form):
    return client.post("/api/v1/search", data={"file": (io.BytesIO(data), "q.jpg"), **form},
                       content_type="multipart/form-data", headers=AUTH)


# Where the verdict `copy` is not reliable yet (docs/quality.md: right copy answers 0.40 for collages,
# 0.70 for heavy blur on the test split): these must still rank the original first.
WEAK_VERDICT = ("collage", "blur")


@pytest.mark.parametrize("family", list(edits.FAMILIES))
def test_a_copy_under_each_family_is_found_with_verdict_copy(client, indexed, unrelated, family):
    rng = np.random.default_rng(SEED)
    found = []
    for photo in indexed[:3]:
        copy, params = edits.FAMILIES[family](open_rgb(photo), rng, [open_rgb(p) for p in unrelated[:3]])
        body = search(client, jpeg(copy.convert("RGB")), k="5").json
        assert "results" in body, body
        best = body["results"][0]
        assert body["verdict"] == best["verdict"] and all("verdict" in r for r in body["results"])
        verdict_ok = best["verdict"] in ("copy", "exact") or family in WEAK_VERDICT
        found.append(best["id"] == image_id(photo.read_bytes()) and verdict_ok)
    assert sum(found) >= 2, f"{family}: found (as a copy) {sum(found)} of 3 times"


def test_the_original_itself_is_exact_and_unrelated_photos_get_no_copy(client, indexed, unrelated):
    body = search(client, indexed[4].read_bytes()).json
    assert body["results"][0]["id"] == image_id(indexed[4].read_bytes()) and body["verdict"] == "exact"
    for photo in unrelated:
        body = search(client, photo.read_bytes(), k="10").json
        assert body["verdict"] in ("similar", "none")
        assert not any(r["verdict"] in ("copy", "exact") for r in body["results"])


def test_min_verdict_filters(client, indexed, unrelated):
    copy = jpeg(edits.crop(open_rgb(indexed[2]), np.random.default_rng(1), [])[0])
    body = search(client, copy, k="10", min_verdict="copy").json
    assert [r["id"] for r in body["results"]] == [image_id(indexed[2].read_bytes())]
    assert body["verdict"] in ("copy", "exact")
    nothing = search(client, unrelated[0].read_bytes(), min_verdict="copy").json
    assert nothing["results"] == [] and nothing["verdict"] == "none"
    by_id = client.post("/api/v1/search", json={"image_id": image_id(indexed[2].read_bytes()),
                                                "min_verdict": "exact"}, headers=AUTH).json
    assert [r["verdict"] for r in by_id["results"]] == ["exact"]
    bad = search(client, copy, min_verdict="twin")
    assert bad.status_code == 400 and bad.json["error"]["code"] == "bad_min_verdict"


def test_judge_stored_pairs(deployment, indexed):
    store = Store.from_settings(deployment.settings)
    model_key = store.model_keys()[0]
    a, b = (image_id(p.read_bytes()) for p in indexed[:2])
    assert verdicts.judge_stored(store, model_key, a, a, verdicts.for_model_key(model_key))[0] == "exact"
    v, e = verdicts.judge_stored(store, model_key, a, b, verdicts.for_model_key(model_key))
    assert v in ("similar", "none") and e.inliers < verdicts.for_model_key(model_key).copy_inliers
    with pytest.raises(KeyError):
        verdicts.judge_stored(store, model_key, a, "0" * 64, verdicts.Thresholds())


def test_published_calibration_is_read():
    t = verdicts.Thresholds.for_model("effnet_lite0", 1)
    assert verdicts.calibration_path("effnet_lite0", 1).is_file() and t != verdicts.Thresholds()
    assert verdicts.Thresholds.for_model("no_such_model", 3) == verdicts.Thresholds()


evidence = st.builds(verdicts.Evidence, st.floats(-1, 1), st.floats(-1, 1), st.integers(0, 300), st.booleans())


@given(evidence, st.integers(0, 300), st.floats(0, 1))
def test_more_evidence_never_weakens_a_verdict(e, more_inliers, more_cosine):
    t = verdicts.Thresholds()
    stronger = verdicts.Evidence(min(1.0, e.cosine + more_cosine), e.layout, e.inliers + more_inliers, e.identity)
    assert verdicts.ORDER.index(verdicts.verdict(stronger, t)) >= verdicts.ORDER.index(verdicts.verdict(e, t))


@given(st.sampled_from(verdicts.ORDER), st.sampled_from(verdicts.ORDER))
def test_at_least_is_the_order(v, minimum):
    assert verdicts.at_least(v, minimum) == (verdicts.ORDER.index(v) >= verdicts.ORDER.index(minimum))
    assert verdicts.at_least(v, None)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(24, 500), st.integers(24, 500))
def test_keypoints_survive_packing_and_match_themselves(seed, w, h):
    rng = np.random.default_rng(seed)
    # smooth random blobs: a textured image with corners at every scale
    small = rng.integers(0, 256, (max(2, h // 12), max(2, w // 12), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    f = verify.features(image)
    back = verify.unpack(verify.pack(f))
    assert np.array_equal(back.desc, f.desc) and np.all(np.abs(back.xy - f.xy) <= 0.5)
    assert len(verify.pack(f)) == 36 * len(f) <= 36 * verify.MAX_KEYPOINTS
    m = verify.match(f, back)
    if len(f) >= 20:  # (identity is not asked: a few clustered keypoints fit many affine maps equally well)
        assert m.inliers >= 0.8 * len(f)


def test_ingest_records_copies_as_near_duplicates(deployment, client, indexed, unrelated):
    """Runs last: it adds images to the module's index."""
    store = Store.from_settings(deployment.settings)
    copy = jpeg(edits.rotate(edits.crop(open_rgb(indexed[9]), np.random.default_rng(3), [])[0],
                             np.random.default_rng(4), [])[0])
    other = unrelated[9].read_bytes()
    response = client.post("/api/v1/images", data={"file": [(io.BytesIO(copy), "copy.jpg"), (io.BytesIO(other), "other.jpg")]},
                           headers=AUTH, content_type="multipart/form-data")
    assert response.status_code == 202, response.json
    job = wait_for_job(store, response.json["job_id"], workers=[deployment.worker])
    assert (job["done"], job["near_duplicates"]) == (2, 1)
    assert store.get_image(image_id(copy))["near_duplicate_of"] == image_id(indexed[9].read_bytes())
    assert store.get_image(image_id(other))["near_duplicate_of"] is None


def test_both_precisions_of_a_model_share_its_published_thresholds():
    assert verdicts.for_model_key("effnet_lite0_bf16:1") == verdicts.for_model_key("effnet_lite0:1")
    assert verdicts.for_model_key("effnet_lite0:1") != verdicts.Thresholds()


def test_verification_is_spent_only_where_it_can_change_the_answer(photos, monkeypatch):
    """The best candidate a copy by its layout: only it is matched; an indexed image as the query
    is its own exact match without any matching; candidates below verify_cosine are not matched."""
    from services import copies, copy_detection
    originals = [open_rgb(p) for p in photos[:6]]
    arrays = np.stack([np.asarray(im.resize((224, 224))) for im in originals])
    layouts = copy_detection.index_layouts(arrays)
    feats = [verify.features(im) for im in originals]
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((6, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [str(i) for i in range(6)]
    calls = []
    real_match = verify.match
    monkeypatch.setattr(verify, "match", lambda q, c: calls.append(1) or real_match(q, c))
    t = verdicts.Thresholds(verify_cosine=0.0)
    load = lambda wanted: [feats[int(i)] for i in wanted]  # noqa: E731
    near = emb + 0.3 * emb[[1, 2, 3, 4, 5, 0]]  # every candidate fairly close, the source closest
    near /= np.linalg.norm(near, axis=1, keepdims=True)

    # a re-encoded copy of image 0: layout decides it, one match tells exact from copy
    q = copies.Query(np.repeat(near[:1], 2, axis=0), np.stack([layouts[0, 0]] * 2), originals[0])
    hits = copies.rank(q, ids, emb, layouts, load, t, 6)
    assert hits[0].image_id == "0" and hits[0].verdict in ("exact", "copy") and len(calls) == 1

    # an indexed image as its own query: exact, with no match at all for itself
    calls.clear()
    q = copies.Query(np.repeat(emb[:1], 2, axis=0), np.stack([layouts[0, 0]] * 2), None,
                     lambda: verify.pack(feats[0]), image_id="0")
    hits = copies.rank(q, ids, emb, layouts, load, t, 6)
    assert hits[0].image_id == "0" and hits[0].verdict == "exact"
    assert len(calls) <= copies.VERIFY_TOP - 1

    # nothing close enough to be verified: no match, no copy
    calls.clear()
    far = verdicts.Thresholds(verify_cosine=0.99)
    other = rng.standard_normal((1, 32)).astype(np.float32)
    q = copies.Query(np.repeat(other, 2, axis=0), np.zeros((2, 256), np.float32), originals[0])
    hits = copies.rank(q, ids, emb, layouts, load, far, 6)
    assert not calls and all(h.verdict in ("none", "similar") for h in hits)


@settings(max_examples=30, deadline=None, derandomize=True)
@example(seed=0, long=29_999, short=9, tall=True)  # an OpenCV assertion in ORB's pyramid: ingest failed it
@given(st.integers(0, 2 ** 32 - 1), st.integers(images.MIN_SIDE, images.MAX_SIDE), st.integers(images.MIN_SIDE, 80),
       st.booleans())
def test_any_frame_within_the_image_limits_has_features_or_none(seed, long, short, tall):
    """Thin images (8 to 80 pixels by up to 30,000, both ways): features, possibly none, never an error."""
    shape = (long, short) if tall else (short, long)
    noise = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    found = verify.features(Image.fromarray(noise))
    assert found.xy.shape == (len(found), 2) and found.desc.shape == (len(found), 32)
