"""URHI's published subset (BiLaLoRA scores 150 of its 4,807 images): a list file or a count."""

import numpy as np
import pytest

from harness.data.io import write_image
from harness.errors import HarnessError
from harness.registry import DATASETS
import harness.data.datasets  # noqa: F401  (registers the datasets)


@pytest.fixture
def urhi_root(tmp_path):
    folder = tmp_path / "URHI" / "UnannotatedHazyImages"
    rng = np.random.default_rng(0)
    for i in range(12):
        write_image(folder / f"img{i:03d}.png", rng.random((8, 8, 3)).astype(np.float32))
    return tmp_path / "URHI"


def test_count_sets_what_the_folder_must_hold(urhi_root):
    assert len(DATASETS.build("urhi", root=urhi_root, count=12)) == 12
    with pytest.raises(HarnessError, match="expected 4807 images"):  # the full set by default
        DATASETS.build("urhi", root=urhi_root)
    with pytest.raises(HarnessError, match="expected 150 images .* found 12"):
        DATASETS.build("urhi", root=urhi_root, count=150)


def test_a_list_file_picks_the_subset_in_its_order_and_every_name_must_exist(urhi_root, tmp_path):
    listing = tmp_path / "urhi_150.txt"
    listing.write_text("# the subset\nimg007.png\n\nimg002.png  # second\nUnannotatedHazyImages/img010.png\n")
    data = DATASETS.build("urhi", root=urhi_root, subset=listing)
    assert [p.name for p in data.pairs] == ["img007.png", "img002.png", "img010.png"]
    assert len(DATASETS.build("urhi", root=urhi_root, subset=listing, count=3)) == 3
    with pytest.raises(HarnessError, match="count 150 differs from the 3 names"):
        DATASETS.build("urhi", root=urhi_root, subset=listing, count=150)
    listing.write_text("img007.png\nimg999.png\n")
    with pytest.raises(HarnessError, match=r"1 of the 2 images listed .* img999.png"):
        DATASETS.build("urhi", root=urhi_root, subset=listing)
    assert [p.name for p in DATASETS.build("urhi", root=urhi_root, subset=listing, expect_count=False).pairs] == \
        ["img007.png"]
    listing.write_text("img007.png\nimg007.png\n")
    with pytest.raises(HarnessError, match="more than once"):
        DATASETS.build("urhi", root=urhi_root, subset=listing)
