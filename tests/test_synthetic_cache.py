"""The synthetic dataset's cache_dir: never removes or fills a folder the harness did not make;
a folder made with other parameters is a clear error, not old pairs returned silently."""

import json

import pytest

from harness.errors import HarnessError
from harness.registry import DATASETS
import harness.data.datasets  # noqa: F401  (registers the datasets)


def build(folder, **params):
    return DATASETS.build("synthetic", **{"kind": "asm", "count": 2, "size": 32, "seed": 0, **params},
                          cache_dir=folder)


def test_a_users_folder_is_never_removed_or_written_into(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(HarnessError, match=r"exists and holds files the harness did not write.*new or empty folder"):
        build(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["precious.txt"]
    assert (folder / "precious.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".mine.tmp*"))  # nothing left behind beside it


def test_other_parameters_are_an_error_naming_them_and_equal_ones_reuse_the_pairs(tmp_path):
    folder = tmp_path / "cache"
    made = build(folder)
    stamp = {p.name: p.stat().st_mtime_ns for p in (folder / "hazy").iterdir()}
    with pytest.raises(HarnessError, match=r"other parameters \(seed 0 there, 1 here\).*another folder"):
        build(folder, seed=1)
    again = build(folder)  # same parameters: the cached files, untouched
    assert [p.hazy for p in again.pairs] == [p.hazy for p in made.pairs]
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "hazy").iterdir()} == stamp
    assert json.loads((folder / "meta.json").read_text())["seed"] == 0


def test_an_empty_folder_is_filled(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    assert len(build(folder)) == 2 and (folder / "meta.json").is_file()
