"""The benchmark scripts run end to end at their tiniest setting (timings are not checked)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_THROUGHPUT = ["--variant", "tiny", "--batch", "1", "--size", "32", "--repeats", "1", "--steps", "1",
                   "--warmup", "1", "--device", "cpu"]


def test_backbone_throughput_runs_and_writes_json(tmp_path, one_thread):
    bench = _load("backbone_throughput")
    out = tmp_path / "rows.json"
    rows = bench.main(["--backbones", "aod_net,dea_net", *TINY_THROUGHPUT, "--json", str(out)])
    assert [r["backbone"] for r in rows] == ["aod_net", "dea_net"]
    for row in rows:
        assert row["fp32"]["images_per_s"] > 0 and row["bf16"]["images_per_s"] > 0
        assert row["bf16_over_fp32"] > 0 and row["fp32"]["peak_mem_mib"] is None  # no CUDA memory on CPU
    assert json.loads(out.read_text())["rows"][1]["variant"] == "tiny"
    assert ("b", "b (full)") in bench.published_variants("convir")
    assert "full" not in [v for v, _ in bench.published_variants("convir")]  # the alias of b is not timed twice


def test_backbone_throughput_compares_layouts(one_thread):
    rows = _load("backbone_throughput").main(["--backbones", "aod_net,dea_net", *TINY_THROUGHPUT,
                                              "--compare", "layout"])
    assert all(r["nchw"]["images_per_s"] > 0 and r["nhwc_over_nchw"] > 0 for r in rows)
    assert [r["registered_channels_last"] for r in rows] == [True, False]
    assert "bf16" not in rows[0]


def test_backbone_throughput_reports_oom_in_the_row(monkeypatch, one_thread):
    bench = _load("backbone_throughput")
    real = bench._train_step

    def bf16_oom(model, x, target, precision):
        if precision == "bf16":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        real(model, x, target, precision)

    monkeypatch.setattr(bench, "_train_step", bf16_oom)
    (row,) = bench.main(["--backbones", "aod_net", *TINY_THROUGHPUT])
    assert row["bf16"]["error"] == "OOM" and row["bf16"]["images_per_s"] is None
    assert row["fp32"]["images_per_s"] > 0 and row["bf16_over_fp32"] is None


def test_adapt_step_cost_runs(one_thread):
    bench = _load("adapt_step_cost")
    result = bench.main(["--variants", "tiny", "--patches", "16", "--batch", "1", "--repeats", "1",
                         "--warmup", "0", "--device", "cpu"])
    ratios = result["ratios"]["tiny@16"]
    assert set(ratios) == set(bench.METHODS) and ratios["a"] == pytest.approx(1.0)
    assert all(r > 0 for r in ratios.values())
    assert len(result["run_ratio"]) == 3


def test_fade_throughput_compares_both_implementations(shared_data, one_thread):
    result = _load("fade_throughput").main(["--sets", "kodak", "--limit", "1", "--quiet"])
    (row,) = result["sets"]["kodak"]["rows"]
    assert row["abs"] < 1e-9 and row["rel_f32"] >= 0
    assert set(result["sets"]["kodak"]["images_per_s"]) == {"pyfade", "torch"}
    assert math.isnan(result["batched_640x480_images_per_s"])  # Kodak's 500x500 photos give no 640x480 crop


@pytest.mark.slow
def test_eval_throughput_times_serial_and_pipeline_scoring(shared_data, one_thread):
    result = _load("eval_throughput").main(["--count", "2"])
    assert result["images"] == 2 and set(result["rates"]) == {"serial", "pipeline"}
    serial, pipeline = result["means"]["serial"], result["means"]["pipeline"]
    assert abs(serial["fade"] - pipeline["fade"]) < 1e-9 and serial["entropy"] == pipeline["entropy"]
