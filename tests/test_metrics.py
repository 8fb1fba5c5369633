"""Metrics against values computed independently: by hand on tiny arrays (PSNR, SSIM, entropy,
colourfulness), against another implementation (FADE against pyfade, CIELAB against scikit-image),
or by what our wrapper itself adds (MUSIQ: which file is loaded, batching)."""

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.data.io import list_images, read_image, write_image
from harness.errors import HarnessError
from harness.metrics import build_metric
from harness.metrics.biqme import FEATURE_NAMES, N_FEATURES, features
from harness.metrics.evaluate import eval_command, score_images
from harness.registry import METRICS

CALIBRATION = Path(__file__).parent / "fixtures" / "calibration.csv"


def _small(path, side=256):
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.BICUBIC)
        return np.asarray(im, np.float32) / 255


def _batch(*arrays):
    return torch.stack([torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in arrays])


# ------------------------------------------------------------ PSNR, SSIM, entropy by hand

def test_psnr_by_hand_on_a_2x2_image():
    clear = np.zeros((2, 2, 3), np.float32)
    out = clear.copy()
    out[0, 0] = [0.1, 0.2, 0.3]  # squared errors 0.01 + 0.04 + 0.09 over 12 values
    mse = (0.01 + 0.04 + 0.09) / 12
    assert build_metric("psnr").score(out, clear) == pytest.approx(10 * np.log10(1 / mse), abs=1e-4)
    grey = np.full((2, 2, 3), 0.5, np.float32)
    brighter = grey + np.float32(0.1)  # every luma value moves by 0.1 (0.299 + 0.587 + 0.114 = 1)
    assert build_metric("psnr", y_channel=True).score(brighter, grey) == pytest.approx(20.0, abs=1e-4)


def _gaussian_window(size=11, sigma=1.5):
    x = np.arange(size) - size // 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_by_hand(a, b):
    """SSIM of two 8-bit-valued planes (0..255) over every valid 11x11 window, loops and sums only."""
    w = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for y in range(a.shape[0] - 10):
        for x in range(a.shape[1] - 10):
            pa, pb = a[y:y + 11, x:x + 11], b[y:y + 11, x:x + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * pa * pa).sum() - ma ** 2, (w * pb * pb).sum() - mb ** 2
            cov = (w * pa * pb).sum() - ma * mb
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.fixture
def tiny_pair():
    rng = np.random.default_rng(3)
    clear = rng.random((12, 13, 3)).astype(np.float32)  # 2 x 3 valid 11x11 windows
    return clear, np.clip(0.7 * clear + 0.2 + rng.normal(0, 0.05, clear.shape), 0, 1).astype(np.float32)


def test_ssim_by_hand_rgb_and_luma(tiny_pair):
    clear, out = tiny_pair
    rgb = np.mean([_ssim_by_hand(np.round(out[..., c] * 255).astype(np.float64),
                                 np.round(clear[..., c] * 255).astype(np.float64)) for c in range(3)])
    assert build_metric("ssim").score(out, clear) == pytest.approx(rgb, abs=1e-6)

    def luma(a):
        return np.round((a.astype(np.float64) @ [0.299, 0.587, 0.114]) * 255)

    assert build_metric("ssim", y_channel=True).score(out, clear) == pytest.approx(
        _ssim_by_hand(luma(out), luma(clear)), abs=1e-5)


def test_entropy_by_hand():
    entropy = build_metric("entropy")
    grey = np.zeros((2, 4, 3), np.float32)
    assert entropy.score(grey) == 0.0
    grey[0] = 1.0  # half the pixels at level 255: one bit
    assert entropy.score(grey) == pytest.approx(1.0, abs=1e-12)
    levels = np.array([[0, 64, 128, 255], [0, 64, 128, 255]], np.float32) / 255
    four = np.repeat(levels[..., None], 3, axis=2)  # four levels, two pixels each: two bits
    assert entropy.score(four) == pytest.approx(2.0, abs=1e-12)
    mixed = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]], np.float32)
    # luma 76.245 -> 76, 149.685 -> 150, 29.07 -> 29, 0: four distinct levels of one pixel each
    assert entropy.score(mixed) == pytest.approx(2.0, abs=1e-12)
    batch = entropy.score_batch(_batch(four, np.concatenate([mixed, mixed]), grey))
    assert batch.tolist() == pytest.approx([2.0, 2.0, 1.0], abs=1e-12)


# ------------------------------------------------------------ FADE against pyfade

FADE_HANDFUL = ["Haze.jpg", "aod_guogong.png", "aod_test13.jpg", "trees.png", "real.jpg"]
# float64 like the reference, with its summation order where a tie is decided by rounding: measured
# on 138 photos (real_hazy, Kodak, hazed Kodak) the largest difference is ~4e-15 (benchmarks/fade_throughput.py)
FADE_TOLERANCE = 1e-9


def _pyfade(a, **kw):
    import pyfade

    return pyfade.fade(np.asarray(a, np.float32), **kw)


def test_torch_fade_equals_pyfade_on_a_handful_of_real_photos(shared_data):
    torch_fade = build_metric("fade")
    for name in FADE_HANDFUL:
        a = _small(shared_data / "real_hazy" / name, 256)
        assert torch_fade.score(a) == pytest.approx(_pyfade(a), rel=FADE_TOLERANCE, abs=FADE_TOLERANCE), name


def test_torch_fade_density_map_batches_and_strips_equal_pyfade(shared_data):
    from harness.metrics.fade_torch import fade_maps

    a = _small(shared_data / "real_hazy" / "Haze.jpg", 200)[:136, :200]
    b = _small(shared_data / "clean_kodak24" / "kodim05.png", 200)[:136, :200]
    ref = [_pyfade(x, return_map=True) for x in (a, b)]
    whole_scores, whole_maps = fade_maps(_batch(a, b))
    for strip_pixels in (2 * 8 * 200, 3 * 8 * 200, 10_000):  # several strips, one patch row each, odd sizes
        scores, maps = fade_maps(_batch(a, b), strip_pixels=strip_pixels)
        assert torch.equal(scores.isnan(), whole_scores.isnan())
        torch.testing.assert_close(scores, whole_scores, rtol=0, atol=1e-12)
        torch.testing.assert_close(maps, whole_maps, rtol=0, atol=1e-12, equal_nan=True)
    for i, (score, density) in enumerate(ref):
        assert float(whole_scores[i]) == pytest.approx(score, abs=FADE_TOLERANCE)
        np.testing.assert_allclose(whole_maps[i].numpy(), density, rtol=0, atol=FADE_TOLERANCE)
    uint8 = torch.from_numpy(np.round(a * 255).astype(np.uint8).transpose(2, 0, 1).copy())[None]
    assert float(fade_maps(uint8)[0][0]) == pytest.approx(ref[0][0], abs=FADE_TOLERANCE)


def test_fade_flat_image_and_sizes_as_the_reference(shared_data):
    flat = np.full((40, 48, 3), 0.5, np.float32)  # every window of one grey level: MATLAB's table
    got, expected = build_metric("fade").score(flat), _pyfade(flat)
    assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, abs=FADE_TOLERANCE)
    ragged = _small(shared_data / "real_hazy" / "real.jpg", 100)[:61, :75]  # cropped to 56 x 72 by both
    assert build_metric("fade").score(ragged) == pytest.approx(_pyfade(ragged), abs=FADE_TOLERANCE)
    for impl in ("torch", "pyfade"):
        with pytest.raises(HarnessError, match="smaller than FADE's 16x16"):
            build_metric("fade", impl=impl).score(flat[:15])


def test_fade_impl_pyfade_is_the_reference_and_runs_on_the_cpu(shared_data):
    metric = build_metric("fade", impl="pyfade")
    assert not metric.spec.on_device and build_metric("fade").spec.on_device
    a = _small(shared_data / "real_hazy" / "fishers.jpg", 128)
    # the wrapper against the independent torch implementation (not against the library it wraps)
    assert metric.score(a) == pytest.approx(build_metric("fade").score(a), rel=FADE_TOLERANCE, abs=FADE_TOLERANCE)
    with pytest.raises(HarnessError, match="model_dir .* does not exist"):
        build_metric("fade", model_dir=Path("/no/such/folder"))


def test_fade_ranks_haze(shared_data):
    clear = read_image(shared_data / "clean_kodak24" / "kodim05.png")[:256, :256]
    fade = build_metric("fade")
    assert fade.score(0.4 * clear + 0.6) > 2 * fade.score(clear)


@pytest.mark.slow
def test_torch_fade_equals_pyfade_on_every_shared_photo_at_full_size(shared_data):
    from harness.data import synth

    torch_fade = build_metric("fade")
    paths = list_images(shared_data / "real_hazy") + list_images(shared_data / "clean_kodak24")
    images = [read_image(p) for p in paths]
    rng = np.random.default_rng(0)
    images += [synth.synthesize(read_image(p), "ridcp", rng) for p in list_images(shared_data / "clean_kodak24")[:6]]
    worst = max(abs(torch_fade.score(a) - _pyfade(a)) for a in images)
    print(f"torch FADE max |diff| vs pyfade over {len(images)} full-size photos: {worst:.3g}")
    assert worst <= FADE_TOLERANCE


# ------------------------------------------------------------ sanity metrics

def test_lab_shift_against_scikit_image_and_by_hand(shared_data):
    from skimage.color import rgb2lab

    lab_shift = build_metric("lab_shift")
    a = _small(shared_data / "real_hazy" / "Haze.jpg", 64)
    b = np.clip(a * [1.1, 0.9, 0.8], 0, 1).astype(np.float32)  # a warm cast
    expected = np.linalg.norm(rgb2lab(b)[..., 1:].mean((0, 1)) - rgb2lab(a)[..., 1:].mean((0, 1)))
    assert lab_shift.score(b, input_image=a) == pytest.approx(expected, rel=1e-3)
    grey, white = np.full((4, 4, 3), 0.3, np.float32), np.ones((4, 4, 3), np.float32)
    assert lab_shift.score(white, input_image=grey) == pytest.approx(0.0, abs=1e-3)  # both neutral
    red = np.zeros((4, 4, 3), np.float32)
    red[..., 0] = 1
    # sRGB red is L*a*b* (53.24, 80.09, 67.20) (D65): its (a*, b*) is 104.5 from neutral
    assert lab_shift.score(red, input_image=grey) == pytest.approx(np.hypot(80.09, 67.20), abs=0.05)
    with pytest.raises(HarnessError, match="needs the input image"):
        lab_shift.score(red)


def test_colourfulness_delta_by_hand():
    delta = build_metric("colourfulness_delta")
    grey = np.full((1, 2, 3), 0.5, np.float32)
    two = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], np.float32)
    # rg = (255, 0), yb = (127.5, 0): sd 127.5 and 63.75, means 127.5 and 63.75
    expected = np.sqrt(127.5 ** 2 + 63.75 ** 2) + 0.3 * np.sqrt(127.5 ** 2 + 63.75 ** 2)
    assert delta.score(two, input_image=grey) == pytest.approx(expected, rel=1e-9)
    assert delta.score(grey, input_image=two) == pytest.approx(-expected, rel=1e-9)


def test_luma_ssim_input_by_hand(tiny_pair):
    source, out = tiny_pair

    def luma(a):  # BT.601 Y of YCbCr (16..235), rounded to 8 bits
        return np.round(16 + a.astype(np.float64) @ [65.481, 128.553, 24.966])

    metric = build_metric("luma_ssim_input")
    assert metric.score(out, input_image=source) == pytest.approx(_ssim_by_hand(luma(out), luma(source)), abs=1e-5)
    assert metric.score(source, input_image=source) == pytest.approx(1.0, abs=1e-12)


def test_clipped_delta_by_hand():
    """A pixel counts as clipped when its 8-bit YIQ luma (0.299 R + 0.587 G + 0.114 B, times 255,
    rounded half to even) is 0 or 255; the metric is the output's share minus the input's, in %."""
    grey = np.full((4, 4, 3), 0.5, np.float32)
    out = grey.copy()
    out[0, 0] = 0.0                    # luma 0: clipped
    out[0, 1] = 0.5 / 255              # luma 0.5 rounds to 0 (half to even): clipped
    out[0, 2] = 1.6 / 255              # luma 1.6 rounds to 2: kept
    out[0, 3] = 1.0                    # luma 255: clipped
    out[1, 0] = [1.0, 0.0, 0.0]        # pure red, luma 76: one channel saturated is not clipped detail
    out[1, 1] = [254.6 / 255] * 3      # luma 254.6 rounds to 255: clipped
    source = grey.copy()
    source[3, 3] = 0.0                 # the input's own black pixel
    metric = build_metric("clipped_delta")
    assert metric.score(out, input_image=source) == pytest.approx(100 * (4 / 16 - 1 / 16), abs=1e-12)
    assert metric.score(source, input_image=out) == pytest.approx(-18.75, abs=1e-12)
    assert metric.score(out, input_image=out) == 0.0


# ------------------------------------------------------------ MUSIQ, BIQME

def test_musiq_loads_the_given_file_and_batches(tmp_path, monkeypatch, shared_data):
    """No MUSIQ weights or published scores are reachable offline: test what the wrapper adds."""
    from pyiqa.archs.musiq_arch import MUSIQ

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(HarnessError) as err:
        build_metric("musiq")
    message = str(err.value)
    assert "metrics.musiq.weights" in message and str(tmp_path / "torch" / "hub" / "pyiqa") in message
    with pytest.raises(HarnessError, match="metrics.musiq.weights"):
        build_metric("musiq", weights=tmp_path / "absent.pth")
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(tmp_path / f"musiq_{seed}.pth")
        torch.save(MUSIQ(pretrained=False).state_dict(), files[-1])
    a, b = (_small(shared_data / "real_hazy" / n, 96)[:56, :96] for n in ("real.jpg", "Haze.jpg"))
    first, second = (build_metric("musiq", weights=f) for f in files)
    singles = [first.score(a), first.score(b)]
    assert np.isfinite(singles).all()
    assert second.score(a) != pytest.approx(singles[0], abs=1e-4)  # the file given is the one used
    assert first.score_batch(_batch(a, b)).tolist() == pytest.approx(singles, abs=1e-4)
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(HarnessError, match="cannot load weights"):
        build_metric("musiq", weights=tmp_path / "junk.pth")


def test_biqme_is_not_available_without_a_model_and_applies_a_supplied_one(tmp_path, shared_data):
    with pytest.raises(HarnessError, match="biqme: regression model not available .*metrics.biqme.model"):
        build_metric("biqme")
    clear = read_image(shared_data / "clean_kodak24" / "kodim05.png")[:128, :128]
    f = features(clear)
    assert f.shape == (N_FEATURES,) == (len(FEATURE_NAMES),) and np.all(np.isfinite(f))
    weights = np.linspace(-1, 1, N_FEATURES)
    model = {"kind": "linear", "feature_mean": f.tolist(), "feature_scale": [2.0] * N_FEATURES,
             "weights": weights.tolist(), "bias": 3.0}
    (tmp_path / "biqme.json").write_text(json.dumps(model))
    metric = build_metric("biqme", model=tmp_path / "biqme.json")
    assert metric.score(clear) == pytest.approx(3.0)
    hazy = clear * 0.5 + 0.5
    assert metric.score(hazy) == pytest.approx(((features(hazy) - f) / 2) @ weights + 3.0)
    svr = {"kind": "svr_rbf", "feature_mean": f.tolist(), "feature_scale": [1.0] * N_FEATURES,
           "support_vectors": [[0.0] * N_FEATURES], "dual_coef": [2.0], "gamma": 0.1, "intercept": 1.0}
    (tmp_path / "svr.json").write_text(json.dumps(svr))
    assert build_metric("biqme", model=tmp_path / "svr.json").score(clear) == pytest.approx(3.0)
    (tmp_path / "bad.json").write_text(json.dumps({**model, "weights": [1.0]}))
    with pytest.raises(HarnessError, match="does not have 17 features"):
        build_metric("biqme", model=tmp_path / "bad.json")


def test_biqme_features_respond_to_haze(shared_data):
    clear = read_image(shared_data / "clean_kodak24" / "kodim05.png")[:128, :128]
    f_clear, f_hazy = features(clear), features(clear * 0.4 + 0.55)
    idx = {n: i for i, n in enumerate(FEATURE_NAMES)}
    for name in ("entropy", "ce_gray", "sharp_1", "colourfulness", "mscn_std"):
        assert f_hazy[idx[name]] < f_clear[idx[name]], name
    assert f_hazy[idx["dark_channel"]] > f_clear[idx["dark_channel"]]
    flat = features(np.full((32, 32, 3), 0.5, np.float32))
    assert flat[idx["entropy"]] == 0 and flat[idx["colourfulness"]] == 0


# ------------------------------------------------------------ the registry, the calibration snapshot

def test_every_metric_declares_its_direction_and_inputs():
    """Snapshot of the declarations the report reads (arrows, ranking, sanity columns): a change to
    one must be deliberate."""
    assert {"fade", "entropy", "psnr", "ssim", "musiq", "biqme", "lab_shift", "colourfulness_delta",
            "luma_ssim_input", "clipped_delta"} <= set(METRICS.names())
    assert build_metric("fade").spec.lower_better and not build_metric("entropy").spec.lower_better
    assert build_metric("psnr").spec.needs_reference and not build_metric("fade").spec.needs_reference
    assert build_metric("lab_shift").spec.lower_better and not build_metric("luma_ssim_input").spec.lower_better
    assert build_metric("clipped_delta").spec.lower_better
    for name in ("lab_shift", "colourfulness_delta", "luma_ssim_input", "clipped_delta"):
        spec = build_metric(name).spec
        assert spec.needs_input and spec.on_device and not spec.needs_reference


def test_calibration_csv_is_a_version_regression_guard(shared_data):
    """Snapshot: scores written once by pyfade and pyiqa (tests/fixtures/make_calibration.py). It proves
    no correctness; it fails when a library upgrade or our code changes what these photos score."""
    rows = list(csv.DictReader(CALIBRATION.open()))
    assert {r["metric"] for r in rows} == {"fade", "entropy", "psnr", "ssim", "psnr_y", "ssim_y"}
    metrics = {"fade": build_metric("fade"), "entropy": build_metric("entropy"), "psnr": build_metric("psnr"),
               "ssim": build_metric("ssim"), "psnr_y": build_metric("psnr", y_channel=True),
               "ssim_y": build_metric("ssim", y_channel=True)}
    for r in rows:
        image = read_image(shared_data / r["image"])
        metric = metrics[r["metric"]]
        got = metric.score(image * 0.8 + 0.2, image) if metric.spec.needs_reference else metric.score(image)
        assert got == pytest.approx(float(r["expected"]), abs=float(r["tolerance"])), r


# ------------------------------------------------------------ harness eval

@pytest.fixture
def small_folder(tmp_path, shared_data):
    hazy, clear = tmp_path / "out", tmp_path / "gt"
    for i, n in enumerate(["Haze.jpg", "real.jpg", "fishers.jpg"]):
        a = _small(shared_data / "real_hazy" / n, 96)[:64, :64]
        write_image(clear / f"{i}.png", a)
        write_image(hazy / f"{i}.png", a * 0.7 + 0.3)
    return hazy, clear


def _folder_metrics():
    return {"entropy": build_metric("entropy"), "psnr": build_metric("psnr"),
            "fade_ref": build_metric("fade", impl="pyfade")}


def test_score_images_shards_and_batches_agree(small_folder):
    hazy, clear = small_folder
    jobs = [(p.name, p, clear / p.name) for p in list_images(hazy)]
    metrics = _folder_metrics()
    one = score_images(jobs, metrics, workers=1, progress=False, batch_size=1)
    assert list(one.columns) == ["image", "entropy", "psnr", "fade_ref"]
    assert list(one.image) == ["0.png", "1.png", "2.png"] and one.psnr.between(5, 40).all()
    batched = score_images(jobs, metrics, progress=False, batch_size=8, decode_workers=1)
    pd.testing.assert_frame_equal(one, batched)
    parts = [score_images(jobs, metrics, shard=(r, 2), progress=False) for r in range(2)]
    pd.testing.assert_frame_equal(pd.concat(parts).sort_index(), one)
    with pytest.raises(HarnessError, match="needs a reference"):
        score_images([hazy / "0.png"], metrics, progress=False)


@pytest.mark.slow
def test_score_images_cpu_metric_workers_agree(small_folder):
    hazy, clear = small_folder
    jobs = [(p.name, p, clear / p.name) for p in list_images(hazy)]
    metrics = _folder_metrics()
    one = score_images(jobs, metrics, workers=1, progress=False)
    pd.testing.assert_frame_equal(one, score_images(jobs, metrics, workers=2, progress=False))  # pyfade in 2 processes


def test_eval_command_writes_csv_and_checks_its_inputs(small_folder, tmp_path, capsys, monkeypatch):
    hazy, clear = small_folder
    eval_command(hazy, metrics="entropy,psnr", reference=clear, out=tmp_path / "s.csv", workers=1)
    table = pd.read_csv(tmp_path / "s.csv")
    assert list(table.columns) == ["image", "entropy", "psnr"] and len(table) == 3
    assert "psnr" in capsys.readouterr().out
    with pytest.raises(HarnessError, match="need ground truth"):
        eval_command(hazy, metrics="psnr")
    with pytest.raises(HarnessError, match="unknown metric 'nope'"):
        eval_command(hazy, metrics="nope")
    with pytest.raises(HarnessError, match="compare a restoration with its input"):
        eval_command(hazy, metrics="lab_shift")
    with pytest.raises(HarnessError, match=r"--out .* is a folder -- fix: give a file path"):
        eval_command(hazy, metrics="entropy", out=tmp_path)
    (clear / "2.png").unlink()
    with pytest.raises(HarnessError, match="no reference .* 2.png"):
        eval_command(hazy, metrics="psnr", reference=clear)


def test_eval_without_out_never_writes_into_the_scored_folder(small_folder, tmp_path, capsys, monkeypatch):
    hazy, _ = small_folder
    before = sorted(p.name for p in hazy.iterdir())
    monkeypatch.chdir(hazy)  # the current folder is the scored one: nothing is written
    eval_command(hazy, metrics="entropy")
    assert "per-image scores not written" in capsys.readouterr().out
    assert sorted(p.name for p in hazy.iterdir()) == before
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    eval_command(hazy, metrics="entropy")
    assert f"per-image scores: {elsewhere / 'out_scores.csv'}" in capsys.readouterr().out
    assert len(pd.read_csv(elsewhere / "out_scores.csv")) == 3
    eval_command(hazy, metrics="entropy")  # never over an existing file
    assert "exists" in capsys.readouterr().out
    assert sorted(p.name for p in hazy.iterdir()) == before


def test_eval_names_a_corrupt_file_and_skips_it_only_when_asked(small_folder, tmp_path, capsys):
    hazy, _ = small_folder
    (hazy / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing
    with pytest.raises(HarnessError, match=r"cannot decode image .*9\.png"):
        eval_command(hazy, metrics="entropy", out=tmp_path / "a.csv")
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.csv"
        eval_command(hazy, metrics="entropy,fade", out=out, workers=workers, skip_corrupt=True)
        assert list(pd.read_csv(out).image) == ["0.png", "1.png", "2.png"]
        assert "skipped: cannot decode image" in capsys.readouterr().err


def test_reports_know_every_sanity_metric_scoring_adds():
    """The report spells the sanity set without importing torch; the two spellings must agree."""
    from harness.metrics.sanity import SANITY_METRICS
    from harness.report.frame import METRICS as DISPLAY
    from harness.report.frame import SANITY

    assert SANITY == SANITY_METRICS and set(SANITY) <= set(DISPLAY)
