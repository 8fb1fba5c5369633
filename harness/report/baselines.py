"""Published reference numbers (``baselines/*.yaml``) placed beside a run's measured ones.

A baseline file lists tables of rows whose keys are ``<Benchmark>/<Metric>`` (as in our records)
plus descriptive fields. Columns are matched to the run's ``<benchmark>/<metric>`` columns
case-insensitively, so a run with an ``rtts`` benchmark and a ``fade`` metric shows the paper's
``RTTS/FADE`` values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError


def load_baseline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"baseline file {path} not found", "point baselines: at a YAML file under baselines/")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise HarnessError(f"baseline file {path} has no tables: list", "see baselines/bilalora_paper.yaml")
    return data


def published_table(data: dict[str, Any], measured_columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Rows of published values for the measured ``bench/metric`` columns that the file also has."""
    wanted = {c.lower(): c for c in measured_columns}
    headers: list[str] = []
    rows: list[list[str]] = []
    for table in data["tables"]:
        for row in table.get("rows", []):
            hits = {wanted[k.lower()]: v for k, v in row.items() if k.lower() in wanted}
            if not hits:
                continue
            for col in measured_columns:
                if col in hits and col not in headers:
                    headers.append(col)
            label = row.get("method") or row.get("label_probable") or "?"
            rows.append([f"{label} ({table.get('paper_table', table.get('id'))})", hits])
    cols = [c for c in measured_columns if c in headers]
    formatted = [[label, *(str(values.get(c, "")) for c in cols)] for label, values in rows]
    return (["Published"] + cols if formatted else []), formatted


def baselines_markdown(paths: list[Path], measured_columns: list[str]) -> str:
    """A markdown section per baseline file that shares columns with the run ('' if none)."""
    from harness.report.tables import to_markdown

    parts = []
    for path in paths:
        data = load_baseline(path)
        headers, rows = published_table(data, measured_columns)
        if rows:
            title = data.get("source", {}).get("title", Path(path).stem)
            parts.append(f"\n## Published reference: {title}\n\n" + to_markdown(headers, rows))
    return "".join(parts)
