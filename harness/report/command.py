"""The ``harness report`` command (registered by ``harness/cli.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from harness.errors import HarnessError


def report_command(
    run_dir: Path = typer.Argument(..., help="a run folder written by `harness run`"),
    format: str = typer.Option("all", "--format", help="md, latex, html or all (comma-separated)"),
    with_published: bool = typer.Option(
        False, "--with-published", help="show the papers' published numbers beside ours (marked †)"),
    baseline: Optional[List[Path]] = typer.Option(
        None, "--baseline", help="published-numbers YAML (repeatable; default: the recipes' baselines, else "
                                 "every file in baselines/)"),
) -> None:
    """Write every table (md, LaTeX) and figure, and report.html, from the records in RUN_DIR."""
    from harness.report.writer import parse_formats, recipe_baselines, write_report

    if not (run_dir / "cells").is_dir():
        raise HarnessError(f"{run_dir} has no cells/ folder", "pass a run folder written by `harness run`")
    formats = parse_formats(format)
    if with_published and not baseline:
        baseline = recipe_baselines(run_dir) or None
    written = write_report(run_dir, formats, with_published=with_published or bool(baseline), baselines=baseline)
    from harness.ui.console import output_console

    console = output_console()
    if "md" in written:
        console.print(written["md"].read_text(), markup=False, highlight=False)
    console.print("[bold green]wrote[/] " + ", ".join(str(p) for p in written.values()))
