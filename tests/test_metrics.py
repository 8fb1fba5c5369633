import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyfade
import pytest
import torch
from PIL import Image

from harness.data.io import list_images, read_image, write_image
from harness.errors import HarnessError
from harness.metrics import build_metric
from harness.metrics.biqme import FEATURE_NAMES, N_FEATURES, features
from harness.metrics.evaluate import eval_command, score_arrays, score_images
from harness.registry import METRICS

CALIBRATION = Path(__file__).parent / "fixtures" / "calibration.csv"
FADE_HANDFUL = ["Haze.jpg", "aod_guogong.png", "aod_test13.jpg", "trees.png", "real.jpg"]


def _small(path, side=256):
    """The same reduced input for both sides of a comparison (FADE on full photos is slow)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.BICUBIC)
        return np.asarray(im, np.float32) / 255


def _fade_max_diff(paths, side):
    fade = build_metric("fade")
    diffs = []
    for p in paths:
        a = _small(p, side) if side else read_image(p)
        diffs.append(abs(fade.score(a) - float(pyfade.fade(a))))
    return max(diffs)


def test_fade_equals_pyfade_on_a_handful_of_real_photos(shared_data):
    assert _fade_max_diff([shared_data / "real_hazy" / n for n in FADE_HANDFUL], 256) <= 1e-6


@pytest.mark.slow
def test_fade_equals_pyfade_on_every_real_photo_at_full_size(shared_data):
    paths = list_images(shared_data / "real_hazy")
    assert len(paths) == 42
    diff = _fade_max_diff(paths, None)
    print(f"FADE max |diff| vs pyfade over 42 full-size photos: {diff:.3g}")
    assert diff <= 1e-6


def test_fade_ranks_haze(shared_data):
    clear = read_image(shared_data / "clean_kodak24" / "kodim05.png")[:256, :256]
    fade = build_metric("fade")
    assert fade.score(0.4 * clear + 0.6) > 2 * fade.score(clear)


def _tensor(a):
    return torch.from_numpy(a.transpose(2, 0, 1).copy())[None]


def test_entropy_psnr_ssim_equal_pyiqa_on_the_same_inputs(shared_data):
    import pyiqa

    clear = _small(shared_data / "clean_kodak24" / "kodim07.png", 160)
    hazy = _small(shared_data / "real_hazy" / "Haze.jpg", 160)
    assert float(pyiqa.create_metric("entropy", device="cpu")(_tensor(hazy))) == pytest.approx(
        build_metric("entropy").score(hazy), abs=1e-5)
    distorted = np.clip(clear * 0.7 + 0.25 + np.random.default_rng(0).normal(0, 0.02, clear.shape), 0, 1)
    distorted = distorted.astype(np.float32)
    for ours, theirs in [({}, "psnr"), ({"y_channel": True}, "psnry"), ({}, "ssimc"), ({"y_channel": True}, "ssim")]:
        name = "psnr" if theirs.startswith("psnr") else "ssim"
        expected = float(pyiqa.create_metric(theirs, device="cpu")(_tensor(distorted), _tensor(clear)))
        assert build_metric(name, **ours).score(distorted, clear) == pytest.approx(expected, abs=1e-6)
    assert build_metric("psnr").score(clear, clear) > 70


def test_calibration_csv_of_reference_library_scores(shared_data):
    rows = list(csv.DictReader(CALIBRATION.open()))
    assert {r["metric"] for r in rows} == {"fade", "entropy", "psnr", "ssim", "psnr_y", "ssim_y"}
    metrics = {"fade": build_metric("fade"), "entropy": build_metric("entropy"), "psnr": build_metric("psnr"),
               "ssim": build_metric("ssim"), "psnr_y": build_metric("psnr", y_channel=True),
               "ssim_y": build_metric("ssim", y_channel=True)}
    for r in rows:
        image = read_image(shared_data / r["image"])
        metric = metrics[r["metric"]]
        if metric.spec.needs_reference:
            got = metric.score(image * 0.8 + 0.2, image)
        else:
            got = metric.score(image)
        assert got == pytest.approx(float(r["expected"]), abs=float(r["tolerance"])), r


def test_musiq_from_a_saved_random_network_matches_pyiqa(tmp_path, monkeypatch, shared_data):
    import pyiqa
    from pyiqa.archs.musiq_arch import MUSIQ

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(HarnessError) as err:
        build_metric("musiq")
    message = str(err.value)
    assert "metrics.musiq.weights" in message and str(tmp_path / "torch" / "hub" / "pyiqa") in message
    with pytest.raises(HarnessError, match="metrics.musiq.weights"):
        build_metric("musiq", weights=tmp_path / "absent.pth")

    torch.manual_seed(0)
    weights = tmp_path / "musiq_random.pth"
    torch.save(MUSIQ(pretrained=False).state_dict(), weights)
    image = _small(shared_data / "real_hazy" / "real.jpg", 96)
    got = build_metric("musiq", weights=weights).score(image)
    expected = float(pyiqa.create_metric("musiq", device="cpu", pretrained_model_path=str(weights))(_tensor(image)))
    assert np.isfinite(got) and got == pytest.approx(expected, abs=1e-5)
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


def test_every_metric_declares_its_direction():
    assert {"fade", "entropy", "psnr", "ssim", "musiq", "biqme"} <= set(METRICS.names())
    assert build_metric("fade").spec.lower_better and not build_metric("entropy").spec.lower_better
    assert build_metric("psnr").spec.needs_reference and not build_metric("fade").spec.needs_reference


@pytest.fixture
def small_folder(tmp_path, shared_data):
    hazy, clear = tmp_path / "out", tmp_path / "gt"
    for i, n in enumerate(["Haze.jpg", "real.jpg", "fishers.jpg"]):
        a = _small(shared_data / "real_hazy" / n, 96)[:64, :64]
        write_image(clear / f"{i}.png", a)
        write_image(hazy / f"{i}.png", a * 0.7 + 0.3)
    return hazy, clear


def test_score_images_workers_and_shards_agree(small_folder):
    hazy, clear = small_folder
    jobs = [(p.name, p, clear / p.name) for p in list_images(hazy)]
    metrics = {"entropy": build_metric("entropy"), "psnr": build_metric("psnr")}
    one = score_images(jobs, metrics, workers=1, progress=False)
    assert list(one.columns) == ["image", "entropy", "psnr"] and list(one.image) == ["0.png", "1.png", "2.png"]
    assert one.psnr.between(5, 40).all()
    two = score_images(jobs, metrics, workers=2, progress=False)
    pd.testing.assert_frame_equal(one, two)
    parts = [score_images(jobs, metrics, shard=(r, 2), progress=False) for r in range(2)]
    gathered = pd.concat(parts).sort_values("image").reset_index(drop=True)
    pd.testing.assert_frame_equal(gathered, one)
    arrays = score_arrays([(n, read_image(p), read_image(c)) for n, p, c in jobs], metrics)
    pd.testing.assert_frame_equal(arrays, one)
    with pytest.raises(HarnessError, match="needs a reference"):
        score_images([hazy / "0.png"], metrics, progress=False)


def test_eval_command_writes_csv_and_checks_its_inputs(small_folder, tmp_path, capsys):
    hazy, clear = small_folder
    eval_command(hazy, metrics="entropy,psnr", reference=clear, out=tmp_path / "s.csv", workers=1)
    table = pd.read_csv(tmp_path / "s.csv")
    assert list(table.columns) == ["image", "entropy", "psnr"] and len(table) == 3
    assert "psnr" in capsys.readouterr().out
    with pytest.raises(HarnessError, match="need ground truth"):
        eval_command(hazy, metrics="psnr", reference=None, out=None, workers=1)
    with pytest.raises(HarnessError, match="unknown metric 'nope'"):
        eval_command(hazy, metrics="nope", reference=None, out=None, workers=1)
    (clear / "2.png").unlink()
    with pytest.raises(HarnessError, match="no reference .* 2.png"):
        eval_command(hazy, metrics="psnr", reference=clear, out=None, workers=1)


def test_eval_names_a_corrupt_file_and_skips_it_only_when_asked(small_folder, tmp_path, capsys):
    hazy, _ = small_folder
    (hazy / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing
    with pytest.raises(HarnessError, match=r"cannot decode image .*9\.png"):
        eval_command(hazy, metrics="entropy", reference=None, out=tmp_path / "a.csv", workers=1)
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.csv"
        eval_command(hazy, metrics="entropy", reference=None, out=out, workers=workers, skip_corrupt=True)
        assert list(pd.read_csv(out).image) == ["0.png", "1.png", "2.png"]
        assert "skipped: cannot decode image" in capsys.readouterr().err
