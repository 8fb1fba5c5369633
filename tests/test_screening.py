"""Failure 5 (issue 9): a truncated JPEG passes ``Image.verify()``; datasets are screened by decoding,
and a dataset's own ``on_corrupt: skip`` drops it (with one warning) before any work."""

import shutil

import pytest
from PIL import Image

import harness.data.datasets  # noqa: F401  (registration)
from harness.data.datasets import screen_headers_only
from harness.errors import HarnessError
from harness.registry import DATASETS

PHOTOS = ("wolf.jpg", "fishers.jpg", "trees.png")


@pytest.fixture
def folder(tmp_path, shared_data):
    root = tmp_path / "bench"
    root.mkdir()
    for name in PHOTOS:
        shutil.copy(shared_data / "real_hazy" / name, root / name)
    data = (root / "wolf.jpg").read_bytes()
    (root / "wolf.jpg").write_bytes(data[: len(data) * 3 // 4])  # cut mid-scan, as an interrupted copy
    return root


def test_verify_alone_misses_the_truncated_jpeg(folder):
    """Pins the Pillow behaviour the screening is built around (not harness code): verify() passes a
    JPEG cut mid-scan, so screening must decode."""
    with Image.open(folder / "wolf.jpg") as im:
        im.verify()  # no error: why screening must decode


def test_truncated_jpeg_fails_or_is_skipped_per_dataset(folder, capsys):
    with pytest.raises(HarnessError, match=r"folder: 1 corrupt image\(s\) .*wolf.jpg \(cannot decode: OSError\)"
                                           r".*on_corrupt: skip"):
        DATASETS.build("folder", root=folder)
    kept = DATASETS.build("folder", root=folder, on_corrupt="skip")
    assert [p.name for p in kept.pairs] == ["fishers.jpg", "trees.png"]
    assert "skipped 1 corrupt image(s): wolf.jpg" in capsys.readouterr().err
    # the same set screened again in this process (validation, then the run) warns once
    DATASETS.build("folder", root=folder, on_corrupt="skip")
    assert "skipped" not in capsys.readouterr().err


def test_header_screening_is_cheap_and_lets_the_full_screening_find_truncation(folder):
    with screen_headers_only():
        assert len(DATASETS.build("folder", root=folder)) == 3
    with pytest.raises(HarnessError, match="wolf.jpg"):
        DATASETS.build("folder", root=folder)


def test_images_under_16_px_are_unusable(folder):
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    with screen_headers_only(), pytest.raises(HarnessError, match=r"dot.png \(1x1 px, under 16 px\)"):
        DATASETS.build("folder", root=folder)


def test_a_set_with_nothing_usable_left_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(HarnessError, match="every image under .* is unusable"):
        DATASETS.build("folder", root=tmp_path, on_corrupt="skip")


@pytest.mark.slow
def test_run_honours_a_benchmarks_own_on_corrupt_skip(folder, tmp_path):
    """The case of failure 5 end to end: the run failed at scoring, after adaptation, telling the
    user to set the option they had set; now the file is skipped (one warning) and the rest scored."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from tests.test_run import TINY

    recipe = dict(TINY, out=str(tmp_path / "run"), methods=[{"type": "none"}], metrics=["entropy"],
                  budget=dict(TINY["budget"], pretrain_steps=2),
                  benchmarks=[{"type": "folder", "label": "real", "root": str(folder), "on_corrupt": "skip"}])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("skipped 1 corrupt image(s): wolf.jpg") == 1
    record = json.loads(next((tmp_path / "run" / "cells").glob("*.json")).read_text())
    rows = (tmp_path / "run" / "scores" / record["cell"]["id"] / "real.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["fishers.jpg", "trees.png"]
