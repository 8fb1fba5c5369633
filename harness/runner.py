"""Run a recipe: plan -> executor -> report.

The parent process validates the recipe, builds the plan, writes it into the run folder once
(``recipes/<hash>.yaml``, ``plans/<hash>.json``, a line in ``commands.log``) and hands the tasks
that are not done to an executor: ``inline`` (this process; every rank of a torchrun together),
``local`` (a pool of worker processes: one per GPU, or N CPU workers), ``torchrun`` / ``deepspeed``
(one launch whose ranks train each cell together) or ``slurm`` (job arrays). Every executor runs
tasks through ``harness worker`` or the same ``run_tasks`` code, so a task behaves the same
wherever it runs. The report is written once every cell has its record.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from harness.engine.strategy import Strategy
from harness.errors import HarnessError
from harness.plan.graph import Plan, Task, build_plan
from harness.recipe import Recipe, load_recipe
from harness.store import atomic_write_bytes, atomic_write_json
from harness.store.records import read_json

FORCE_FILE = Path("work") / "force.json"
STAGES = ("pretrain", "adapt", "score")


@dataclass
class RunSummary:
    run_dir: Path
    cells: int
    tasks: int
    done_before: int = 0
    ran: list[str] = field(default_factory=list)
    seconds: float = 0.0


def recipe_file(run_dir: Path, recipe_hash: str) -> Path:
    return Path(run_dir) / "recipes" / f"{recipe_hash}.yaml"


def plan_file(run_dir: Path, recipe_hash: str) -> Path:
    return Path(run_dir) / "plans" / f"{recipe_hash}.json"


def write_run_files(plan: Plan, run_dir: Path) -> None:
    """Keep this recipe (by hash, beside any other recipe run into the folder), its plan and the command."""
    run_dir = Path(run_dir)
    atomic_write_bytes(recipe_file(run_dir, plan.recipe_hash),
                       yaml.safe_dump(plan.recipe.model_dump(mode="json", exclude={"out"}), sort_keys=False).encode())
    atomic_write_json(plan_file(run_dir, plan.recipe_hash), {**plan.to_json(), "cwd": os.getcwd()})
    try:
        with open(run_dir / "commands.log", "a") as log:
            log.write(f"{datetime.now().isoformat(timespec='seconds')} {plan.recipe_hash} {shlex.join(sys.argv)}\n")
    except OSError as err:
        raise HarnessError(f"cannot write {run_dir / 'commands.log'} ({err.strerror})",
                           "make the run folder writable, or choose another with --out") from None


def load_stored_plan(run_dir: Path, recipe_hash: str) -> Plan:
    """The plan a parent wrote into ``run_dir`` (rebuilt from the stored recipe, checked against its hash)."""
    path = recipe_file(run_dir, recipe_hash)
    if not path.is_file():
        raise HarnessError(f"{run_dir} holds no recipe {recipe_hash}", "start the run with `harness run RECIPE`")
    plan = build_plan(load_recipe(path, check_paths=False))
    if plan.recipe_hash != recipe_hash:
        raise HarnessError(f"recipe {path} rebuilds to hash {plan.recipe_hash}, not {recipe_hash}",
                           "the harness version changed since the run was planned; rerun `harness run RECIPE`")
    return plan


# ------------------------------------------------------------------ forcing


def force(plan: Plan, run_dir: Path, stage: str, ctx) -> list[Task]:
    """Mark every task of ``stage`` and every task downstream of one to be recomputed once.

    The force file holds each task's commit at the time of forcing; once a task has been rebuilt
    (new commit) it is no longer forced, so a requeued Slurm task does not redo it.
    """
    from harness.stages import stage_of

    if stage not in STAGES:
        raise HarnessError(f"unknown --force stage {stage!r}", f"use one of: {', '.join(STAGES)}")
    first = STAGES.index(stage)
    chosen: dict[str, Task] = {}
    for task in plan.tasks.values():
        if STAGES.index(task.kind) >= first or any(d in chosen for d in task.deps):
            chosen[task.id] = task
    marks = read_json(Path(run_dir) / FORCE_FILE) or {}
    marks.update({t.id: stage_of(t).commit_of(t, ctx) for t in chosen.values()})
    atomic_write_json(Path(run_dir) / FORCE_FILE, marks)
    return list(chosen.values())


def forced_tasks(plan: Plan, run_dir: Path, ctx) -> set[str]:
    from harness.stages import stage_of

    marks = read_json(Path(run_dir) / FORCE_FILE) or {}
    return {tid for tid, old in marks.items()
            if tid in plan.tasks and stage_of(plan.tasks[tid]).commit_of(plan.tasks[tid], ctx) == old}


# ------------------------------------------------------------------ the parent


def context(plan: Plan, run_dir: Path, strategy=None, progress=None):
    """A StageContext for ``plan`` in this process (strategy from the recipe and the environment)."""
    from harness.engine.strategy import make_strategy
    from harness.stages.context import StageContext
    from harness.store import RunStore
    from harness.ui.progress import RunProgress

    strategy = strategy or make_strategy(plan.recipe)
    progress = progress or RunProgress(Path(run_dir) / "run.log")
    ctx = StageContext(plan, RunStore(run_dir), strategy, progress)
    ctx.forced = forced_tasks(plan, run_dir, ctx)
    return ctx


def check_before_work(ctx, todo: list[Task], build_guide: bool = True) -> None:
    """Fail before any training: every dataset, metric and (when a task needs it) the guide.

    The parent of a Slurm run leaves the guide to the jobs (a login node should not train one).
    """
    from harness.stages.adapt import build_method

    kinds = {t.kind for t in todo}
    for task in todo:
        if task.kind == "pretrain":
            ctx.dataset(task.spec["data"])
        elif task.kind == "adapt":
            ctx.dataset(task.spec["target"])
            if build_guide and build_method(task.spec["method"]).needs_loss:
                ctx.loss(task.spec["method"])
    if "score" in kinds:
        for entry in ctx.recipe.benchmarks:
            ctx.dataset(entry.spec())
        ctx.metrics()
    check_overlap(ctx)


def check_overlap(ctx) -> None:
    """Stop when a target image also appears in a benchmark (decoded content), unless allowed."""
    try:
        from harness.data.overlap import find_overlap
    except ImportError:  # the content check is added with the data module that provides it
        return
    if ctx.recipe.allow_overlap:
        return
    for target in ctx.recipe.target:
        for bench in ctx.recipe.benchmarks:
            hits = find_overlap(ctx.dataset(target.spec()), ctx.dataset(bench.spec()))
            if hits:
                a, b = hits[0]
                raise HarnessError(
                    f"{len(hits)} target image(s) of {target.name} also appear in benchmark {bench.name} "
                    f"(e.g. {a} = {b}): adapting on test images inflates the scores",
                    "use a target set disjoint from the benchmarks, or set allow_overlap: true (it is recorded)")


def run(recipe: Recipe, run_dir: Path, *, launcher: str = "inline", workers: int = 1, nproc_per_node: int = 1,
        nnodes: int = 1, force_stage: str | None = None, strategy: str | None = None,
        launcher_args: list[str] | None = None, wait: bool = True) -> RunSummary:
    """Run every task of ``recipe`` that is not done, with the chosen executor."""
    from harness.launch.distributed import barrier, ensure_process_group, rank_world
    from harness.stages import statuses

    if strategy:
        recipe = recipe.model_copy(update={"engine": recipe.engine.model_copy(update={"strategy": strategy})})
    started = time.perf_counter()
    plan = build_plan(recipe)
    rank, world = rank_world()
    if world > 1:
        ensure_process_group()
    if rank == 0:
        write_run_files(plan, run_dir)
    barrier()
    # a parent that only launches workers trains nothing itself: a plain CPU strategy, no process group
    external = launcher != "inline"
    ctx = context(plan, run_dir, strategy=Strategy("cpu") if external else None)
    with ctx.progress:
        if force_stage and rank == 0:
            forced = force(plan, run_dir, force_stage, ctx)
            counts = {k: sum(t.kind == k for t in forced) for k in STAGES}
            ctx.progress.line("--force " + force_stage + ": recomputing " +
                              ", ".join(f"{n} {k} task(s)" for k, n in counts.items() if n))
        barrier()
        ctx.forced = forced_tasks(plan, run_dir, ctx)
        status = statuses(ctx)
        todo = [plan.tasks[t] for t, s in status.items() if s != "done"]
        stale = [t for t, s in status.items() if s == "stale" and t not in ctx.forced]
        summary = RunSummary(Path(run_dir), len(plan.cells), len(plan.tasks), done_before=len(plan.tasks) - len(todo))
        if stale and rank == 0:
            ctx.progress.line(f"{len(stale)} task(s) are stale (their data or inputs changed since they ran) "
                              "and will be recomputed: " + ", ".join(plan.tasks[t].label for t in stale[:5]))
        ctx.progress.line(f"{recipe.name}: {len(plan.cells)} cell(s), {len(plan.tasks)} task(s), "
                          f"{summary.done_before} done, {len(todo)} to run ({launcher})")
        if todo:
            check_before_work(ctx, todo, build_guide=launcher != "slurm")
            summary.ran = execute(launcher, plan, ctx, todo, workers=workers, nproc_per_node=nproc_per_node,
                                  nnodes=nnodes, launcher_args=launcher_args or [], wait=wait)
    summary.seconds = time.perf_counter() - started
    return summary


LAUNCHERS = ("inline", "local", "torchrun", "deepspeed", "slurm")


def execute(launcher: str, plan: Plan, ctx, todo: list[Task], **options: Any) -> list[str]:
    import importlib

    if launcher not in LAUNCHERS:
        raise HarnessError(f"unknown launcher {launcher!r}", f"use one of: {', '.join(LAUNCHERS)}")
    return importlib.import_module(f"harness.exec.{launcher}").execute(plan, ctx, todo, **options)
