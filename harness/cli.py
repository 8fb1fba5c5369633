"""The ``harness`` command: run, plan, report, worker, and the commands that live beside their code
(eval, dehaze, models, doctor), which are imported only when invoked, so ``harness --help`` and
``harness plan`` do not pay for torch until they need it.

Errors: a ``HarnessError`` anywhere becomes one red line on stderr and exit code 2; a training loop
stopped by SIGTERM/SIGUSR1 (its state saved) exits with 75 so a scheduler can requeue it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

from harness.errors import EXIT_BAD_INPUT, EXIT_PREEMPTED, HarnessError


# name -> (module:attribute, one-line help): imported only when the command runs
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("harness.metrics.evaluate:eval_command", "Score a folder of images (e.g. other methods' outputs)."),
    "dehaze": ("harness.dehaze:dehaze_command", "Restore a folder of images at full resolution."),
    "models": ("harness.models.catalog:models_command", "Backbones with parameters, FLOPs and LoRA sites."),
    "doctor": ("harness.doctor:doctor_command", "torch/CUDA, launchers, where weights are looked for; a recipe's needs."),
    "report": ("harness.report.command:report_command", "Tables (md, LaTeX), figures and an HTML page from a run's records."),
    "guide": ("harness.guide.commands:guide_app", "Probe a guide before training with it; tune a CLIP into one."),
}


class LazyGroup(TyperGroup):
    """A typer group whose plugin commands are imported on first use (help text from the table)."""

    def list_commands(self, ctx) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx, name: str):
        if name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        target, _ = LAZY_COMMANDS[name]
        module, attribute = target.split(":")
        obj = getattr(importlib.import_module(module), attribute)
        if isinstance(obj, typer.Typer):
            cmd = typer.main.get_group(obj)
        else:
            single = typer.Typer(add_completion=False)
            single.command(name)(obj)
            cmd = typer.main.get_command(single)
        cmd.name = name
        return cmd

    def invoke(self, ctx):
        """Every command: a HarnessError is one line and exit 2; a preempted loop exits 75."""
        from harness.errors import Preempted

        try:
            return super().invoke(ctx)
        except HarnessError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except Preempted as stop:
            typer.echo(f"stopped: {stop}", err=True)
            raise typer.Exit(EXIT_PREEMPTED) from None

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS:
                rows.append((name, LAZY_COMMANDS[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=80)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(cls=LazyGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Adapt dehazing networks from synthetic to real haze, score them, tabulate them.")


@app.callback()
def _start() -> None:
    # before torch is imported: each process gets its share of the cores (harness/launch/threads.py)
    from harness.launch.threads import apply_thread_share

    apply_thread_share()


def _load(recipe: Path, overrides: list[str] | None, check_paths: bool = True):
    from harness.validate import load_recipe

    return load_recipe(recipe, overrides, check_paths=check_paths)


def _console():
    from harness.ui.console import output_console

    return output_console()


@app.command("run")
def run_command(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the recipe's out, or results/<name>)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, key.path=value (repeatable)"),
    launcher: str = typer.Option("inline", "--launcher",
                                 help="inline (this process), local (a pool of workers), torchrun, deepspeed, slurm"),
    workers: int = typer.Option(1, "--workers", help="local: worker processes (on a GPU node: cells at once)"),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="torchrun/deepspeed: processes per node"),
    nnodes: int = typer.Option(1, "--nnodes", help="torchrun/deepspeed: nodes"),
    launcher_arg: Optional[List[str]] = typer.Option(None, "--launcher-arg",
                                                     help="passed through to torchrun/deepspeed/sbatch (repeatable)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="single, ddp or deepspeed (default: recipe)"),
    force: Optional[str] = typer.Option(None, "--force", help="recompute a stage and all after it: pretrain, adapt or score"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and list the cells (slurm: print the sbatch scripts)"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs and write the report"),
) -> None:
    """Train, adapt and score every cell of RECIPE that is not done, then write the report."""
    from harness import runner
    from harness.launch.distributed import rank_world
    from harness.report.writer import write_report

    spec = _load(recipe, set_)
    run_dir = out or spec.run_dir()
    if dry_run:
        _print_plan(spec, run_dir, launcher=launcher, nproc_per_node=nproc_per_node)
        return
    if launcher == "deepspeed":
        strategy = strategy or "deepspeed"
    summary = runner.run(spec, run_dir, launcher=launcher, workers=workers, nproc_per_node=nproc_per_node,
                         nnodes=nnodes, force_stage=force, strategy=strategy, launcher_args=launcher_arg, wait=wait)
    if rank_world()[0] != 0 or (launcher == "slurm" and not wait):
        return
    written = write_report(run_dir, ("md", "latex", "html"), baselines=spec.baselines or None)
    console = _console()
    console.print(written["md"].read_text(), markup=False, highlight=False)
    console.print(f"done: {len(summary.ran)} task(s) run, {summary.done_before} of {summary.tasks} already done, "
                  f"{summary.cells} cell(s) in {summary.seconds:.1f}s -> {run_dir}/cells, {written['md']}, "
                  f"{written['latex']}", markup=False, highlight=False)


def _print_plan(spec, run_dir: Path, launcher: str = "inline", nproc_per_node: int = 1) -> None:
    from rich.table import Table

    from harness import runner
    from harness.plan.graph import build_plan
    from harness.stages import statuses

    plan = build_plan(spec)
    ctx = runner.context(plan, run_dir)
    status = statuses(ctx, tolerant=True)
    console = _console()
    table = Table(title=f"{spec.name}: {len(plan.cells)} cell(s), {len(plan.tasks)} task(s) -> {run_dir}")
    for col in ("#", "id", "backbone", "pretrain", "target", "method", "seed", "pretrain", "adapt", "score"):
        table.add_column(col)
    for cell in plan.cells:
        stages = [status[f"pretrain:{cell.pretrain_id}"], status[f"adapt:{cell.adapt_id}"], status[f"score:{cell.id}"]]
        table.add_row(str(cell.index), cell.id, *cell.labels.values(), str(cell.seed), *stages)
    console.print(table)
    done = sum(s == "done" for s in status.values())
    console.print(f"{done} of {len(status)} task(s) done, {len(status) - done} to run "
                  f"in {len(plan.levels())} level(s)", markup=False)
    if launcher == "slurm":
        from harness.exec.slurm import sbatch_scripts

        todo = [plan.tasks[t] for t, s in status.items() if s != "done"]
        for name, script in sbatch_scripts(plan, Path(run_dir), todo, nproc_per_node=nproc_per_node):
            console.print(f"# ---- {name}\n{script}", markup=False, highlight=False)


@app.command("plan")
def plan_command(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to check for finished cells"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, key.path=value (repeatable)"),
) -> None:
    """List the cells RECIPE expands to, with their ids and which stages are done (missing data only warns)."""
    from harness.recipe import missing_paths

    spec = _load(recipe, set_, check_paths=False)
    _print_plan(spec, out or spec.run_dir())
    for key, folder in missing_paths(spec):
        print(f"warning: {key}.root {folder} does not exist yet; `harness run` will stop there")


@app.command("worker", hidden=True)
def worker_command(
    run_dir: Path = typer.Argument(..., help="the run folder the parent prepared"),
    plan: str = typer.Option(..., "--plan", help="recipe hash of the plan in RUN_DIR/plans/"),
    task: Optional[List[str]] = typer.Option(None, "--task", help="task id to run (repeatable)"),
    task_list: Optional[Path] = typer.Option(None, "--task-list", help="file of task ids, one per line (Slurm)"),
    index: Optional[int] = typer.Option(None, "--index", help="which line of --task-list ($SLURM_ARRAY_TASK_ID)"),
    all_tasks: bool = typer.Option(False, "--all", help="every task that is not done, in order"),
) -> None:
    """Run tasks of a planned run (what executors start; not for direct use)."""
    from harness.exec.worker import work

    ids = list(task or [])
    if task_list is not None:
        lines = [t for t in task_list.read_text().split() if t]
        if index is None or not 0 <= index < len(lines):
            raise HarnessError(f"--index {index} is not a line of {task_list} ({len(lines)} tasks)",
                               "pass --index 0..N-1 ($SLURM_ARRAY_TASK_ID)")
        ids.append(lines[index])
    work(run_dir, plan, ids, all_tasks)


def main() -> None:
    """Entry point (``harness``): the typer app; errors are handled by ``LazyGroup.invoke``."""
    app()


if __name__ == "__main__":
    main()
