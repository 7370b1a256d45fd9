"""Hostile arguments to the seed-parity CLI tools (`vsearch resize`, `vsearch features`): each is
done, or refused in one clear line with a non-zero exit, never a traceback or an allocation beyond
the image limits. The real commands run in-process (click's CliRunner) on real photos."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli.main import main
from services import images
from tests.conftest import imagenet_photos

SIDES = st.one_of(st.integers(-5, 300), st.sampled_from([0, images.MAX_SIDE + 1, 10**6, 10**12]))


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for n, photo in enumerate(imagenet_photos()[:2]):
        with Image.open(photo) as im:
            im.convert("RGB").save(folder / f"{n}.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def within_limits(width: int, height: int) -> bool:
    return 1 <= min(width, height) and max(width, height) <= images.MAX_SIDE and \
        width * height <= images.DEFAULT_MAX_PIXELS


@settings(max_examples=25, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@example(width=0, height=10)  # was a ValueError traceback
@example(width=20_000, height=20_000)  # 400 MP: was an attempt to allocate 1.2 GB (100000 x 100000: 30 GB)
@given(width=SIDES, height=SIDES)
def test_resize_takes_any_size_within_the_limits_or_refuses_it_in_one_line(photo_dir, tmp_path_factory, width,
                                                                           height):
    out = tmp_path_factory.mktemp("resized")
    result = CliRunner().invoke(main, ["resize", "--input-dir", str(photo_dir), "--output-dir", str(out),
                                       "--width", str(width), "--height", str(height)])
    assert isinstance(result.exception, (SystemExit, type(None))), result.output  # not a traceback
    if within_limits(width, height):
        assert result.exit_code == 0, result.output
        written = sorted(out.rglob("*.jpg"))
        assert len(written) == 2
        for path in written:
            with Image.open(path) as im:
                assert im.size == (width, height)
        assert "2 images" in result.output and "1 skipped" in result.output
    else:
        assert result.exit_code == 2 and "Error: Invalid value" in result.output, result.output


def test_resize_into_a_path_that_cannot_be_a_folder_fails_in_one_line(photo_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["resize", "--input-dir", str(photo_dir), "--output-dir", str(blocker / "out")])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    assert "Error: cannot write" in result.output and "Not a directory" in result.output


@pytest.mark.parametrize("size", ["0", "-1"])
def test_features_refuses_a_batch_size_below_one(photo_dir, tmp_path, size):
    result = CliRunner().invoke(main, ["features", "--input-dir", str(photo_dir), "--output-feature-file",
                                       str(tmp_path / "f.npy"), "--output-image-name-file", str(tmp_path / "f.txt"),
                                       "--batch-size", size])
    assert result.exit_code == 2 and "Error: Invalid value for '--batch-size'" in result.output, result.output
