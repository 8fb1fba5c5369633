"""``harness dehaze``: one same-size output per input, decoded by content; tiling matches a whole pass."""

import json
import shutil

import numpy as np
import pytest
import torch

from harness.data.io import read_image, to_tensor
from harness.dehaze import dehaze_folder, load_checkpoint, merge_adapter, restore_tiled
from harness.errors import HarnessError
from harness.models import build_backbone
from harness.store import save_weights

ODD = ["trees.png", "aod_guogong.png", "aod_test12.jpg", "aod_test13.jpg", "mountain-input.bmp"]  # RGBA, BMP as png/jpg


def checkpoint(tmp_path, name="aod_net"):
    torch.manual_seed(0)
    model = build_backbone(name, "tiny").deploy()
    path = tmp_path / "model.safetensors"
    save_weights(path, model, {"backbone": name, "variant": "tiny", "form": "deploy"})
    return path


def test_every_odd_file_gets_a_same_size_png(tmp_path, shared_data):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ODD:
        shutil.copy(shared_data / "real_hazy" / name, inputs / name)
    model, meta = load_checkpoint(checkpoint(tmp_path, "dea_net"))
    assert meta["backbone"] == "dea_net"
    written = dehaze_folder(model, inputs, tmp_path / "out", tile=256)
    assert sorted(p.name for p in written) == sorted(f"{n.rsplit('.', 1)[0]}.png" for n in ODD)
    for name in ODD:
        src = read_image(inputs / name)
        out = read_image(tmp_path / "out" / f"{name.rsplit('.', 1)[0]}.png")
        assert out.shape == src.shape


def test_tiles_blend_to_the_whole_image_result(tmp_path):
    model, _ = load_checkpoint(checkpoint(tmp_path))
    image = to_tensor(np.random.default_rng(0).random((150, 230, 3), dtype=np.float32))
    whole = restore_tiled(model, image, tile=None)
    tiled = restore_tiled(model, image, tile=96, overlap=24)
    assert tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    assert diff.mean() < 2e-3 and diff.max() < 0.1


@pytest.mark.slow
def test_whole_real_hazy_folder(tmp_path, shared_data):
    model, _ = load_checkpoint(checkpoint(tmp_path, "dea_net"))
    files = sorted((shared_data / "real_hazy").iterdir())
    written = dehaze_folder(model, shared_data / "real_hazy", tmp_path / "out", tile=512)
    assert len(written) == len(files)
    for src in files:
        assert read_image(tmp_path / "out" / f"{src.stem}.png").shape == read_image(src).shape


# ---------------------------------------------------------------- nothing lost, nothing silently wrong (issue 9)


def _inputs(tmp_path, shared_data, names=("wolf.jpg", "trees.png")):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        shutil.copy(shared_data / "real_hazy" / name, folder / name)
    return folder


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_output_folder_is_inside_or_around_the_input_is_refused(tmp_path, shared_data):
    """Failure 1: `dehaze DIR DIR` overwrote the input photos (rc 0)."""
    inputs = _inputs(tmp_path, shared_data)
    before = _bytes(inputs)
    model, _ = load_checkpoint(checkpoint(tmp_path))
    for out, relation in ((inputs, "is"), (inputs / "restored", "lies inside"), (tmp_path, "contains"),
                          (inputs / ".." / "in", "is")):
        with pytest.raises(HarnessError, match=f"output folder .* {relation} the input folder"):
            dehaze_folder(model, inputs, out)
    assert _bytes(inputs) == before and not (inputs / "restored").exists()


def test_existing_outputs_are_replaced_only_with_overwrite(tmp_path, shared_data):
    inputs = _inputs(tmp_path, shared_data)
    model, _ = load_checkpoint(checkpoint(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    (out / "wolf.png").write_bytes(b"someone else's file")
    with pytest.raises(HarnessError, match=r"1 of the 2 outputs already exist .*wolf.png.* --overwrite"):
        dehaze_folder(model, inputs, out)
    assert sorted(p.name for p in out.iterdir()) == ["wolf.png"]  # checked before anything was written
    assert (out / "wolf.png").read_bytes() == b"someone else's file"
    dehaze_folder(model, inputs, out, overwrite=True)
    assert read_image(out / "wolf.png").shape == read_image(inputs / "wolf.jpg").shape


def test_bad_tiling_is_refused_and_non_finite_images_are_never_written(tmp_path, shared_data):
    """Failure 2: --tile 64 --overlap -5 left gaps between tiles whose 0/0 turned 10% of pixels black."""
    inputs = _inputs(tmp_path, shared_data, ["wolf.jpg"])
    model, _ = load_checkpoint(checkpoint(tmp_path))
    for tile, overlap, expected in ((64, -5, "negative"), (64, 32, "too large"), (8, 0, "below 16")):
        with pytest.raises(HarnessError, match=expected):
            dehaze_folder(model, inputs, tmp_path / "out", tile=tile, overlap=overlap)
    assert not (tmp_path / "out").exists()

    class Diverged(torch.nn.Module):  # a model whose output is NaN in one corner
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            y = x.clone()
            y[..., :10, :10] = float("nan")
            return y

    with pytest.raises(HarnessError, match=r"refusing to write .*wolf.png: .*% of its pixels are not finite"):
        dehaze_folder(Diverged(), inputs, tmp_path / "out", tile=None)
    assert list((tmp_path / "out").glob("*")) == []  # no image, no temporary file left behind


def test_a_corrupt_file_is_found_before_any_output_and_can_be_skipped(tmp_path, shared_data):
    """One unreadable file aborted at 75% with a hint naming options dehaze does not have."""
    inputs = _inputs(tmp_path, shared_data)
    data = (inputs / "wolf.jpg").read_bytes()
    (inputs / "truncated.jpg").write_bytes(data[: len(data) * 3 // 4])
    (inputs / "scores.csv").write_text("image,fade\n")
    model, _ = load_checkpoint(checkpoint(tmp_path))
    with pytest.raises(HarnessError, match=r"2 of the 4 files .* are not usable images: scores.csv .*truncated.jpg "
                                           r"\(cannot decode.* --skip-corrupt"):
        dehaze_folder(model, inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    written = dehaze_folder(model, inputs, tmp_path / "out", skip_corrupt=True)
    assert sorted(p.name for p in written) == ["trees.png", "wolf.png"]


def test_swapped_or_foreign_checkpoints_give_one_line(tmp_path):
    ckpt = checkpoint(tmp_path)
    model, meta = load_checkpoint(ckpt)
    adapter = tmp_path / "adapter.safetensors"  # what `harness run` writes for a LoRA method
    torch.save({}, adapter)
    adapter.with_name(adapter.name + ".json").write_text(json.dumps({"sites": {"g": ["conv1"]}, "rank": 2,
                                                                      "alpha": 4, "backbone": "aod_net"}))
    with pytest.raises(HarnessError, match=r"is an adapter, not a model checkpoint -- fix: pass it as --adapter"):
        load_checkpoint(adapter)
    with pytest.raises(HarnessError, match=r"is not an adapter \(it is a model checkpoint: were --checkpoint and "
                                           r"--adapter swapped\?\)"):
        merge_adapter(model, ckpt, ckpt, meta)
    with pytest.raises(HarnessError, match=r"adapter .* is not a safetensors file"):
        merge_adapter(model, adapter, ckpt, meta)
    # a 14 KB state-dict dump of another backbone under a copied sidecar
    dump = tmp_path / "dump.safetensors"
    torch.save(build_backbone("dea_net", "tiny").state_dict(), dump)
    shutil.copy(ckpt.with_name(ckpt.name + ".json"), dump.with_name(dump.name + ".json"))
    with pytest.raises(HarnessError, match=r"checkpoint .*dump.safetensors is not a safetensors file"):
        load_checkpoint(dump)
    other = tmp_path / "other.safetensors"
    save_weights(other, build_backbone("ffa_net", "tiny"), {"backbone": "aod_net", "variant": "tiny", "form": "deploy"})
    with pytest.raises(HarnessError, match=r"does not hold aod_net-tiny weights, as its sidecar says"):
        load_checkpoint(other)
