"""The scan's verdict on a pair (services/duplicates/judge.py): its rule over evidence, and the
judge on real photos, their edited copies and burst-like frames, stored as ingest stores them."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageFilter

from evaluation import planted
from services import copy_detection, images, verdicts, verify
from services.duplicates.judge import LAYOUT_COSINE, SCAN_INLIERS, VerdictJudge, pair_similarities, scan_verdict
from services.store import image_id
from services.tfs_client import ModelClient

T = verdicts.Thresholds(copy_inliers=25, copy_layout=0.95, copy_cosine=0.5, exact_cosine=0.85, similar_cosine=0.45)
STRONG = ("exact", "copy")
MODEL_KEY = "effnet_lite0:1"

evidence = st.builds(verdicts.Evidence, st.floats(-1, 1), st.floats(-1, 1), st.integers(0, 200), st.booleans())
containments = st.sampled_from([None, -1, 0, 1])


@given(evidence, containments)
def test_a_scan_never_weakens_a_search_copy_except_for_two_framings(e, contains):
    search, scan = verdicts.verdict(e, T), scan_verdict(e, contains, T)
    if contains is None:
        assert scan not in STRONG
    else:
        assert verdicts.ORDER.index(scan) >= verdicts.ORDER.index(search)
        assert scan == search or (scan == "copy" and search in ("none", "similar"))


@pytest.mark.parametrize("e, contains, expected", [
    # a contained geometry with fewer inliers than search asks for
    (verdicts.Evidence(0.7, 0.5, SCAN_INLIERS, False), 1, "copy"),
    (verdicts.Evidence(0.7, 0.5, SCAN_INLIERS - 1, False), 0, "similar"),
    (verdicts.Evidence(T.copy_cosine - 0.01, 0.5, SCAN_INLIERS, False), -1, "similar"),
    # a blurred copy: the layout holds, the cosine falls below search's
    (verdicts.Evidence(LAYOUT_COSINE, T.copy_layout, 0, False), 0, "copy"),
    (verdicts.Evidence(LAYOUT_COSINE - 0.01, T.copy_layout, 0, False), 0, "none"),
    (verdicts.Evidence(0.6, T.copy_layout - 0.01, 0, False), 0, "similar"),
    # two framings of one scene: the geometry overrules the layout and the inliers
    (verdicts.Evidence(0.9, 0.99, 150, False), None, "similar"),
    (verdicts.Evidence(0.4, 0.99, SCAN_INLIERS, False), None, "none"),
])
def test_second_chances(e, contains, expected):
    assert scan_verdict(e, contains, T) == expected


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.integers(1, 40), st.integers(1, 4), st.integers(1, 4))
def test_batched_similarities_are_the_single_ones(seed, pairs, va, vb):
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    emb, layouts = unit(rng.standard_normal((12, 64))), unit(rng.standard_normal((12, 4, 256)))
    i, j = rng.integers(0, 12, pairs).tolist(), rng.integers(0, 12, pairs).tolist()
    cosines, sims = pair_similarities(emb, layouts, i, j, chunk=7)
    assert cosines == pytest.approx([float(emb[a] @ emb[b]) for a, b in zip(i, j)], abs=1e-5)
    assert sims == pytest.approx([copy_detection.layout_similarity(layouts[a], layouts[b]) for a, b in zip(i, j)], abs=1e-5)
    a, b = layouts[:pairs % 12 + 1, :va], layouts[:pairs % 12 + 1, :vb]
    assert copy_detection.layout_similarities(a, b) == pytest.approx(
        [copy_detection.layout_similarity(x, y) for x, y in zip(a, b)], abs=1e-5)


def _store(store, model_key: str, client: ModelClient, named: dict[str, Image.Image]) -> dict[str, str]:
    """Writes the pictures as ingest does (vector, layouts, keypoints, size); returns name -> id."""
    size = client.info().input_size[0]
    arrays = np.stack([images.prepare(im, size) for im in named.values()])
    ids = {name: image_id(name.encode()) for name in named}
    store.create_images([(ids[n], {"source": n, "width": im.width, "height": im.height, "size_bytes": 1, "format": "JPEG"})
                         for n, im in named.items()])
    store.put_vectors(model_key, list(ids.values()), client.embed(arrays))
    store.put_layouts(model_key, list(ids.values()), copy_detection.index_layouts(arrays))
    store.put_features(list(ids.values()), [verify.pack(verify.features(im)) for im in named.values()])
    return ids


@pytest.mark.slow
def test_judge_on_real_photos(store, model_server, photos):
    """Blurred copies (the strongest blur of the edit family): the scan finds every one search's
    verdict finds, and more; burst-like and stereo-like frames of one photo, which share most of
    their content, are never duplicates."""
    client = ModelClient(model_server, "effnet_lite0", timeout_s=30)
    rng = np.random.default_rng(17)
    named, copies, frames = {}, [], []
    for n, path in enumerate(photos[:8]):
        photo = images.to_rgb(images.decode(path.read_bytes()))
        named[f"{n}"] = photo
        named[f"{n}-blur"] = photo.filter(ImageFilter.GaussianBlur(0.02 * max(photo.size)))
        copies.append((f"{n}", f"{n}-blur"))
        a, b = (planted.burst_pair if n % 2 else planted.stereo_pair)(photo, rng)
        named[f"{n}-a"], named[f"{n}-b"] = a, b
        frames.append((f"{n}-a", f"{n}-b"))
    try:
        ids = _store(store, MODEL_KEY, client, named)
    finally:
        client.close()
    said = VerdictJudge(store, MODEL_KEY, T).judge([(ids[a], ids[b]) for a, b in copies + frames])
    scan = {pair for pair, v in zip(copies, said) if v.verdict in STRONG}
    search = {(a, b) for a, b in copies if verdicts.judge_stored(store, MODEL_KEY, ids[a], ids[b], T)[0] in STRONG}
    assert search < scan
    assert not {v.verdict for v in said[len(copies):]} & set(STRONG)
