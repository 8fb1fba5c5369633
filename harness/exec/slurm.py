"""Slurm job arrays: one array per level of the plan, each level waiting for the one before.

Array task i of level k runs line i of ``work/slurm/<hash>/level<k>.tasks`` through
``harness worker`` (under ``torchrun --standalone`` when a cell takes several GPUs). Scripts ask for
``--requeue`` and ``--signal=B:USR1@120``: before the time limit, or when Slurm preempts the job,
the training loop saves its state and exits with 75, and the script requeues the array task,
which resumes from that state (resuming is safe to repeat). A last job writes the report. With
``--wait`` (the default) the parent polls ``squeue`` until the jobs are gone, then checks that every
cell has its record. ``--dry-run`` prints the scripts without submitting anything.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness.errors import EXIT_PREEMPTED, HarnessError
from harness.plan.graph import Plan, Task
from harness.recipe import SlurmConfig


def _header(name: str, run_dir: Path, slurm: SlurmConfig, array: str | None, gpus: int) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}",
             f"#SBATCH --output={run_dir / 'work' / 'slurm' / ('%x-%A_%a.out' if array else '%x-%j.out')}",
             f"#SBATCH --chdir={Path.cwd()}", f"#SBATCH --time={slurm.time}", "#SBATCH --ntasks=1"]
    if array:
        # append: a requeued task keeps the log of the attempt that was preempted
        lines += [f"#SBATCH --array={array}", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                  "#SBATCH --open-mode=append"]
    for key, value in (("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos),
                       ("mem", slurm.mem), ("cpus-per-task", slurm.cpus_per_task)):
        if value is not None:
            lines.append(f"#SBATCH --{key}={value}")
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines += [f"#SBATCH {extra}" for extra in slurm.extra]
    return lines + list(slurm.setup) + ["export HARNESS_PROGRESS=lines"]


def _level_script(plan: Plan, run_dir: Path, level: int, tasks: list[Task], task_list: Path) -> str:
    recipe = plan.recipe
    gpus = recipe.resources.gpus_per_cell if recipe.device != "cpu" else 0
    trains = any(t.kind != "score" for t in tasks)
    nproc = gpus if trains and gpus > 1 else 1
    worker = [sys.executable, "-m", "harness.cli", "worker", str(run_dir), "--plan", plan.recipe_hash,
              "--task-list", str(task_list), "--index"]
    if nproc > 1:
        worker = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                  *worker[1:]]
    array = f"0-{len(tasks) - 1}%{recipe.resources.slurm.array_parallelism}"
    lines = _header(f"harness-{recipe.name}-L{level}", run_dir, recipe.resources.slurm, array,
                    min(gpus, 1) if not trains else gpus)
    lines += [
        f"{shlex.join(worker)} \"$SLURM_ARRAY_TASK_ID\" &",
        "pid=$!",
        "trap 'kill -USR1 $pid 2>/dev/null' USR1 TERM",  # the loop saves and exits EXIT_PREEMPTED
        "wait $pid; code=$?",
        "while kill -0 $pid 2>/dev/null; do wait $pid; code=$?; done",
        f'if [ "$code" -eq {EXIT_PREEMPTED} ]; then scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"; exit 0; fi',
        'exit "$code"',
    ]
    return "\n".join(lines) + "\n"


def _report_script(plan: Plan, run_dir: Path) -> str:
    lines = _header(f"harness-{plan.recipe.name}-report", run_dir, plan.recipe.resources.slurm, None, 0)
    lines.append(shlex.join([sys.executable, "-m", "harness.cli", "report", str(run_dir)]))
    return "\n".join(lines) + "\n"


def _levels(plan: Plan, todo: list[Task]) -> list[list[Task]]:
    wanted = {t.id for t in todo}
    return [level for level in ([t for t in lvl if t.id in wanted] for lvl in plan.levels()) if level]


def sbatch_scripts(plan: Plan, run_dir: Path, todo: list[Task], **_) -> list[tuple[str, str]]:
    """``(file name, script)`` of every level's array job, then the report job (nothing is written)."""
    folder = Path(run_dir) / "work" / "slurm" / plan.recipe_hash
    scripts = [(f"level{k}.sbatch", _level_script(plan, Path(run_dir), k, tasks, folder / f"level{k}.tasks"))
               for k, tasks in enumerate(_levels(plan, todo))]
    return scripts + [("report.sbatch", _report_script(plan, Path(run_dir)))]


def _sbatch(script: Path, after: str | None) -> str:
    command = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
    command += ([f"--dependency=afterok:{after}"] if after else []) + [str(script)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip()
        fix = ("the partition has no GPUs to give: set device: cpu (or resources.gpus_per_cell: 0), or pick a GPU "
               "partition with resources.slurm.partition" if "gres" in said.lower() else
               "check resources.slurm (partition, account, time) and that slurmctld is up (`sinfo`)")
        raise HarnessError(f"sbatch {script} failed: {said}", fix)
    return done.stdout.strip().split(";")[0]


def execute(plan: Plan, ctx, todo: list[Task], wait: bool = True, **_) -> list[str]:
    if shutil.which("sbatch") is None:
        raise HarnessError("sbatch not found", "run on a Slurm login node, or use --launcher local")
    run_dir = Path(ctx.store.root).resolve()
    folder = run_dir / "work" / "slurm" / plan.recipe_hash
    folder.mkdir(parents=True, exist_ok=True)
    (run_dir / "work" / "slurm").mkdir(parents=True, exist_ok=True)
    jobs: list[str] = []
    levels = _levels(plan, todo)
    for k, tasks in enumerate(levels):
        (folder / f"level{k}.tasks").write_text("".join(t.id + "\n" for t in tasks))
    for name, script in sbatch_scripts(plan, run_dir, todo):
        path = folder / name
        path.write_text(script)
        jobs.append(_sbatch(path, jobs[-1] if jobs else None))
        ctx.progress.line(f"submitted {name} as job {jobs[-1]}")
    if wait:
        _wait(jobs, ctx)
        from harness.stages import statuses

        missing = [t for t, s in statuses(ctx).items() if s != "done"]
        if missing:
            raise HarnessError(f"the Slurm jobs ended with {len(missing)} task(s) not done "
                               f"(first: {plan.tasks[missing[0]].label})",
                               f"read the job logs in {run_dir / 'work' / 'slurm'} and rerun the same command")
    return [t.id for t in todo]


def _wait(jobs: list[str], ctx, poll: float = 2.0) -> None:
    last = ""
    while True:
        done = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i %T"], capture_output=True, text=True)
        queue = done.stdout.strip()
        if done.returncode != 0 or not queue:
            return
        summary = ", ".join(sorted({line.split()[-1] for line in queue.splitlines()}))
        if summary != last:
            ctx.progress.line(f"slurm: {len(queue.splitlines())} job step(s) {summary}")
            last = summary
        time.sleep(poll)
