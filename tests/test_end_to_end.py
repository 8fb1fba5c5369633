"""One tiny recipe through the real CLI: run, rerun (nothing recomputed), kill -9 and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny",
    "device": "cpu",
    "backbones": [{"type": "dea_net", "variant": "tiny"}],
    "pretrain": [{"type": "synthetic", "label": "asm", "source": "skimage", "kind": "asm", "count": 6, "size": 48, "seed": 0}],
    "target": [{"type": "synthetic", "label": "hard", "source": "skimage", "kind": "nonuniform", "count": 4, "size": 48,
                "seed": 1}],
    "benchmarks": [{"type": "synthetic", "label": "hard-test", "source": "skimage", "kind": "nonuniform", "count": 3,
                    "size": 48, "seed": 2}],
    "metrics": ["entropy", "psnr", "ssim"],
    "guide": {"type": "embedded", "steps": 30},
    "budget": {"pretrain_steps": 30, "batch_size": 2, "patch_size": 32, "checkpoint_every": 10},
    "methods": [
        {"type": "none"},
        {"type": "full_ft", "steps": 4},
        {"type": "bilalora", "rank": 2, "alpha": 4, "top_k": 1, "search_steps": 4, "finetune_steps": 4,
         "warmup_steps": 2},
    ],
}


def harness(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, **kw)


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, out=str(tmp_path / "run"))))
    return path


def test_run_rerun_report(recipe, tmp_path):
    first = harness("run", str(recipe), cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    records = sorted((run / "cells").glob("*.json"))
    assert len(records) == 3
    for path in records:
        rec = json.loads(path.read_text())
        assert set(rec) >= {"cell", "provenance", "metrics", "efficiency", "artifacts"}
        scores = rec["metrics"]["hard-test"]
        assert 5 < scores["psnr"] < 60 and 0 < scores["ssim"] <= 1 and scores["entropy"] > 0
        eff = rec["efficiency"]
        assert eff["params_total"] > 0 and eff["flops_256"] > 0 and eff["runtime_ms_256"] > 0
        for rel in rec["artifacts"].values():
            assert (run / rel).exists()
        assert rec["provenance"]["guide"] is None or rec["provenance"]["guide"]["type"] == "embedded"
    by_method = {json.loads(p.read_text())["cell"]["method"]["type"]: json.loads(p.read_text()) for p in records}
    assert by_method["none"]["efficiency"]["params_trainable"] == 0
    # merged adapters cost nothing at inference: same size as the pretrained model
    assert by_method["bilalora"]["efficiency"]["params_total"] == by_method["none"]["efficiency"]["params_total"]
    assert 0 < by_method["bilalora"]["efficiency"]["params_trainable"] < by_method["full_ft"]["efficiency"]["params_trainable"]
    report = (run / "report.md").read_text()
    assert report.count("\n| ") == 4  # header + 3 methods
    assert (run / "report.tex").read_text().count(r"\\") >= 4

    mtimes = {p: p.stat().st_mtime_ns for p in records}
    start = time.perf_counter()
    second = harness("run", str(recipe), cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 cell(s) run, 3 already finished" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in records} == mtimes
    assert time.perf_counter() - start < 60


def test_kill_during_run_keeps_finished_cells(recipe, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(recipe)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((run / "cells").glob("*.json")):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p: p.read_text() for p in (run / "cells").glob("*.json")}
    assert 1 <= len(kept) < 3
    for text in kept.values():
        json.loads(text)  # whole, valid JSON
    assert not list(run.rglob("*.tmp"))  or all(p.name.startswith(".") for p in run.rglob("*.tmp"))
    resumed = harness("run", str(recipe), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{len(kept)} already finished" in resumed.stdout
    assert {p: p.read_text() for p in kept} == kept
    assert len(list((run / "cells").glob("*.json"))) == 3


def test_torchrun_ranks_split_the_cells_and_the_last_writes_the_report(recipe, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "harness.cli", "run", str(recipe)], cwd=tmp_path, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    assert sorted(r["cell"]["index"] for r in records) == [0, 1, 2]  # rank 0 ran cells 0 and 2, rank 1 cell 1
    ran = [int(n) for n in re.findall(r"(\d+) cell\(s\) run", done.stdout)]
    assert sorted(ran) == [1, 2]
    assert (tmp_path / "run" / "report.md").read_text().count("\n| ") == 4  # header + all 3 methods
