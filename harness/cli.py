"""The ``harness`` command: run, plan, report, eval, dehaze, models, doctor."""

from __future__ import annotations

import functools
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="Adapt dehazing networks from synthetic to real haze, score them, tabulate them.")
console = Console()
err_console = Console(stderr=True)


def one_line_errors(fn: Callable) -> Callable:
    """Turn a HarnessError into one red line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HarnessError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def command(name: str):
    return lambda fn: app.command(name)(one_line_errors(fn))


def _load(recipe: Path, overrides: list[str] | None, check_paths: bool = True):
    from harness.recipe import load_recipe

    return load_recipe(recipe, overrides, check_paths=check_paths)


@command("run")
def run_command(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/quickstart.yaml"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default: the recipe's out, or results/<name>)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, key.path=value (repeatable)"),
    force: bool = typer.Option(False, "--force", help="recompute cells that already have a record"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate and list the cells, run nothing"),
) -> None:
    """Train, adapt and score every cell of RECIPE, then write the report into the run folder."""
    from harness.launch.distributed import rank_world
    from harness.recipe import expand
    from harness.report.tables import write_report
    from harness.runner import RecipeRunner

    spec = _load(recipe, set_)
    run_dir = out or spec.run_dir()
    if dry_run:
        _print_plan(spec, run_dir)
        return
    started = time.perf_counter()
    runner = RecipeRunner(spec, run_dir, console=console)
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "command.txt").write_text(shlex.join(sys.argv) + "\n")
    summary = runner.run(force=force)
    rank, world = rank_world()
    if world > 1 and not all(runner.store.is_done(c.id) for c in expand(spec)):
        # another rank still has cells; whichever rank finds every record present writes the report
        console.print(f"rank {rank}: {len(summary.ran)} cell(s) run, {summary.skipped} already finished; "
                      "the rank that finishes last writes the report")
        return
    written = write_report(run_dir, baselines=spec.baselines)
    console.print(written["md"].read_text(), markup=False, highlight=False)
    console.print(
        f"[bold green]done[/] {len(summary.ran)} cell(s) run, {summary.skipped} already finished, "
        f"of {summary.total} in {time.perf_counter() - started:.1f}s -> {run_dir}/cells, "
        f"{written['md']}, {written['latex']}"
    )


def _print_plan(spec, run_dir: Path) -> None:
    from harness.recipe import expand
    from harness.store import RunStore

    store = RunStore(run_dir)
    cells = expand(spec)
    table = Table(title=f"{spec.name}: {len(cells)} cell(s) -> {run_dir}")
    for col in ("#", "id", "backbone", "pretrain", "target", "method", "seed", "status"):
        table.add_column(col)
    done = 0
    for c in cells:
        finished = store.is_done(c.id)
        done += finished
        table.add_row(str(c.index), c.id, *c.labels.values(), str(c.seed),
                      "[green]done[/]" if finished else "todo")
    console.print(table)
    console.print(f"{done} done, {len(cells) - done} to run")


@command("plan")
def plan_command(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    out: Optional[Path] = typer.Option(None, "--out", help="run folder to check for finished cells"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, key.path=value (repeatable)"),
) -> None:
    """List the cells RECIPE expands to, with their ids and which are done (missing data only warns)."""
    from harness.recipe import missing_paths

    spec = _load(recipe, set_, check_paths=False)
    _print_plan(spec, out or spec.run_dir())
    for key, folder in missing_paths(spec):
        console.print(f"[yellow]warning:[/] {key}.root {folder} does not exist yet; `harness run` will stop there")


@command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="a run folder written by `harness run`"),
    format: str = typer.Option("both", "--format", help="md, latex or both"),
    baseline: Optional[List[Path]] = typer.Option(
        None, "--baseline", help="published-numbers YAML to show beside ours (default: the recipe's baselines)"),
) -> None:
    """Write comparison tables from the records in RUN_DIR."""
    import yaml

    from harness.report.tables import write_report

    if not (run_dir / "cells").is_dir():
        raise HarnessError(f"{run_dir} has no cells/ folder", "pass a run folder written by `harness run`")
    formats = {"md": ("md",), "latex": ("latex",), "both": ("md", "latex")}.get(format)
    if formats is None:
        raise HarnessError(f"unknown --format {format!r}", "use md, latex or both")
    if baseline is None and (run_dir / "recipe.yaml").is_file():
        baseline = [Path(p) for p in (yaml.safe_load((run_dir / "recipe.yaml").read_text()) or {}).get("baselines", [])]
    written = write_report(run_dir, formats, baselines=baseline)
    if "md" in written:
        console.print(written["md"].read_text(), markup=False, highlight=False)
    console.print("[bold green]wrote[/] " + ", ".join(str(p) for p in written.values()))


def _register_plugin_commands() -> None:
    """Commands whose functions live beside the code they drive."""
    from harness.dehaze import dehaze_command
    from harness.doctor import doctor_command
    from harness.guide.commands import register as register_guide_commands
    from harness.metrics.evaluate import eval_command
    from harness.models.catalog import models_command

    command("eval")(eval_command)
    command("models")(models_command)
    command("doctor")(doctor_command)
    command("dehaze")(dehaze_command)
    register_guide_commands(app, one_line_errors)


_register_plugin_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
