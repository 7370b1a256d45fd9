"""The evaluation harness: metrics against hand-computed values, the copy-robust search's parts,
and one small end-to-end `vsearch eval` on real photos through the session's model server."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from services import images
from services import copy_detection as robust
from evaluation import metrics, unlisted_edits
from evaluation.harness import rank_from_scores


# -- metrics on tiny rankings ---------------------------------------------------------------------
@pytest.mark.parametrize("k, expected", [(1, 0.0), (2, 0.5), (3, 1 / 3), (5, 0.4), (10, 0.2)])
def test_precision_at_k(k, expected):
    assert metrics.precision_at_k([3, 1, 2, 5, 4], {1, 4}, k) == pytest.approx(expected)


def test_average_precision_and_map():
    # relevant at ranks 2 and 5: (1/2 + 2/5) / 2
    assert metrics.average_precision([3, 1, 2, 5, 4], {1, 4}) == pytest.approx(0.45)
    # a relevant item never retrieved counts as precision 0
    assert metrics.average_precision([1, 2], {2, 9}) == pytest.approx(0.25)
    assert math.isnan(metrics.average_precision([1, 2], set()))
    # queries without relevant items are skipped
    assert metrics.mean_average_precision([[3, 1, 2, 5, 4], [7, 8], [1]], [{1, 4}, {7}, set()]) == pytest.approx(0.725)


def test_rank_of_and_summary():
    assert metrics.rank_of([5, 2, 9], 9) == 3
    assert metrics.rank_of([5, 2, 9], 4) is None
    summary = metrics.rank_summary([1, 3, None, 1])  # a miss counts one past the worst rank seen
    assert summary == {"rank1": 0.5, "mean_rank": pytest.approx((1 + 3 + 4 + 1) / 4), "n": 4}


def test_rank_from_scores_counts_ties_half():
    assert rank_from_scores(np.array([0.5, 0.9, 0.5, 0.1]), 0) == 2.5
    assert rank_from_scores(np.array([0.5, 0.9, 0.5, 0.1]), 1) == 1.0
    assert rank_from_scores(np.array([0.5, 0.9, 0.5, 0.1]), 0, exclude=1) == 1.5


def test_recall_at_k():
    assert metrics.recall_at_k([[1, 2, 3], [4, 5, 6]], [[1, 2, 4], [4, 5, 6]], k=3) == pytest.approx((2 / 3 + 1) / 2)


def test_scores():
    q = np.array([[3.0, 4.0]])
    d = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    assert metrics.euclidean_scores(q, d)[0] == pytest.approx([0.0, -5.0, -5.0])
    assert metrics.cosine_scores(q, d[[0, 2]])[0] == pytest.approx([1.0, 1.0])
    bits = np.array([[1, 0, 1, 1]], bool)
    assert metrics.hamming_scores(bits, np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool))[0].tolist() == [0, -4]


# -- the adopted search's parts -------------------------------------------------------------------
def test_rerank_scores_hand_computed():
    q_emb, q_lay = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    layouts = np.array([[[1.0, 0.0]], [[0.6, 0.8]], [[0.0, 1.0]], [[1.0, 0.0]]])
    # cosine + 0.3 * relu(layout - 0.5) / 0.5
    assert robust.rerank_scores(q_emb, q_lay, emb, layouts, 0.3, 0.5) == pytest.approx([1.3, 0.06, 0.6, 0.3])
    # The best over views counts, but a view after the first only where its layout reaches the
    # threshold: the second view matches the last candidate's embedding (cosine 1) but not its
    # layout (0), so that candidate keeps the first view's 0.3.
    two = robust.rerank_scores(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]),
                               emb, layouts, 0.3, 0.5)
    assert two == pytest.approx([1.3, 1.18, 1.1, 0.3])
    # Two primary views (a de-rotated query and the query as it came): the second counts without
    # its layout, so the last candidate gets its cosine 1 through it.
    primary = robust.rerank_scores(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]),
                                   emb, layouts, 0.3, 0.5, primary=2)
    assert primary == pytest.approx([1.3, 1.18, 1.1, 1.0])


def test_search_reranks_a_shortlist():
    emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    layouts = np.array([[[0.0, 1.0]], [[1.0, 0.0]], [[1.0, 0.0]]])
    scores = robust.search(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), emb, layouts, shortlist=2)
    # by cosine alone item 0 wins; its layout does not match, item 1's does: 0.8 + bonus
    assert scores[:2] == pytest.approx([1.0, 0.8 + robust.LAYOUT_BONUS])
    assert scores[2] == -np.inf  # outside the shortlist


@pytest.fixture(scope="module")
def photo(photos) -> Image.Image:
    return images.decode(photos[6])  # a jeep on a hillside: no uniform corners of its own


@pytest.mark.parametrize("angle", [10, 30, -25])
def test_estimate_rotation_and_derotate(photo, angle):
    rotated = photo.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255))
    estimate = robust.estimate_rotation(rotated)
    assert estimate == pytest.approx(angle, abs=0.5)
    back = robust.derotate(rotated, estimate)
    assert back.width == pytest.approx(photo.width * 0.97, rel=0.02)
    assert back.height == pytest.approx(photo.height * 0.97, rel=0.02)


def test_no_rotation_found_in_plain_photos(photos):
    assert [robust.estimate_rotation(images.decode(p)) for p in photos[:8]] == [0.0] * 8


def test_trim_borders(photo):
    framed = ImageOps.expand(photo, border=(30, 12, 30, 12), fill=(0, 0, 0))
    assert robust.trim_borders(framed).size == pytest.approx(photo.size, abs=2)
    assert robust.trim_borders(photo) is photo


def test_query_views(photo):
    assert len(robust.query_views(photo)) == 2  # itself and its mirror image
    assert len(robust.query_views(ImageOps.expand(photo, border=20, fill=(0, 0, 0)))) == 3


def _dark_corners(photo: Image.Image) -> Image.Image:
    picture = photo.copy()
    w, h = picture.size
    cut = min(w, h) // 4
    draw = ImageDraw.Draw(picture)
    for x, y, dx, dy in ((0, 0, 1, 1), (w - 1, 0, -1, 1), (0, h - 1, 1, -1), (w - 1, h - 1, -1, -1)):
        draw.polygon([(x, y), (x + dx * cut * 2, y), (x, y + dy * cut)], fill=(0, 0, 0))
    return picture


@pytest.mark.parametrize("kind", ["rotated", "dark corners"])
def test_a_query_that_looks_rotated_is_also_seen_as_it_came(photo, kind):
    """Dark triangles in the corners read as a rotation's fill whether or not the picture was
    rotated (a vignette, a dark photo): the de-rotated view comes first, the picture as it came
    second, both primary, so a wrong de-rotation cannot hide the picture itself."""
    picture = photo.rotate(20, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)) \
        if kind == "rotated" else _dark_corners(photo)
    assert robust.estimate_rotation(picture) != 0.0
    views = robust.query_views(picture)
    assert views[1] is not None and np.array_equal(np.asarray(views[1]), np.asarray(picture))
    arrays, own, primary = robust.query_arrays(picture, 224)
    assert primary == 2 and own[:2] == [0, 1] and len(arrays) == len(views)
    assert np.array_equal(arrays[1], images.prepare(picture, 224))
    assert len(robust.query_views(photo)) == 2 and robust.query_arrays(photo, 224)[2] == 1


@pytest.mark.parametrize("family", list(unlisted_edits.FAMILIES))
def test_unlisted_families_are_seeded_rgb_edits(photo, photos, family):
    """Each family of benchmarks/unlisted_families.py gives an RGB picture of the photo, the same
    for the same seed; over a few seeds it changes the picture (no family is the identity)."""
    pool = [images.decode(photos[1])]
    edit = unlisted_edits.FAMILIES[family]
    first, params = edit(photo, np.random.default_rng(3), pool)
    again, same = edit(photo, np.random.default_rng(3), pool)
    assert first.mode == "RGB" and min(first.size) >= 8 and json.dumps(params)
    assert (same, np.asarray(again).tobytes()) == (params, np.asarray(first).tobytes())
    changed = [edit(photo, np.random.default_rng(seed), pool)[0] for seed in range(3)]
    assert any(c.size != photo.size or np.abs(np.asarray(c, np.int16) - np.asarray(photo, np.int16)).mean() > 1
               for c in changed)


def test_layout_ignores_brightness_and_contrast(photo):
    edited = ImageEnhance.Contrast(ImageEnhance.Brightness(photo).enhance(1.3)).enhance(0.8)
    a = np.stack([images.prepare(photo, 224), images.prepare(edited, 224)])
    lay = robust.index_layouts(a)
    assert lay.shape == (2, 4, 256)
    assert np.linalg.norm(lay, axis=-1) == pytest.approx(np.ones((2, 4)), abs=1e-5)
    assert float(lay[0, 0] @ lay[1, 0]) > 0.97


# -- end to end on real photos --------------------------------------------------------------------
SMALL_SET = {"dog": [0, 16], "car": [6, 7], "bird": [14, 15, 17], "drum": [10]}


@pytest.fixture
def small_set(tmp_path, photos):
    root = tmp_path / "set"
    for label, indices in SMALL_SET.items():
        (root / label).mkdir(parents=True)
        for i in indices:
            shutil.copy(photos[i], root / label / photos[i].name)
    return root


def test_eval_command_end_to_end(small_set, tmp_path, model_server, monkeypatch):
    from evaluation import harness
    from services.tfs_client import ModelClient
    monkeypatch.setattr(harness, "ANNOY_SETTINGS", ((4, 1),))
    transforms = {name: harness.TRANSFORMS[name] for name in ("mirror", "rotate30", "crop50")}
    monkeypatch.setattr(harness, "TRANSFORMS", transforms)
    monkeypatch.setattr(harness, "EXTRA_TRANSFORMS", {"border": harness.border})
    out = tmp_path / "out"
    result = CliRunner().invoke(__import__("cli.main", fromlist=["main"]).main,
                                ["eval", str(small_set), "--out", str(out), "--model-server", model_server,
                                 "--no-seed", "--no-plots"])
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    assert "Copy detection" in (out / "results.md").read_text()
    assert r["dataset"] == {"root": str(small_set), "images": 8, "classes": 4, "classes_with_2_or_more": 3,
                            "category_queries": 7, "copy_sources": 8}
    assert r["transforms"] == ["mirror", "rotate30", "crop50", "border"]
    with_phash = importlib.util.find_spec("imagehash") is not None  # the pHash baseline needs it
    assert set(r["copy"]) == {"adopted", "baseline"} | ({"phash"} if with_phash else set())
    for method, table in r["copy"].items():
        for t, row in table["per_transform"].items():
            assert 0.0 <= row["rank1"] <= 1.0 and row["mean_rank"] >= 1.0 and row["n"] == 8
    assert r["copy"]["adopted"]["per_transform"]["mirror"]["rank1"] == 1.0
    assert r["copy"]["adopted"]["per_transform"]["rotate30"]["rank1"] == 1.0

    # Category retrieval of the baseline, recomputed here by hand from the served embeddings.
    items = sorted((label, p) for label in SMALL_SET for p in (small_set / label).iterdir())
    client = ModelClient(model_server, "effnet_lite0")
    try:
        emb = client.embed(np.stack([images.load_for_model(p, 224) for _, p in items]))
    finally:
        client.close()
    labels = [label for label, _ in items]
    p1, aps = [], []
    for i, label in enumerate(labels):
        if labels.count(label) < 2:
            continue
        sims = emb @ emb[i]
        order = [j for j in np.argsort(-sims) if j != i]
        hits = [labels[j] == label for j in order]
        p1.append(float(hits[0]))
        found = np.flatnonzero(hits) + 1
        aps.append(np.mean([(n + 1) / rank for n, rank in enumerate(found)]))
    category = r["category"]["baseline"]
    assert category["queries"] == 7
    assert category["precision_at_1"] == pytest.approx(np.mean(p1))
    assert category["map"] == pytest.approx(np.mean(aps))
    assert r["category"]["precision_at_10_ceiling"] == pytest.approx((2 * 0.1 + 2 * 0.1 + 3 * 0.2) / 7)
    assert [a["n_trees"] for a in r["annoy"]] == [4, 4]
    assert all(0.0 <= a["recall_at_10"] <= 1.0 for a in r["annoy"])
