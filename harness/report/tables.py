"""Comparison tables (markdown and LaTeX) built only from the cell records of a run folder.

Rows are backbone x pretrain x target x method (only the axes that vary are shown); seeds are
averaged (mean +- std when there are several). Metric columns carry their direction and the best
value of each column within a backbone/pretrain/target group is bold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.store import RunStore, atomic_write_bytes

AXES = ("backbone", "pretrain", "target", "method")
METRIC_NAMES = {"fade": "FADE", "entropy": "Entropy", "psnr": "PSNR", "ssim": "SSIM", "musiq": "MUSIQ",
                "biqme": "BIQME"}
EFFICIENCY = [  # (record key, header, scale, digits; None = whole number with separators)
    ("train_seconds", "Train time (s)", 1.0, 1),
    ("params_total", "Params (M)", 1e-6, 3),
    ("params_trainable", "Trainable", 1.0, None),
    ("flops_256", "FLOPs@256 (G)", 1e-9, 2),
    ("runtime_ms_256", "Runtime@256 (ms)", 1.0, 1),
    ("peak_mem_mb", "Peak mem (MB)", 1.0, 0),
]


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record: the axes, the seed, ``<benchmark>/<metric>`` means and efficiency."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {axis: rec["cell"]["labels"][axis] for axis in AXES}
        row["seed"] = rec["cell"]["seed"]
        for bench, scores in rec["metrics"].items():
            for metric, value in scores.items():
                row[f"{bench}/{metric}"] = value
        row.update(rec["efficiency"])
        rows.append(row)
    return pd.DataFrame(rows)


def _directions(records: list[dict[str, Any]]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for rec in records:
        out.update(rec.get("metric_directions", {}))
    return out


def comparison_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[int]]:
    """Headers, formatted rows and the row indices that start a new group."""
    frame = records_frame(records)
    if frame.empty:
        return [], [], []
    directions = _directions(records)
    metric_cols = [c for c in frame.columns if "/" in c]
    eff_cols = [c for c, *_ in EFFICIENCY if c in frame.columns]
    shown_axes = [a for a in AXES if frame[a].nunique() > 1 or a == "method"]
    group_axes = [a for a in shown_axes if a != "method"]
    grouped = frame.groupby(list(AXES), sort=False)
    mean = grouped[metric_cols + eff_cols].mean(numeric_only=True)
    std = grouped[metric_cols + eff_cols].std(numeric_only=True)
    seeds = grouped["seed"].count()
    mean = mean.reset_index()
    std = std.reset_index()
    bench_count = len({c.split("/")[0] for c in metric_cols})

    def metric_header(col: str) -> str:
        bench, metric = col.split("/", 1)
        arrow = {True: "↓", False: "↑"}.get(directions.get(metric), "")
        name = METRIC_NAMES.get(metric, metric) + arrow
        return f"{bench} {name}" if bench_count > 1 else name

    headers = [a.capitalize() for a in shown_axes] + [metric_header(c) for c in metric_cols]
    headers += [h for c, h, *_ in EFFICIENCY if c in eff_cols]

    best: dict[tuple, dict[str, float]] = {}
    for key, group in mean.groupby(group_axes, sort=False) if group_axes else [((), mean)]:
        key = key if isinstance(key, tuple) else (key,)
        best[key] = {}
        for col in metric_cols:
            lower = directions.get(col.split("/", 1)[1])
            values = group[col].dropna()
            if lower is not None and len(values) > 1:
                best[key][col] = values.min() if lower else values.max()

    rows, starts, previous = [], [], None
    for i, row in mean.iterrows():
        key = tuple(row[a] for a in group_axes)
        if key != previous:
            starts.append(len(rows))
            previous = key
        cells = [str(row[a]) for a in shown_axes]
        n = seeds.iloc[i]
        for col in metric_cols:
            value = row[col]
            if pd.isna(value):
                cells.append("n/a")
                continue
            text = f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"
            if n > 1 and not pd.isna(std.loc[i, col]):
                text += f" ± {std.loc[i, col]:.3f}"
            if best.get(key, {}).get(col) == value:
                text = f"**{text}**"
            cells.append(text)
        for col, _, scale, digits in EFFICIENCY:
            if col in eff_cols:
                value = row[col]
                if pd.isna(value):
                    cells.append("n/a")
                else:
                    cells.append(f"{value * scale:,.0f}" if digits is None else f"{value * scale:.{digits}f}")
        rows.append(cells)
    return headers, rows, starts


def to_markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$"), ("@", "@")):
        text = text.replace(a, b)
    return text


def to_latex(headers: list[str], rows: list[list[str]], starts: list[int], caption: str) -> str:
    def cell(text: str) -> str:
        if text.startswith("**") and text.endswith("**"):
            return r"\textbf{" + _latex_escape(text[2:-2]) + "}"
        return _latex_escape(text)

    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + _latex_escape(caption) + "}",
             r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{" + "l" * len(headers) + "}", r"\toprule",
             " & ".join(cell(h) for h in headers) + r" \\", r"\midrule"]
    for i, r in enumerate(rows):
        if i in starts and i > 0:
            lines.append(r"\midrule")
        lines.append(" & ".join(cell(c) for c in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


FOOTNOTE = ("FLOPs follow torch's FlopCounterMode (one multiply-add = 2 FLOPs; papers quoting thop report "
            "multiply-adds, i.e. half). Params and FLOPs are of the deployed model (adapters merged). "
            "Train time is the adaptation time of the method.")


def write_report(run_dir: str | Path, formats: tuple[str, ...] = ("md", "latex"),
                 baselines: list[Path] | None = None) -> dict[str, Path]:
    """Write ``report.md`` / ``report.tex`` into ``run_dir`` from its records; return the paths.

    ``baselines`` are published-number files shown beside ours where columns match.
    """
    from harness.report.baselines import baselines_markdown

    store = RunStore(run_dir)
    records = store.records()
    headers, rows, starts = comparison_table(records)
    name = records[0]["provenance"].get("recipe", store.root.name) if records else store.root.name
    from harness.report.figures import write_figures

    figures = write_figures(records, store.root)
    written: dict[str, Path] = {f"figure:{k}": v for k, v in figures.items()}
    if "md" in formats:
        body = f"# {name}: comparison\n\n"
        body += (to_markdown(headers, rows) + f"\n{FOOTNOTE}\n") if rows else "No finished cells yet.\n"
        body += "".join(f"\n![{k}]({v.name})\n" for k, v in figures.items())
        if baselines and records:
            body += baselines_markdown(baselines, [c for c in records_frame(records).columns if "/" in c])
        path = store.root / "report.md"
        atomic_write_bytes(path, body.encode())
        written["md"] = path
    if "latex" in formats:
        body = to_latex(headers, rows, starts, f"{name}: comparison") if rows else "% no finished cells\n"
        path = store.root / "report.tex"
        atomic_write_bytes(path, body.encode())
        written["latex"] = path
    return written
