"""``harness dehaze``: one same-size output per input, decoded by content; tiling matches a whole pass."""

import shutil

import numpy as np
import pytest
import torch

from harness.data.io import read_image, to_tensor
from harness.dehaze import dehaze_folder, load_checkpoint, restore_tiled
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
