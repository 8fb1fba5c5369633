"""The guide probe, the photo pools' disjointness, and ``harness guide tune``."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from harness.data import photos
from harness.data.io import read_image
from harness.errors import HarnessError
from harness.guide.probe import EDITS, descend, edit, lab_ab, probe


class ToTarget:
    """A stand-in loss whose gradient leads to a known image: mean squared error to ``target``."""

    def __init__(self, target: torch.Tensor):
        self.target = target

    def __call__(self, out, inp):
        return F.mse_loss(out, self.target)


def pairs(seed=0, n=3, size=32):
    g = torch.Generator().manual_seed(seed)
    clear = torch.rand(n, 3, size, size, generator=g)
    return 0.5 * clear + 0.4, clear  # a uniform haze: I = 0.5 J + 0.5 * 0.8


def test_probe_reports_psnr_gain_for_a_loss_that_leads_to_the_ground_truth_and_loss_for_one_that_does_not():
    hazy, clear = pairs()
    good = probe(ToTarget(clear), hazy, clear, steps=30, lr=0.02)
    cast = edit("colour cast", hazy, clear)
    bad = probe(ToTarget(cast), hazy, clear, steps=30, lr=0.02)
    mse = F.mse_loss(hazy, clear, reduction="none").flatten(1).mean(1)
    assert good.descent["psnr_before"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=0.01)
    assert good.psnr_gain > 3 and bad.psnr_gain < 0
    assert bad.descent["lab_shift"] > good.descent["lab_shift"]
    assert set(good.h2c) == set(EDITS) and good.h2c["ground truth"] == 0.0
    assert len(good.curve) == 30 and good.curve[-1] < good.curve[0]


def test_descent_from_a_model_output_starts_there():
    """Probing from a model's outputs (``start``): a loss that pulls towards the hazy input, started
    from the ground truth brightened by 0.1 (PSNR 20 dB by hand), loses PSNR and scores its start
    clearer than the truth; from the hazy input itself it does not move at all."""
    hazy, clear = pairs()
    clear = 0.2 + 0.6 * clear
    hazy = 0.5 * clear + 0.4
    start = clear + 0.1
    result = probe(ToTarget(hazy), hazy, clear, steps=30, lr=0.02, start=start)
    d = result.descent
    assert d["start"] == "model output" and d["psnr_before"] == pytest.approx(20.0, abs=1e-3)
    assert result.h2c["model output"] == pytest.approx(float(F.mse_loss(start, hazy)), rel=1e-5)
    assert result.start_beats_truth and result.psnr_gain < -1 and result.verdict() == "is fooled (PSNR falls)"
    way = F.cosine_similarity((hazy - start).flatten(1), (clear - start).flatten(1), dim=1).mean()
    assert d["gradient_alignment"] == pytest.approx(float(way), abs=1e-5)
    from_input = probe(ToTarget(hazy), hazy, clear, steps=30, lr=0.02)
    assert from_input.descent["start"] == "input" and "model output" not in from_input.h2c
    assert from_input.psnr_gain == pytest.approx(0.0, abs=1e-6) and from_input.start_beats_truth  # 0 < 0.03


def test_edits_by_hand():
    hazy = torch.tensor([0.1, 0.3, 0.5, 0.7]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    stretched = edit("contrast stretch", hazy, hazy)
    lo, hi = 0.1 + 0.01 * 3 * 0.2, 0.7 - 0.01 * 3 * 0.2  # torch's linear-interpolated 1st/99th percentiles
    assert torch.allclose(stretched[0, 0].flatten(), ((hazy[0, 0].flatten() - lo) / (hi - lo)).clamp(0, 1), atol=1e-5)
    mono = edit("orange monochrome", hazy, hazy)
    assert torch.allclose(mono[:, 0] / 1.3, mono[:, 2] / 0.35, atol=1e-6)  # one hue everywhere
    assert torch.equal(edit("noise", hazy, hazy), edit("noise", hazy, hazy))  # seeded


def test_lab_shift_of_a_grey_image_is_zero_and_of_red_is_large():
    grey = torch.full((1, 3, 4, 4), 0.5)
    red = grey * torch.tensor([1.0, 0.5, 0.5]).view(1, 3, 1, 1)
    assert np.abs(lab_ab(grey)).max() < 1e-2
    a, b = lab_ab(red)[0]
    assert a > 15 and b > 5  # a reddish tint: positive a* (red) and b* (yellow)


class SingularAtTheInput(ToTarget):
    """As ``ToTarget``, but the gradient at the input is 1e7 times larger (as H2C's cosine at out == in)."""

    def __call__(self, out, inp):
        scale = 1e7 if torch.equal(out, inp) else 1.0
        return scale * F.mse_loss(out, self.target)


def test_descent_is_not_frozen_by_a_singular_first_gradient():
    """Unscaled, Adam's moments keep the first gradient's size and each later step shrinks by ~0.9:
    the pixels stop after a few lr-sized steps (PSNR gain about 2 dB here, 29 dB for the regular loss); per-image unit gradients
    keep every step lr-sized, so the descent reaches the ground truth as with a regular loss."""
    hazy, clear = pairs()
    for optimiser in ("adam", "gd"):
        regular = probe(ToTarget(clear), hazy, clear, steps=60, lr=0.01, optimiser=optimiser)
        singular = probe(SingularAtTheInput(clear), hazy, clear, steps=60, lr=0.01, optimiser=optimiser)
        assert singular.psnr_gain > 5 and abs(singular.psnr_gain - regular.psnr_gain) < 0.5, optimiser


def test_adam_turns_a_global_colour_gradient_into_regional_colour():
    """A linear loss, ``-sum(w * luma) - sum(c * x)``, whose gradient varies over the image in luma
    (w) but not in colour (c): steepest descent moves every pixel's colour the same way (by hand:
    the step is along the fixed gradient), while Adam's per-pixel, per-channel rescaling (about the
    sign of each gradient component) gives pixels where |w| is small the colour of c's signs and the
    others none: regional colour from a gradient that has none."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 1, 16, 16, generator=g)
    c = torch.tensor([0.3, -0.1, -0.2]).view(1, 3, 1, 1)
    hazy = torch.full((1, 3, 16, 16), 0.5)

    def linear(x, inp):
        return -(w * x.mean(1, keepdim=True)).sum() - (c * x).sum()

    def colour_of_move(optimiser):
        out, _ = descend(linear, hazy, steps=5, lr=0.01, optimiser=optimiser)
        move = out - hazy
        return move - move.mean(1, keepdim=True)

    steepest = colour_of_move("gd")
    assert steepest.abs().max() > 1e-3
    assert torch.allclose(steepest, steepest[:, :, :1, :1].expand_as(steepest), atol=1e-6)
    adam = colour_of_move("adam")
    assert adam.flatten(2).std(2).min() > 0.005  # each channel's colour varies over the image


def test_descent_keeps_pixels_in_range():
    hazy, _ = pairs()
    out, _ = descend(ToTarget(torch.full_like(hazy, 3.0)), hazy, steps=10, lr=0.5)
    assert out.max() <= 1.0 and out.min() >= 0.0


def test_pools_share_no_photo_by_content():
    sigs = {name: [photos.signature(read_image(f)) for f in photos.pool_files(name)] for name in photos.DISJOINT}
    names = list(photos.DISJOINT)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            worst = max(float(x @ y) for x in sigs[a] for y in sigs[b])
            assert worst < 0.6, (a, b, worst)


def test_signature_finds_a_rescaled_hazed_copy():
    """The content check can fail: a rescaled, hazed, re-cropped copy of a pool photo is caught."""
    from harness.data import synth

    image, depth = photos.pool("test")[0]
    copy = synth.asm_haze(image, np.random.default_rng(0), depth=depth)[::2, ::2]
    own = float(photos.signature(image) @ photos.signature(np.ascontiguousarray(copy)))
    others = [float(photos.signature(image) @ photos.signature(read_image(f))) for f in photos.pool_files("guide")]
    assert own > 0.7 and max(others) < 0.6


def test_shared_real_haze_duplicates_are_found(shared_data):
    """Two files of ../shared/data/real_hazy are the same photo: the check sees it."""
    a, b = (read_image(shared_data / "real_hazy" / n) for n in ("mountain-input.bmp", "aod_test13.jpg"))
    assert float(photos.signature(a) @ photos.signature(b)) > 0.9


def test_unknown_pool_is_one_clear_error():
    with pytest.raises(HarnessError, match="unknown photo pool 'nope'"):
        photos.pool("nope")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "200"})


def test_probe_command_needs_a_paired_benchmark(tmp_path, shared_data):
    recipe = yaml.safe_load(open("recipes/quickstart.yaml"))
    recipe["benchmarks"] = [{"type": "folder", "label": "real", "root": str(shared_data / "real_hazy")}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = _cli("guide", "probe", str(path), cwd=os.getcwd())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "no ground truth" in lines[0], proc.stderr
    proc = _cli("guide", "probe", str(path), "--benchmark", "nope", cwd=os.getcwd())
    assert proc.returncode == 2 and "no benchmark named 'nope'" in proc.stderr and "real" in proc.stderr


def test_probe_command_names_a_missing_checkpoint(tmp_path):
    proc = _cli("guide", "probe", "recipes/quickstart.yaml", "--checkpoint", str(tmp_path / "none.safetensors"),
                cwd=os.getcwd())
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "none.safetensors not found" in lines[0], proc.stderr


@pytest.fixture
def random_clip_file(tmp_path):
    from harness.guide.model import TINY_MODEL, create_model

    torch.manual_seed(0)
    path = tmp_path / "random.pt"
    torch.save(create_model(TINY_MODEL).state_dict(), path)
    return path


def _clear_vs_haze_accuracy(guide, seed=5):
    """Zero-shot accuracy of 'a clear photo' vs 'a photo with heavy haze' on fresh pairs (not trained on)."""
    from harness.guide.pairs import CAPTION_CLASSES, make_pairs

    data = make_pairs(64, guide.image_size, seed)
    images, labels = data.images, data.labels
    names = [c for c, _ in CAPTION_CLASSES]
    keep = (labels == names.index("clear")) | (labels == names.index("heavy"))
    with torch.no_grad():
        e = guide.encode_image(images[keep])
        t = guide.encode_text(["a clear photo", "a photo with heavy haze"])
    said_clear = (e @ t[0]) > (e @ t[1])
    return float((said_clear == (labels[keep] == names.index("clear"))).float().mean())


@pytest.mark.slow
def test_tune_writes_weights_usable_as_guide_pretrained(tmp_path, random_clip_file, one_thread):
    from harness.guide import build_guide
    from harness.guide.model import TINY_MODEL

    out = tmp_path / "tuned.safetensors"
    proc = _cli("guide", "tune", "--model", TINY_MODEL, "--pretrained", str(random_clip_file), "--out", str(out),
                "--steps", "80", "--lr", "1e-3", "--batch-size", "32", "--pool", "256", cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["tuned_from"] == str(random_clip_file) and meta["steps"] == 80
    before = build_guide("open_clip", model=TINY_MODEL, pretrained=str(random_clip_file))
    after = build_guide("open_clip", model=TINY_MODEL, pretrained=str(out))
    assert after.info["sha256"] == meta["sha256"]
    assert _clear_vs_haze_accuracy(after) >= 0.8 > _clear_vs_haze_accuracy(before) + 0.1
    assert not list(tmp_path.glob(".*state*"))  # the resumable state is removed once the file is written


def test_tune_refuses_bad_input(tmp_path, random_clip_file):
    from harness.guide.model import TINY_MODEL
    from harness.guide.tune import tune_open_clip

    with pytest.raises(HarnessError, match="not found"):
        tune_open_clip(TINY_MODEL, tmp_path / "missing.pt", tmp_path / "out.pt")
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"precious")
    with pytest.raises(HarnessError, match="already exists"):
        tune_open_clip(TINY_MODEL, random_clip_file, existing)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(HarnessError, match="unknown open_clip model"):
        tune_open_clip("no-such-model", random_clip_file, tmp_path / "out.pt")


@pytest.fixture(scope="module")
def quickstart_probe(one_thread):
    """The probe of the quickstart's recipe (trains the default guide once, minutes, unless cached)."""
    from harness.guide.probe import probe_recipe
    from harness.validate import load_recipe

    return probe_recipe(load_recipe("recipes/quickstart.yaml", []), steps=50, lr=0.01)


@pytest.mark.slow
def test_default_embedded_guide_points_towards_the_ground_truth_at_the_input(quickstart_probe):
    """Measurement: at the hazy input the default guide's H2C gradient leads towards the ground truth
    (the old default's first step: cos +0.04, docs/guide.md), and the ground truth scores clearer
    than the input and than a contrast stretch."""
    h2c = quickstart_probe.h2c
    assert quickstart_probe.descent["gradient_alignment"] > 0.3
    assert h2c["ground truth"] < h2c["input"] and h2c["contrast stretch"] > h2c["ground truth"]


@pytest.mark.slow
def test_default_embedded_guide_descent_raises_psnr_and_keeps_structure_on_the_quickstart_test_set(quickstart_probe):
    """Measurement (docs/guide.md): 50 steps of pixel-space descent on the default guide's H2C, with
    its gradient filtered (``gradient_blur: 3, gradient_global_chroma``), take the hazy test images
    14.64 -> 15.39 dB with SSIM 0.6889 -> 0.6887. The guide's plain gradient paints colour speckle:
    14.76 dB, SSIM 0.579, which fails here."""
    assert quickstart_probe.psnr_gain > 0.5 and quickstart_probe.ssim_gain > -0.005, quickstart_probe.descent


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known (docs/guide.md): the default guide's 50-step descent keeps SSIM "
                                       "(0.6889 -> 0.6887) but does not raise it")
def test_default_embedded_guide_descent_raises_ssim_too_on_the_quickstart_test_set(quickstart_probe):
    """Measurement: descent should also raise SSIM, by more than float noise (0.002). Strict: the day
    a guide does, this test says so."""
    assert quickstart_probe.psnr_gain > 0.3 and quickstart_probe.ssim_gain > 0.002, quickstart_probe.descent


def test_verdict_needs_ssim_as_well_as_psnr():
    """On smooth images under a uniform haze (14.4 dB, SSIM 0.77, measured once when writing this test),
    the ground truth plus noise of std 0.1 scores 20.1 dB but SSIM 0.50: a descent that heads there
    raises PSNR and lowers SSIM, and the probe must not call that leading. The PSNR/SSIM bounds below
    only check that the setup is such a case; the test is of the verdict."""
    g = torch.Generator().manual_seed(0)
    clear = F.interpolate(torch.rand(3, 3, 6, 6, generator=g), size=(48, 48), mode="bilinear", align_corners=False)
    hazy = 0.5 * clear + 0.4
    noisy = (clear + 0.1 * torch.randn(clear.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    speckled = probe(ToTarget(noisy), hazy, clear, steps=60, lr=0.02)
    assert speckled.psnr_gain > 3 and speckled.ssim_gain < -0.1
    assert speckled.verdict().startswith("is fooled in structure")
    assert probe(ToTarget(clear), hazy, clear, steps=60, lr=0.02).verdict() == "leads towards the ground truth"
    cast = edit("colour cast", hazy, clear)
    assert probe(ToTarget(cast), hazy, clear, steps=60, lr=0.02).verdict() == "is fooled (PSNR falls)"


def test_the_probe_keeps_the_descent_at_a_few_steps_and_grids_them(tmp_path):
    """The grid's columns are the start, the descent after steps // 5, steps // 2 and all steps, and
    the ground truth; the kept images are the descent's own (the last is its output, and a loss
    pulling to the truth gets closer at each kept step), and the trajectory scores them."""
    from PIL import Image

    from harness.guide.probe import save_grid

    hazy, clear = pairs(n=5)
    result = probe(ToTarget(clear), hazy, clear, steps=20, lr=0.005)  # 0.1 RMS in all: short of the truth
    assert [title for title, _, _ in result.panels] == ["input", "4 steps", "10 steps", "20 steps", "ground truth"]
    assert torch.equal(result.panels[0][1], hazy) and torch.equal(result.panels[-1][1], clear)
    psnrs = [t["psnr"] for t in result.descent["trajectory"]]
    assert [t["step"] for t in result.descent["trajectory"]] == [4, 10, 20]
    assert psnrs == sorted(psnrs) and psnrs[-1] == pytest.approx(result.descent["psnr_after"])
    mse_at_4 = F.mse_loss(result.panels[1][1], clear, reduction="none").flatten(1).mean(1)
    assert psnrs[0] == pytest.approx(float((10 * torch.log10(1 / mse_at_4)).mean()), abs=0.01)
    assert "panels" not in result.figures() and json.dumps(result.figures())
    with Image.open(save_grid(result, tmp_path / "grid.png", rows=3)) as im:
        width, height = im.size
    assert width > height  # 5 columns, 3 rows


def test_probe_command_writes_the_grid_and_the_json(tmp_path):
    """End to end on a guide trained for two steps (its figures mean nothing; the files are the test)."""
    grid, figures = tmp_path / "grid.png", tmp_path / "probe.json"
    proc = _cli("guide", "probe", "recipes/quickstart.yaml", "--set", "guide.steps=2", "--set", "guide.pool=32",
                "--set", f"guide.cache_dir={tmp_path}", "--images", "2", "--size", "32", "--steps", "5",
                "--grid", str(grid), "--json", str(figures), cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert grid.stat().st_size > 0 and f"descended images: {grid}" in proc.stdout.replace("\n", "")
    written = json.loads(figures.read_text())
    assert [t["step"] for t in written["descent"]["trajectory"]] == [1, 2, 5] and "panels" not in written
