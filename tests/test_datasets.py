import os
import shutil

import numpy as np
import pytest
from PIL import Image

import harness.data.datasets  # noqa: F401  (registration)
from harness.data.datasets import ImageSet, cache_root
from harness.errors import HarnessError
from harness.registry import DATASETS


def _img(path, seed=0, size=(24, 20)):  # at least MIN_SIDE (16 px): smaller images are screened out
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _flat(folder, names):
    for i, n in enumerate(names):
        _img(folder / n, i)


@pytest.mark.parametrize("name,sub,expected", [("rtts", "JPEGImages", 4322), ("urhi", "UnannotatedHazyImages", 4807)])
def test_hazy_only_benchmarks(tmp_path, name, sub, expected):
    _flat(tmp_path / sub, ["b.png", "a.png", "c.jpg"])
    data = DATASETS.build(name, root=tmp_path, expect_count=False)
    assert [p.name for p in data.pairs] == ["a.png", "b.png", "c.jpg"] and not data.has_reference
    assert data.load(0)[0].shape == (20, 24, 3) and data.load(0)[1] is None
    with pytest.raises(HarnessError, match=f"expected {expected} images"):
        DATASETS.build(name, root=tmp_path)
    wrong = tmp_path / "wrong"
    _flat(wrong, ["a.png"])
    with pytest.raises(HarnessError, match=rf"{name}: expected {sub}/ under .*wrong \(found: a.png\)"):
        DATASETS.build(name, root=wrong, expect_count=False)


def test_fattal_counts_31(tmp_path):
    _flat(tmp_path, [f"{i}.png" for i in range(31)])
    assert len(DATASETS.build("fattal", root=tmp_path)) == 31
    (tmp_path / "0.png").unlink()
    with pytest.raises(HarnessError, match="expected 31 images .* found 30"):
        DATASETS.build("fattal", root=tmp_path)
    with pytest.raises(HarnessError, match="does not exist"):
        DATASETS.build("fattal", root=tmp_path / "missing")


def test_hazydet_splits_and_rddts(tmp_path):
    for split in ("train", "test"):
        _flat(tmp_path / split / "hazy images", ["1.jpg", "2.jpg"])
        _flat(tmp_path / split / "clean images", ["1.jpg", "2.jpg"])
    _flat(tmp_path / "RDDTS", ["r1.jpg"])
    test = DATASETS.build("hazydet", root=tmp_path, split="test")
    assert test.has_reference and test.pairs[0].clear.parent.name == "clean images"
    assert len(DATASETS.build("hazydet", root=tmp_path, split="rddts")) == 1
    with pytest.raises(HarnessError, match="expected val/ under"):
        DATASETS.build("hazydet", root=tmp_path, split="val")
    shutil.rmtree(tmp_path / "train" / "clean images")
    with pytest.raises(HarnessError, match="expected clean images/ under .*train"):
        DATASETS.build("hazydet", root=tmp_path, split="train")


@pytest.mark.parametrize("name,hazy,gt,count", [("dense_haze", "{:02d}_hazy.png", "{:02d}_GT.png", 55),
                                                ("nh_haze", "{:02d}_hazy.png", "{:02d}_GT.png", 55),
                                                ("o_haze", "{:02d}_outdoor_hazy.jpg", "{:02d}_outdoor_GT.jpg", 45)])
def test_ntire_pairs_flat_or_in_subfolders(tmp_path, name, hazy, gt, count):
    flat, split = tmp_path / "flat", tmp_path / "split"
    for i in range(1, 4):
        _img(flat / hazy.format(i), i)
        _img(flat / gt.format(i), i + 10)
        _img(split / "hazy" / hazy.format(i), i)
        _img(split / "GT" / gt.format(i), i + 10)
    for root in (flat, split):
        data = DATASETS.build(name, root=root, expect_count=False)
        assert len(data) == 3 and data.has_reference and data.pairs[0].name == hazy.format(1)
    with pytest.raises(HarnessError, match=f"expected {count} images"):
        DATASETS.build(name, root=flat)
    (flat / gt.format(2)).unlink()
    with pytest.raises(HarnessError, match="no ground truth for image.* 02"):
        DATASETS.build(name, root=flat, expect_count=False)
    with pytest.raises(HarnessError, match="no files named like"):
        DATASETS.build(name, root=tmp_path / "split" / "GT", expect_count=False)


@pytest.mark.parametrize("name,hazy_name,clear_name", [("its", "1_3_0.85.png", "1.png"),
                                                       ("ots", "0005_0.9_0.16.jpg", "0005.jpg")])
def test_reside_pretraining_layouts_pair_by_id(tmp_path, name, hazy_name, clear_name):
    _img(tmp_path / "hazy" / hazy_name)
    _img(tmp_path / "clear" / clear_name, 1)
    data = DATASETS.build(name, root=tmp_path)
    assert data.has_reference and data.pairs[0].clear.name == clear_name
    _img(tmp_path / "hazy" / ("9" + hazy_name[1:]))
    with pytest.raises(HarnessError, match="no clear image .* for 1 hazy image"):
        DATASETS.build(name, root=tmp_path)
    with pytest.raises(HarnessError, match=rf"{name}: expected hazy/ or haze/ under"):
        DATASETS.build(name, root=tmp_path / "clear")


def test_haze4k_split_layout(tmp_path):
    _img(tmp_path / "test" / "haze" / "7_0.8_1.2.png")
    _img(tmp_path / "test" / "gt" / "7.png")
    data = DATASETS.build("haze4k", root=tmp_path, split="test")
    assert data.has_reference and data.name == "haze4k-test"
    with pytest.raises(HarnessError, match="expected hazy/ or haze/ under"):
        DATASETS.build("haze4k", root=tmp_path, split="train")


@pytest.mark.parametrize("name", ["folder", "thaze", "ridcp", "nhrw"])
def test_generic_layouts(tmp_path, name):
    _flat(tmp_path / "flat", ["x.png", "y.png"])
    flat = DATASETS.build(name, root=tmp_path / "flat")
    assert len(flat) == 2 and not flat.has_reference
    _flat(tmp_path / "paired" / "hazy", ["x.png", "y.png"])
    _flat(tmp_path / "paired" / "clear", ["x.png", "y.png"])
    assert DATASETS.build(name, root=tmp_path / "paired").has_reference
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match=f"{name}: no images in .*empty"):
        DATASETS.build(name, root=tmp_path / "empty")


def test_corrupt_files_fail_or_are_skipped_with_a_warning(tmp_path, capsys):
    _flat(tmp_path / "JPEGImages", ["a.png", "b.png", "c.png"])
    data = (tmp_path / "JPEGImages" / "b.png").read_bytes()
    (tmp_path / "JPEGImages" / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(HarnessError, match=r"1 corrupt image\(s\) .*JPEGImages/b.png"):
        DATASETS.build("rtts", root=tmp_path, expect_count=False)
    data = DATASETS.build("rtts", root=tmp_path, expect_count=False, on_corrupt="skip")
    assert [p.name for p in data.pairs] == ["a.png", "c.png"]
    assert "skipped 1 corrupt image(s): JPEGImages/b.png" in capsys.readouterr().err
    assert [p.name for p in DATASETS.build("rtts", root=tmp_path, expect_count=False, on_corrupt="skip",
                                           limit=1).pairs] == ["a.png"]


def test_fingerprint_is_stable_location_free_and_content_sensitive(tmp_path):
    _flat(tmp_path / "a", ["x.png", "y.bmp"])
    fp = DATASETS.build("folder", root=tmp_path / "a").fingerprint()
    assert fp == DATASETS.build("folder", root=tmp_path / "a").fingerprint()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert DATASETS.build("folder", root=tmp_path / "b").fingerprint() == fp
    size = (tmp_path / "b" / "y.bmp").stat().st_size
    _img(tmp_path / "b" / "y.bmp", seed=99)
    assert (tmp_path / "b" / "y.bmp").stat().st_size == size  # same size, different pixels
    assert DATASETS.build("folder", root=tmp_path / "b").fingerprint() != fp
    os.rename(tmp_path / "a" / "x.png", tmp_path / "a" / "z.png")
    assert DATASETS.build("folder", root=tmp_path / "a").fingerprint() != fp


def test_synthetic_pairs_are_cached_by_parameters():
    data = DATASETS.build("synthetic", kind="asm", count=3, size=32, seed=0)
    assert isinstance(data, ImageSet) and len(data) == 3 and data.has_reference
    assert data.root.parent == cache_root()
    hazy, clear = data.load(0)
    assert hazy.shape == clear.shape == (32, 32, 3) and not np.array_equal(hazy, clear)
    stamp = data.pairs[0].hazy.stat().st_mtime_ns
    again = DATASETS.build("synthetic", kind="asm", count=3, size=32, seed=0)
    assert again.root == data.root and again.pairs[0].hazy.stat().st_mtime_ns == stamp
    assert again.fingerprint() == data.fingerprint()
    other = DATASETS.build("synthetic", kind="nonuniform", count=3, size=32, seed=1)
    assert other.root != data.root and other.fingerprint() != data.fingerprint()


def test_synthetic_sources_scenes_and_folder(tmp_path, shared_data):
    scenes = DATASETS.build("synthetic", source="scenes", kind="night", count=2, size=48, cache_dir=tmp_path / "s")
    assert (tmp_path / "s" / "meta.json").is_file() and scenes.load(1)[0].mean() < scenes.load(1)[1].mean()
    src = tmp_path / "clean"
    src.mkdir()
    for n in ("kodim01.png", "kodim02.png"):
        shutil.copy(shared_data / "clean_kodak24" / n, src / n)
    made = DATASETS.build("synthetic", source=str(src), kind="ridcp", count=2, size=64, seed=3)
    assert made.load(0)[1].shape == (64, 64, 3)


def test_synthetic_rejects_bad_options():
    with pytest.raises(HarnessError, match="unknown kind 'fog'"):
        DATASETS.build("synthetic", kind="fog")
    with pytest.raises(HarnessError, match="neither a photo pool, 'scenes' nor a folder"):
        DATASETS.build("synthetic", source="/no/such/folder")
    with pytest.raises(HarnessError, match="count must be >= 1"):
        DATASETS.build("synthetic", count=0)


def test_every_dataset_validates_its_recipe_parameters(tmp_path):
    for name in DATASETS.names():
        params = {} if name == "synthetic" else {"root": str(tmp_path)}
        assert DATASETS.validate(name, params)["on_corrupt"] == "fail"
    with pytest.raises(HarnessError, match="unknown key 'rtts.colour'"):
        DATASETS.validate("rtts", {"root": "x", "colour": 1}, where="rtts")


def test_image_sequence_shrinks_by_area_to_max_side(tmp_path):
    """A 4x8 image of 2x2 blocks, each block the values 0, 100, 200, 60 (mean 90) plus 4 x its column:
    shrunk to a longer side of 4, every pixel is its block's mean; no max_side, the image as written."""
    from harness.data.sequence import ImageSequence

    block = np.array([[0, 100], [200, 60]])
    image = np.zeros((4, 8), np.uint8)
    for r in range(2):
        for c in range(4):
            image[2 * r:2 * r + 2, 2 * c:2 * c + 2] = block + 4 * c
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "blocks.png")
    shrunk = ImageSequence([tmp_path / "blocks.png"], max_side=4)[0]
    assert tuple(shrunk.shape) == (3, 2, 4)
    expected = (90 + 4 * np.arange(4)) / 255.0
    assert np.allclose(shrunk.numpy(), np.broadcast_to(expected, (3, 2, 4)), atol=1e-6)
    assert tuple(ImageSequence([tmp_path / "blocks.png"])[0].shape) == (3, 4, 8)


def test_the_adaptation_target_is_shrunk_to_the_budget_max_side(tmp_path):
    from types import SimpleNamespace

    from harness.stages.adapt import target_split

    names = []
    for i in range(4):
        Image.fromarray(np.full((60, 90, 3), 40 * i, np.uint8)).save(tmp_path / f"t{i}.png")
        names.append(SimpleNamespace(name=f"t{i}.png", hazy=tmp_path / f"t{i}.png"))
    for side, shape in ((30, (3, 20, 30)), (None, (3, 60, 90))):
        recipe = SimpleNamespace(target_split=0.5, budget=SimpleNamespace(adapt=SimpleNamespace(max_side=side)))
        ctx = SimpleNamespace(recipe=recipe, dataset=lambda entry: SimpleNamespace(pairs=names))
        train, val = target_split({"type": "folder"}, ctx)
        assert len(train) == len(val) == 2
        assert {tuple(x.shape) for x in (*train, *val)} == {shape}
