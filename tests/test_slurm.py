"""``--launcher slurm`` against a real single-node Slurm (started here; the tests skip where it cannot run).

The quickstart-shaped tiny recipe goes through job arrays (one per level of the plan, each waiting
for the last) and a report job; a job told to stop (SIGUSR1, as ``--signal`` sends before the
time limit) saves its state, requeues itself and resumes.
"""

import json
import re
import subprocess
import sys
import time

import pytest

from tests import slurm_cluster
from tests.recipe_files import write as write_recipe
from tests.test_run import LONG, TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    try:
        env, stop = slurm_cluster.start(folder)
    except slurm_cluster.Unavailable as why:
        pytest.skip(f"no local Slurm: {why}")
    yield env
    stop()


def harness(*args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, **kw)


def write(tmp_path, data, name="r.yaml"):
    return write_recipe(tmp_path, data, name, out=True)


def test_dry_run_prints_the_sbatch_scripts_and_submits_nothing(tmp_path, slurm):
    done = harness("run", str(write(tmp_path, TINY)), "--launcher", "slurm", "--dry-run", env=slurm, cwd=tmp_path,
                   timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    scripts = re.findall(r"^# ---- (\S+)", done.stdout, re.M)
    assert scripts == ["level0.sbatch", "level1.sbatch", "level2.sbatch", "report.sbatch"]
    assert "#SBATCH --array=0-2%16" in done.stdout and "#SBATCH --requeue" in done.stdout
    assert "--signal=B:USR1@120" in done.stdout and "scontrol requeue" in done.stdout
    queue = subprocess.run(["squeue", "-h"], env=slurm, capture_output=True, text=True).stdout
    assert not queue.strip() and not (tmp_path / "run" / "cells").exists()


def test_a_recipe_runs_as_job_arrays_and_writes_the_report(tmp_path, slurm):
    done = harness("run", str(write(tmp_path, TINY)), "--launcher", "slurm", env=slurm, cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert len(re.findall(r"submitted \S+ as job \d+", done.stdout)) == 4
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "cells").glob("*.json")]
    assert sorted(r["cell"]["method"]["type"] for r in records) == ["bilalora", "full_ft", "none"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert all(f"\n| {m} |" in report for m in ("none", "full_ft", "bilalora"))
    logs = list((tmp_path / "run" / "work" / "slurm").glob("harness-tiny-L1-*_*.out"))
    assert len(logs) == 3  # one array task per adaptation


def test_a_signalled_job_saves_requeues_and_resumes(tmp_path, slurm):
    data = dict(LONG, methods=[LONG["methods"][2]])
    recipe = write(tmp_path, data)
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(recipe), "--launcher", "slurm"],
                            cwd=tmp_path, env={**slurm, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    deadline = time.time() + 1200
    while time.time() < deadline and not list(run.glob("work/adapt/*/state/search.pt")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    running = subprocess.run(["squeue", "-h", "-t", "R", "-n", "harness-tiny-L1", "-o", "%i"], env=slurm,
                             capture_output=True, text=True).stdout.split()
    assert running, "the adaptation's array task is not running"
    subprocess.run(["scancel", "--signal=USR1", "--batch", running[0]], env=slurm, check=True)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-3000:]
    log = "".join(p.read_text() for p in (run / "work" / "slurm").glob("harness-tiny-L1-*.out"))
    assert re.search(r"preempted at step \d+; state saved", log), log[-2000:]
    assert re.search(r"resuming at step \d+ of 40", log), log[-2000:]
    assert len(list((run / "cells").glob("*.json"))) == 1

