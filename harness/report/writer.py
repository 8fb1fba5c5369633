"""``harness report``: every table and figure a run folder's records support, as markdown
(``report.md``), LaTeX (``report.tex``, a standalone document, plus one ``tables/<name>.tex`` per
table to ``\\input`` into a paper) and one static HTML page (``report.html``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.report.baselines import (add_published_columns, add_published_rows, default_baselines, load_baseline,
                                      published_tables)
from harness.report.figures import samples, write_figures
from harness.report.frame import Table, groups_of
from harness.report.html import write_html
from harness.report.per_image import per_image_table
from harness.report.render import latex_escape, to_latex, to_markdown
from harness.report.tables import all_tables
from harness.store import RunStore, atomic_write_bytes

FORMATS = {"md": ("md",), "latex": ("latex",), "html": ("html",), "both": ("md", "latex"),
           "all": ("md", "latex", "html")}


def parse_formats(text: str) -> tuple[str, ...]:
    formats: list[str] = []
    for part in text.split(","):
        if part.strip() not in FORMATS:
            raise HarnessError(f"unknown --format {part.strip()!r}", "use md, latex, html or all (comma-separated)")
        formats += [f for f in FORMATS[part.strip()] if f not in formats]
    return tuple(formats)


def recipe_baselines(run_dir: Path) -> list[Path]:
    """The ``baselines:`` of every recipe kept in the run folder (``recipes/*.yaml``, ``recipe.yaml``)."""
    files = sorted((run_dir / "recipes").glob("*.yaml")) + [run_dir / "recipe.yaml"]
    found: list[Path] = []
    for f in (f for f in files if f.is_file()):
        for p in (yaml.safe_load(f.read_text()) or {}).get("baselines") or []:
            if Path(p) not in found:
                found.append(Path(p))
    return found


def _name(records: list[dict[str, Any]], run_dir: Path) -> str:
    names = list(dict.fromkeys(r.get("provenance", {}).get("recipe", "") for r in records))
    return " + ".join(n for n in names if n) or run_dir.name


def build(records: list[dict[str, Any]], with_published: bool = False,
          baselines: list[Path] | None = None) -> tuple[list[Table], list[Table]]:
    """(our tables with published rows/columns beside where comparable, the published tables)."""
    tables = all_tables(records, hours=with_published)
    if not with_published:
        return tables, []
    published = [load_baseline(p) for p in (baselines or default_baselines())]
    for table in tables:
        if table.name == "comparison":
            add_published_rows(table, published, "comparison")
        elif table.name == "ablation":
            add_published_rows(table, published, "ablation")
        elif table.name.startswith("efficiency"):
            add_published_columns(table, published)  # published rows/columns take no part in the ranking
    return tables, published_tables(published)


def write_report(run_dir: str | Path, formats: tuple[str, ...] = ("md", "latex"), with_published: bool = False,
                 baselines: list[Path] | None = None) -> dict[str, Path]:
    """Write the report files into ``run_dir``; return {"md" | "latex" | "html" | "figure:<name>": path}.

    Published numbers are shown with ``with_published`` or when ``baselines`` files are given.
    """
    store = RunStore(run_dir)
    root = store.root
    records = store.records()
    with_published = with_published or bool(baselines)
    groups = groups_of(records)
    tables, appendix = build(records, with_published, baselines)
    tables += [t for t in (per_image_table(records, root, groups),) if t is not None]
    figures = write_figures(records, root) if records else {}
    name = _name(records, root)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary = (f"{len(records)} record(s), {len(groups)} cell identities, written {stamp} by `harness report` "
               f"from {root}/cells.")
    written: dict[str, Path] = {f"figure:{k}": v for k, v in figures.items()}
    if "md" in formats:
        body = [f"# {name}", "", summary, ""]
        body += [to_markdown(t) for t in tables] or ["No finished cells yet.\n"]
        if figures:
            body += ["## Figures", ""] + [f"![{k}]({v.relative_to(root).as_posix()})\n" for k, v in figures.items()]
        if appendix:
            body += ["## Published tables (as printed)", ""] + [to_markdown(t) for t in appendix]
        written["md"] = _write(root / "report.md", "\n".join(body))
    if "latex" in formats:
        written["latex"] = _write_latex(root, name, summary, tables + appendix, figures)
    if "html" in formats:
        path = write_html(root / "report.html", name, summary, tables, figures, samples(groups), appendix)
        written["html"] = path
    return written


def _write(path: Path, text: str) -> Path:
    atomic_write_bytes(path, text.encode())
    return path


def _write_latex(root: Path, name: str, summary: str, tables: list[Table], figures: dict[str, Path]) -> Path:
    """``tables/<name>.tex`` per table and ``report.tex``, a document that inputs them all."""
    body = [r"\documentclass{article}", r"\usepackage[T1]{fontenc}", r"\usepackage{booktabs,graphicx,amssymb}",
            r"\usepackage[margin=2cm]{geometry}", r"\begin{document}",
            r"\section*{" + latex_escape(name) + "}", latex_escape(summary), ""]
    for table in tables:
        _write(root / "tables" / f"{table.name}.tex", to_latex(table))
        body.append(r"\input{tables/" + table.name + "}")
    for key, png in figures.items():
        pdf = png.with_suffix(".pdf").relative_to(root).as_posix()
        body += [r"\begin{figure}[t]", r"\centering", r"\includegraphics[width=\linewidth]{" + pdf + "}",
                 r"\caption{" + latex_escape(key) + "}", r"\end{figure}"]
    body += [r"\clearpage" if figures else "", r"\end{document}"]
    return _write(root / "report.tex", "\n".join(body) + "\n")
