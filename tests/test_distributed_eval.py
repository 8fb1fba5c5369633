"""Sharded evaluation: per-rank frames merge back into input order; a real 2-rank ``harness eval``."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from torch import nn

from harness.metrics import scoring as benchmark
from harness.data.datasets import ImagePair, ImageSet
from harness.data.io import write_image
from harness.errors import HarnessError
from harness.launch.distributed import compute_and_gather, gather_frames, merge_frames, rank_world
from harness.metrics import build_metric
from harness.metrics.evaluate import eval_command

N_IMAGES = 7  # odd: the two shards differ in length


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    hazy, clear = tmp_path / "out", tmp_path / "gt"
    for i in range(N_IMAGES):
        gt = rng.random((24 + i, 32, 3)).astype(np.float32)
        write_image(clear / f"{i}.png", gt)
        write_image(hazy / f"{i}.png", gt * 0.6 + 0.3)
    return hazy, clear


def _single_process_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_merge_frames_restores_input_order_with_uneven_empty_and_gappy_shards():
    full = pd.DataFrame({"image": [f"{i}.png" for i in range(N_IMAGES)], "psnr": np.arange(N_IMAGES) / 3})
    world = 3
    shards = [full.iloc[r::world] for r in range(world)] + [full.iloc[:0]]  # index = input position
    pd.testing.assert_frame_equal(merge_frames(shards[::-1]), full)
    skipped = [s.drop(index=4, errors="ignore") for s in shards]  # a corrupt image skipped on one rank
    pd.testing.assert_frame_equal(merge_frames(skipped), full.drop(index=4).reset_index(drop=True))


def test_gather_without_a_process_group(monkeypatch):
    _single_process_env(monkeypatch)
    assert rank_world() == (0, 1)
    frame = pd.DataFrame({"image": ["b", "a"], "x": [2.0, 1.0]}, index=[1, 0])
    assert list(gather_frames(frame).image) == ["a", "b"]
    with pytest.raises(ValueError, match="boom"):
        gather_frames(ValueError("boom"))

    def fails() -> pd.DataFrame:
        raise ValueError("boom in compute")

    with pytest.raises(ValueError, match="boom in compute"):
        compute_and_gather(fails)
    assert list(compute_and_gather(lambda: frame).image) == ["a", "b"]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_world() == (1, 2)
    with pytest.raises(HarnessError, match="no process group"):
        gather_frames(frame)


def test_score_model_shards_merge_to_the_single_process_csv(folder, tmp_path, monkeypatch):
    """Both ranks of score_model in one process: the gather is replaced by handing rank 1's rows to rank 0."""
    hazy, clear = folder
    (hazy / "4.png").write_bytes(b"not an image")  # skipped on rank 0 (positions 0, 2, 4, 6)
    pairs = [ImagePair(f"{i}.png", hazy / f"{i}.png", clear / f"{i}.png") for i in range(N_IMAGES)]
    bench = {"b": ImageSet("b", hazy, pairs)}
    metrics = {"entropy": build_metric("entropy"), "psnr": build_metric("psnr")}
    args = {"model": nn.Identity(), "benchmarks": bench, "metrics": metrics, "device": "cpu", "on_corrupt": "skip"}
    single = benchmark.score_model(scores_dir=tmp_path / "one", **args)

    sent = []
    monkeypatch.setattr(benchmark, "barrier", lambda: None)
    monkeypatch.setattr(benchmark, "compute_and_gather", lambda compute: sent.append(compute()) or merge_frames(sent))
    for rank in (1, 0):
        monkeypatch.setattr(benchmark, "ensure_process_group", lambda rank=rank: (rank, 2))
        sharded = benchmark.score_model(scores_dir=tmp_path / f"rank{rank}", shard=(rank, 2), **args)
    assert [len(f) for f in sent] == [3, 3]
    assert sharded == single
    assert not (tmp_path / "rank1").exists()  # only rank 0 writes
    one, two = pd.read_csv(tmp_path / "one" / "b.csv"), pd.read_csv(tmp_path / "rank0" / "b.csv")
    assert list(one.image) == ["0.png", "1.png", "2.png", "3.png", "5.png", "6.png"]
    pd.testing.assert_frame_equal(one, two)
    with pytest.raises(HarnessError, match=r"shard \(1, 2\) is not this process's \(rank, world\) \(0, 2\)"):
        benchmark.score_model(scores_dir=tmp_path / "x", shard=(1, 2), **args)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 ARGS`` on CPU (gloo); must succeed."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # --standalone: torchrun picks a free port itself (no window in which another process takes it)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_two_rank_eval_writes_the_single_process_csv(folder, tmp_path, monkeypatch, capsys):
    hazy, clear = folder
    _single_process_env(monkeypatch)
    eval_command(hazy, metrics="entropy,psnr", reference=clear, out=tmp_path / "one.csv", workers=1)
    capsys.readouterr()

    done = _torchrun("-m", "harness.cli", "eval", str(hazy), "--metrics", "entropy,psnr",
                     "--reference", str(clear), "--out", str(tmp_path / "two.csv"))
    assert done.stdout.count("per-image scores") == 1  # rank 0 prints, rank 1 stays quiet

    one, two = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert list(two.image) == [f"{i}.png" for i in range(N_IMAGES)] == list(one.image)
    pd.testing.assert_frame_equal(one, two, check_exact=False, rtol=0, atol=1e-9)


SCORE_MODEL_SCRIPT = """
import json, sys
from pathlib import Path
from torch import nn
from harness.metrics.scoring import score_model
from harness.data.datasets import ImagePair, ImageSet
from harness.launch.distributed import rank_world
from harness.metrics import build_metric

hazy, clear, out = map(Path, sys.argv[1:])
pairs = [ImagePair(p.name, p, clear / p.name) for p in sorted(hazy.glob("*.png"))]
metrics = {"entropy": build_metric("entropy"), "psnr": build_metric("psnr")}
means = score_model(nn.Identity(), {"b": ImageSet("b", hazy, pairs)}, metrics, out, "cpu", shard=rank_world())
(out / f"means{rank_world()[0]}.json").write_text(json.dumps(means))
"""


@pytest.mark.slow
def test_two_rank_score_model_gathers_the_single_process_rows(folder, tmp_path, monkeypatch):
    hazy, clear = folder
    _single_process_env(monkeypatch)
    pairs = [ImagePair(f"{i}.png", hazy / f"{i}.png", clear / f"{i}.png") for i in range(N_IMAGES)]
    metrics = {"entropy": build_metric("entropy"), "psnr": build_metric("psnr")}
    single = benchmark.score_model(nn.Identity(), {"b": ImageSet("b", hazy, pairs)}, metrics, tmp_path / "one", "cpu")

    script = tmp_path / "score.py"
    script.write_text(SCORE_MODEL_SCRIPT)
    _torchrun(str(script), str(hazy), str(clear), str(tmp_path / "two"))
    for rank in (0, 1):
        assert json.loads((tmp_path / "two" / f"means{rank}.json").read_text()) == single
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "one" / "b.csv"), pd.read_csv(tmp_path / "two" / "b.csv"))
