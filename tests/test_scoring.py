"""The scoring pipeline: batching, buckets, tiles, CPU workers, samples and sanity metrics change
nothing but speed; each result is checked against the same model and metrics applied one image at
a time, outside the pipeline."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from harness.data.datasets import ImagePair, ImageSet
from harness.data.io import read_image, shrink, to_array, to_tensor, write_image
from harness.dehaze import restore_tiled
from harness.errors import HarnessError
from harness.metrics import build_metric
from harness.metrics.sanity import sanity_metrics
from harness.metrics.scoring import score_model

SIZES = [(40, 56), (48, 64), (40, 56), (48, 64), (40, 56), (64, 48), (40, 56)]  # mixed sizes, mixed order


class Blur(nn.Module):
    """A fixed 3x3 smoothing that brightens: deterministic, size-preserving, easy to run by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate", groups=3, bias=True)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.fill_(0.05)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def bench(tmp_path):
    rng = np.random.default_rng(0)
    hazy, clear = tmp_path / "hazy", tmp_path / "clear"
    pairs = []
    for i, (h, w) in enumerate(SIZES):
        gt = rng.random((h, w, 3)).astype(np.float32) * 0.6 + 0.2
        write_image(clear / f"{i}.png", gt)
        write_image(hazy / f"{i}.png", gt * 0.6 + 0.35)
        pairs.append(ImagePair(f"{i}.png", hazy / f"{i}.png", clear / f"{i}.png"))
    return ImageSet("synthetic", hazy, pairs)


def _by_hand(model, image_set, metrics, max_side=None):
    """Each image restored alone and scored alone with ``Metric.score`` on numpy arrays."""
    rows = []
    for pair in image_set.pairs:
        hazy = shrink(to_tensor(read_image(pair.hazy)), max_side)
        clear = to_array(shrink(to_tensor(read_image(pair.clear)), max_side))
        with torch.no_grad():
            out = to_array(model(hazy[None]))
        source = to_array(hazy)
        rows.append({"image": pair.name, **{
            n: m.score(out, clear if m.spec.needs_reference else None, source if m.spec.needs_input else None)
            for n, m in metrics.items()}})
    return pd.DataFrame(rows)


def _metrics():
    return {"entropy": build_metric("entropy"), "psnr": build_metric("psnr"), "fade": build_metric("fade")}


def _check_against_one_at_a_time(bench, tmp_path, option_sets):
    model = Blur().eval()
    metrics = {**_metrics(), "fade_ref": build_metric("fade", impl="pyfade")}
    everything = {**metrics, **sanity_metrics()}
    expected = _by_hand(model, bench, everything)
    for i, options in enumerate(option_sets):
        folder = tmp_path / f"run{i}"
        scores = score_model(model, {"b": bench}, metrics, folder, "cpu", **options)
        table = pd.read_csv(folder / "b.csv")
        assert list(table.columns) == ["image", *everything]  # the sanity metrics are always added
        pd.testing.assert_frame_equal(table, expected, check_exact=False, rtol=1e-6, atol=1e-6)
        assert scores["means"]["b"] == pytest.approx(expected.drop(columns="image").mean().to_dict(), rel=1e-6)
        assert scores["directions"]["fade"] is True and scores["directions"]["luma_ssim_input"] is False
        json.dumps(scores)  # goes into a record as is
    assert expected.fade.to_numpy() == pytest.approx(expected.fade_ref.to_numpy(), abs=1e-9)


def test_batches_and_buckets_match_one_image_at_a_time(bench, tmp_path):
    _check_against_one_at_a_time(bench, tmp_path, [{"batch_size": 1}, {"batch_size": 3, "decode_workers": 1}])


@pytest.mark.slow
def test_cpu_metric_workers_match_one_image_at_a_time(bench, tmp_path):
    _check_against_one_at_a_time(bench, tmp_path, [{"batch_size": 8, "workers": 2, "decode_workers": 2}])


def test_identity_keeps_every_sanity_metric_at_its_neutral_value(bench, tmp_path):
    scores = score_model(nn.Identity(), {"b": bench}, {"entropy": build_metric("entropy")}, tmp_path, "cpu")
    means = scores["means"]["b"]
    assert means["lab_shift"] == pytest.approx(0, abs=1e-9)
    assert means["colourfulness_delta"] == pytest.approx(0, abs=1e-9)
    assert means["luma_ssim_input"] == pytest.approx(1.0, abs=1e-12)
    assert means["clipped_delta"] == 0.0


def test_samples_are_the_first_inputs_outputs_and_ground_truths_at_the_scored_size(bench, tmp_path):
    model = Blur().eval()
    run = tmp_path / "run"
    scores = score_model(model, {"b": bench}, {"entropy": build_metric("entropy")}, run / "scores" / "cell",
                         "cpu", max_side=32, samples=3, relative_to=run, save_outputs=True)
    entries = scores["samples"]["b"]
    assert [e["name"] for e in entries] == ["0.png", "1.png", "2.png"]
    assert entries[0]["input"] == "scores/cell/samples/b/0_0_input.png"
    for entry, pair in zip(entries, bench.pairs):
        hazy = shrink(to_tensor(read_image(pair.hazy)), 32)
        with torch.no_grad():
            out = to_array(model(hazy[None]))
        assert max(hazy.shape[-2:]) == 32
        np.testing.assert_allclose(read_image(run / entry["input"]), to_array(hazy), atol=0.5 / 255 + 1e-6)
        np.testing.assert_allclose(read_image(run / entry["output"]), out, atol=0.5 / 255 + 1e-6)
        truth = to_array(shrink(to_tensor(read_image(pair.clear)), 32))
        np.testing.assert_allclose(read_image(run / entry["reference"]), truth, atol=0.5 / 255 + 1e-6)
    assert len(list((run / "scores" / "cell" / "outputs" / "b").glob("*.png"))) == len(SIZES)


def test_large_images_are_restored_in_tiles_as_harness_dehaze_does(tmp_path, shared_data):
    image = read_image(shared_data / "real_hazy" / "Haze.jpg")[:150, :200]
    write_image(tmp_path / "in" / "a.png", image)
    image = read_image(tmp_path / "in" / "a.png")
    pairs = [ImagePair("a.png", tmp_path / "in" / "a.png")]
    model = Blur().eval()
    scores = score_model(model, {"b": ImageSet("b", tmp_path / "in", pairs)}, {"fade": build_metric("fade")},
                         tmp_path / "scores", "cpu", tile=64, overlap=8, samples=1)
    tiled = to_array(restore_tiled(model, to_tensor(image), 64, 8))
    whole = to_array(model(to_tensor(image)[None]).detach())
    assert np.abs(tiled - whole).max() > 1e-4  # the seams differ: the test can tell tiling happened
    assert scores["means"]["b"]["fade"] == pytest.approx(build_metric("fade").score(tiled), abs=1e-9)
    sample = read_image(tmp_path / "scores" / scores["samples"]["b"][0]["output"])
    np.testing.assert_allclose(sample, tiled, atol=0.5 / 255 + 1e-6)
    assert "reference" not in scores["samples"]["b"][0]  # no ground truth, no ground-truth sample


def test_corrupt_images_are_skipped_only_when_asked(bench, tmp_path, capsys):
    (bench.root / "3.png").write_bytes(b"not an image")
    metrics = {"entropy": build_metric("entropy")}
    with pytest.raises(HarnessError, match=r"cannot decode image .*3\.png"):
        score_model(nn.Identity(), {"b": bench}, metrics, tmp_path / "a", "cpu")
    scores = score_model(nn.Identity(), {"b": bench}, metrics, tmp_path / "b", "cpu", on_corrupt="skip", samples=5)
    assert list(pd.read_csv(tmp_path / "b" / "b.csv").image) == [f"{i}.png" for i in range(len(SIZES)) if i != 3]
    assert [e["name"] for e in scores["samples"]["b"]] == ["0.png", "1.png", "2.png", "4.png"]
    assert "skipped: cannot decode image" in capsys.readouterr().err


def test_a_reference_metric_is_none_without_ground_truth_and_sizes_must_match(bench, tmp_path):
    unpaired = ImageSet("u", bench.root, [ImagePair(p.name, p.hazy) for p in bench.pairs[:2]])
    scores = score_model(nn.Identity(), {"u": unpaired}, {"psnr": build_metric("psnr"), "musiq": None},
                         tmp_path, "cpu")
    assert scores["means"]["u"]["psnr"] is None and scores["means"]["u"]["musiq"] is None
    assert "musiq" not in scores["directions"]
    write_image(bench.pairs[0].clear, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(HarnessError, match="0.png: image .* and reference .* differ"):
        score_model(nn.Identity(), {"b": bench}, {"psnr": build_metric("psnr")}, tmp_path, "cpu")
