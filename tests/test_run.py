"""A tiny recipe through the real CLI: run and rerun, kill -9 and SIGTERM in every stage, stale data,
broken records, logs a batch job can read. (Replaces the old end-to-end test, whose checks could
not fail.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.recipe_files import write as write_recipe

TINY = {
    "name": "tiny",
    "device": "cpu",
    "backbones": [{"type": "dea_net", "variant": "tiny"}],
    "pretrain": [{"type": "synthetic", "label": "asm", "source": "skimage", "kind": "asm", "count": 6, "size": 48,
                  "seed": 0}],
    "target": [{"type": "synthetic", "label": "hard", "source": "skimage", "kind": "nonuniform", "count": 4,
                "size": 48, "seed": 1}],
    "benchmarks": [{"type": "synthetic", "label": "hard-test", "source": "skimage", "kind": "nonuniform", "count": 3,
                    "size": 48, "seed": 2}],
    "metrics": ["entropy", "psnr", "ssim"],
    "guide": {"type": "embedded", "steps": 30},
    "budget": {"pretrain_steps": 30, "batch_size": 2, "patch_size": 32, "checkpoint_every": 10},
    "methods": [
        {"type": "none"},
        {"type": "full_ft", "steps": 4},
        {"type": "bilalora", "rank": 2, "alpha": 4, "top_k": 1, "search_steps": 6, "finetune_steps": 4,
         "warmup_steps": 2},
    ],
}


def harness(*args: str, cwd: Path, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


def write(tmp_path: Path, data: dict, name: str = "tiny.yaml") -> Path:
    return write_recipe(tmp_path, data, name, out=True)


def records(run: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["cell"]["method"]["type"]: json.loads(p.read_text())
            for p in (run / "cells").glob("*.json")}


def assert_nothing_half_written(run: Path) -> None:
    """Every committed artifact folder is whole, every record parses, no temporary file is left."""
    for kind in ("pretrained", "adapted"):
        for folder in (run / kind).glob("*"):
            if not folder.name.startswith("."):
                assert (folder / "artifact.json").is_file() and (folder / "model.safetensors.json").is_file(), folder
    for path in (run / "cells").glob("*.json"):
        json.loads(path.read_text())
    assert not [p for p in run.rglob("*.tmp") if "work" not in p.parts], "temporary files left outside work/"


@pytest.mark.slow
def test_run_rerun_and_what_a_record_holds(tmp_path):
    recipe = write(tmp_path, TINY)
    first = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    by_method = records(run)
    assert set(by_method) == {"none", "full_ft", "bilalora"}
    for rec in by_method.values():
        scores = rec["metrics"]["hard-test"]
        assert 5 < scores["psnr"] < 60 and 0 < scores["ssim"] <= 1 and scores["entropy"] > 0
        samples = rec["artifacts"].pop("samples")  # {benchmark: [{name, input, output}]}, the agreed interface
        for rel in [*rec["artifacts"].values(), *(e[k] for e in samples["hard-test"] for k in ("input", "output"))]:
            assert (run / rel).exists(), rel
        assert {"lab_shift", "colourfulness_delta", "luma_ssim_input"} <= set(scores)
        assert rec["provenance"]["recipe_hash"] and (run / "recipes" / f"{rec['provenance']['recipe_hash']}.yaml").is_file()
        assert rec["provenance"]["inputs"]["benchmarks"]["hard-test"]
    # the guide is the embedded one for the methods that use a loss, and absent for `none`
    assert by_method["none"]["provenance"]["guide"] is None
    assert by_method["bilalora"]["provenance"]["guide"]["type"] == "embedded"
    assert by_method["none"]["efficiency"]["params_trainable"] == 0
    # merged adapters cost nothing at inference; the unmerged count is larger
    eff = {m: r["efficiency"] for m, r in by_method.items()}
    assert eff["bilalora"]["params_total"] == eff["none"]["params_total"] < eff["bilalora"]["params_unmerged"]
    assert 0 < eff["bilalora"]["params_trainable"] < eff["full_ft"]["params_trainable"]
    search = by_method["bilalora"]["curves"]["search"]
    seconds = [p["seconds"] for p in search]
    assert [p["step"] for p in search][-1] == 6 and seconds == sorted(seconds) and seconds[0] >= 0
    assert by_method["bilalora"]["method_info"]["gate_updates"] == 4  # 6 search steps, 2 of warm-up
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "cells").glob("*.json")}
    second = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 task(s) run, 7 of 7 already done" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert_nothing_half_written(run)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the point to interrupt it")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the point to interrupt the run")


LONG = dict(TINY, budget=dict(TINY["budget"], pretrain_steps=60, checkpoint_every=4),
            methods=[{"type": "none"}, {"type": "full_ft", "steps": 40},
                     {"type": "bilalora", "rank": 2, "alpha": 4, "top_k": 1, "search_steps": 40, "finetune_steps": 40,
                      "warmup_steps": 2}])


@pytest.mark.slow
@pytest.mark.parametrize("stage,state", [("pretrain", "pretrain/*/state.pt"), ("full_ft", "adapt/*/state/full_ft.pt"),
                                         ("search", "adapt/*/state/search.pt"),
                                         ("finetune", "adapt/*/state/finetune.pt")])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_an_interrupted_stage_resumes_from_its_checkpoint_and_finished_cells_stay(tmp_path, stage, state, how):
    data = LONG
    if stage == "finetune":  # let the search finish first: its result is saved, fine-tuning then checkpoints
        data = dict(LONG, methods=[LONG["methods"][2]])
    elif stage in ("search", "full_ft"):
        data = dict(LONG, methods=[m for m in LONG["methods"] if m["type"] in ("none", stage.replace("search", "bilalora"))])
    recipe = write(tmp_path, data)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(recipe)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if stage == "finetune":
        wait_for(lambda: list(run.glob("work/adapt/*/state/search.safetensors")) and list(run.glob(f"work/{state}")),
                 proc)
    else:
        wait_for(lambda: list(run.glob(f"work/{state}")), proc)
    finished = {p: p.read_text() for p in (run / "cells").glob("*.json")}
    proc.send_signal(how)
    _, err = proc.communicate(timeout=600)
    if how == signal.SIGTERM:
        assert proc.returncode == 75, err[-2000:]
        assert re.search(r"stopped: .*preempted at step \d+; state saved", err), err[-2000:]
    else:
        assert proc.returncode == -signal.SIGKILL
    assert_nothing_half_written(run)
    resumed = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    at = re.findall(r"resuming at step (\d+) of (\d+)", resumed.stdout + resumed.stderr)
    assert at and 0 < int(at[0][0]) < int(at[0][1]), resumed.stdout[-2000:]
    print(f"{stage} {how.name}: resumed at step {at[0][0]} of {at[0][1]}")  # shown with pytest -s
    assert {p: p.read_text() for p in finished} == finished  # finished cells untouched
    assert len(list((run / "cells").glob("*.json"))) == len(data["methods"])
    assert_nothing_half_written(run)
    assert not list((run / "work").glob("*/*/state*")), "training state left after the commit"


@pytest.mark.slow
def test_a_changed_benchmark_image_makes_its_scores_stale(tmp_path):
    """Issue 9 failure 3: a replaced benchmark image was scored with the old record reused."""
    folder = tmp_path / "bench"
    folder.mkdir()
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
    data = dict(TINY, methods=[{"type": "none"}], metrics=["entropy"],
                benchmarks=[{"type": "folder", "label": "mine", "root": str(folder)}])
    recipe = write(tmp_path, data)
    assert harness("run", str(recipe), cwd=tmp_path, timeout=900).returncode == 0
    before = records(tmp_path / "run")["none"]
    Image.fromarray(np.zeros((40, 40, 3), "uint8")).save(folder / "1.png")  # replaced by a flat image
    again = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale" in again.stdout and "1 task(s) run" in again.stdout  # only the score task, nothing retrained
    after = records(tmp_path / "run")["none"]
    assert after["metrics"]["mine"]["entropy"] < before["metrics"]["mine"]["entropy"]
    assert after["provenance"]["inputs"] != before["provenance"]["inputs"]


@pytest.mark.slow
def test_a_replaced_guide_makes_what_it_trained_stale(tmp_path):
    """A guide weights file replaced at the same path (same recipe) retrains the adaptations that
    used it, and only those: the pretrained model and the unadapted cell are reused."""
    import torch

    from harness.guide.model import TINY_MODEL, create_model

    weights = tmp_path / "guide.pt"
    torch.manual_seed(0)
    torch.save(create_model(TINY_MODEL).state_dict(), weights)
    data = dict(TINY, methods=TINY["methods"][:2], guide={"type": "open_clip", "model": TINY_MODEL,
                                                          "pretrained": str(weights)})
    recipe = write(tmp_path, data)
    assert harness("run", str(recipe), cwd=tmp_path, timeout=900).returncode == 0
    before = records(tmp_path / "run")
    torch.manual_seed(1)
    torch.save(create_model(TINY_MODEL).state_dict(), weights)
    again = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 task(s) run" in again.stdout, again.stdout[-2000:]  # adapt + score of full_ft
    after = records(tmp_path / "run")
    assert after["none"] == before["none"]
    assert after["full_ft"]["provenance"]["guide"]["sha256"] != before["full_ft"]["provenance"]["guide"]["sha256"]
    assert after["full_ft"]["provenance"]["deps"] != before["full_ft"]["provenance"]["deps"]  # a new adaptation


@pytest.mark.slow
def test_a_truncated_record_is_recomputed_and_named(tmp_path):
    """Issue 9 failure 6: a truncated record counted as finished and crashed run/report."""
    data = dict(TINY, methods=[{"type": "none"}])
    recipe = write(tmp_path, data)
    assert harness("run", str(recipe), cwd=tmp_path, timeout=900).returncode == 0
    path = next((tmp_path / "run" / "cells").glob("*.json"))
    path.write_text(path.read_text()[:40])
    plan = harness("plan", str(recipe), cwd=tmp_path, timeout=300)
    assert plan.returncode == 0 and path.name in plan.stderr and "stale" in plan.stdout
    again = harness("run", str(recipe), cwd=tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 task(s) run" in again.stdout and json.loads(path.read_text())["metrics"]


@pytest.mark.slow
def test_a_batch_job_log_shows_progress_while_it_runs(tmp_path):
    """Issue 10: with stdout to a file, `harness run` printed nothing until its last second."""
    recipe = write(tmp_path, LONG)
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(recipe)], cwd=tmp_path, stdout=out,
                                stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "HARNESS_LOG_INTERVAL": "1"})
        wait_for(lambda: re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d .*step \d+/\d+", log.read_text(), re.M), proc)
        assert proc.poll() is None  # seen while it still runs
        proc.wait(timeout=1200)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert (tmp_path / "run" / "run.log").read_text().count("started") >= 5
    tables, rows = [], []  # each markdown table: its consecutive "| " lines
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            tables.append(rows)
            rows = []
    assert tables and all(len({len(r.split("|")) for r in t}) == 1 for t in tables)  # whole rows, not wrapped at 80 columns


def test_smoke_one_cell_end_to_end(tmp_path):
    """The shortest real run: pretrain, no adaptation, score, record, report (default suite)."""
    data = dict(TINY, methods=[{"type": "none"}], metrics=["entropy", "psnr"],
                budget=dict(TINY["budget"], pretrain_steps=4))
    recipe = write(tmp_path, data)
    done = harness("run", str(recipe), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records(tmp_path / "run").values()
    assert record["cell"]["method"] == {"type": "none"} and record["metrics"]["hard-test"]["psnr"] > 5
    assert "| none |" in (tmp_path / "run" / "report.md").read_text()
