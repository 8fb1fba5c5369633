"""Published numbers (``baselines/*.yaml``) beside ours, and the published tables as printed.

A published value goes into one of our columns only where it measures the same thing: the same
benchmark (names compared without case and punctuation, so ``o_haze`` matches ``O-HAZE``) and
metric, and for an Average the same set of benchmarks. Published rows are marked ``†``, sit in a
section of their own and are never ranked or averaged with ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError
from harness.report.frame import (AVERAGE, EFFICIENCY, Cell, Column, Row, Stat, Table, ablation_columns, arrow,
                                  check_marks, norm, stat_text)

BASELINES_DIR = Path(__file__).resolve().parents[2] / "baselines"
KINDS = ("comparison", "efficiency", "ablation", "improvement", "ablation_external_loop")


@dataclass
class Published:
    """One baseline file: its source and its tables (dicts as in the YAML)."""

    path: Path
    source: dict[str, Any]
    tables: list[dict[str, Any]]

    def cite(self, table: dict[str, Any]) -> str:
        return f"{self.source.get('short', self.path.stem)}, {table.get('paper_table', table.get('id'))} " \
               f"({self.source.get('venue', '?')})"


def load_baseline(path: str | Path) -> Published:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"baseline file {path} not found",
                           f"pass a YAML file such as {BASELINES_DIR}/bilalora_paper.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HarnessError(f"baseline file {path} is not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list) \
            or not isinstance(data.get("source"), dict):
        raise HarnessError(f"baseline file {path} needs source: and tables:", "see baselines/bilalora_paper.yaml")
    for i, table in enumerate(data["tables"]):
        if table.get("kind") not in KINDS or not isinstance(table.get("rows"), list):
            raise HarnessError(f"baseline file {path}: tables[{i}] needs kind (one of {', '.join(KINDS)}) and rows",
                               "see baselines/bilalora_paper.yaml")
    return Published(path, data["source"], data["tables"])


def default_baselines() -> list[Path]:
    return sorted(BASELINES_DIR.glob("*.yaml"))


def _value(published: dict[str, Any], table: dict[str, Any], column: Column) -> float | None:
    """The published value for one of our metric columns, or None when none measures the same."""
    if "/" not in column.key:
        return None
    bench, metric = column.key.split("/", 1)
    for key, value in published.get("values", {}).items():
        if "/" not in key or value is None:
            continue
        pbench, pmetric = key.split("/", 1)
        if norm(pmetric) != norm(metric):
            continue
        if bench == AVERAGE:
            if pbench == AVERAGE and {norm(b) for b in column.over} == {norm(b) for b in table.get("average_of", [])}:
                return float(value)
        elif norm(pbench) == norm(bench):
            return float(value)
    return None


def _check_marks(prow: dict[str, Any]) -> dict[str, Cell]:
    return check_marks(prow["positive"], prow["negative"], prow["positioning"]) if "positioning" in prow else {}


def add_published_rows(table: Table, baselines: list[Published], kind: str) -> None:
    """Append the rows of every published ``kind`` table that shares a column with ``table``."""
    for pub in baselines:
        for ptable in (t for t in pub.tables if t["kind"] == kind):
            section = f"Published: {pub.cite(ptable)}"
            rows = []
            for prow in ptable["rows"]:
                cells = {c.key: Cell(Stat(v, None, 1)) for c in table.columns
                         if (v := _value(prow, ptable, c)) is not None}
                if not cells:
                    continue
                if kind == "ablation":
                    if "positioning" not in prow:
                        continue
                    cells.update(_check_marks(prow))
                rows.append(Row(prow["method"], cells, section=section, group=prow.get("group", ""),
                                published=True, note=pub.cite(ptable)))
            table.rows += rows


def add_published_columns(table: Table, baselines: list[Published]) -> None:
    """Beside our Table 1 (rows are quantities): the paper's methods and its Rate, as printed."""
    for pub in baselines:
        for ptable in (t for t in pub.tables if t["kind"] == "efficiency"):
            quantities = ptable.get("quantities", {})
            new = [Column(f"pub:{pub.path.stem}:{i}", f"{prow['method']} †", published=True)
                   for i, prow in enumerate(ptable["rows"])]
            rate = Column(f"pub:{pub.path.stem}:rate", "Rate †", published=True)
            placed: set[str] = set()
            for row in [r for r in table.rows if r.quantity is not None] + _missing_rows(table, ptable):
                q = row.quantity
                for col, prow in zip(new, ptable["rows"]):
                    value, printed = _quantity(prow, ptable, q, quantities)
                    if value is not None:
                        row.cells[col.key] = Cell(Stat(value, None, 1), text=_shown(value, q, ptable, printed))
                        row.cells[rate.key] = Cell(text=ptable.get("rate_as_printed", {}).get(printed, ""))
                        placed.add(printed)
                        if row not in table.rows:
                            last = max((i for i, r in enumerate(table.rows) if r.section == row.section),
                                       default=len(table.rows) - 1)
                            table.rows.insert(last + 1, row)
            if placed:
                table.columns += new + [rate]
                table.notes.append(f"† published numbers, copied from {pub.cite(ptable)}; not measured here. "
                                   + " ".join(ptable.get("notes", [])))


def _shown(value: float, q: Column, ptable: dict[str, Any] | None = None, printed: str = "") -> str:
    """``value`` (record units) in ``q``'s unit, with at least as many decimals as the paper printed."""
    digits = q.digits
    if ptable is not None and printed and digits is not None:
        digits = max(digits, _digits(ptable, printed))
    return stat_text(Stat(value), digits, q.scale)


def _missing_rows(table: Table, ptable: dict[str, Any]) -> list[Row]:
    """Rows for the published quantities that none of our rows measures (ours show n/a there)."""
    quantities = ptable.get("quantities", {})
    ours = [r.quantity for r in table.rows if r.quantity is not None]
    keys = list(dict.fromkeys(k for r in ptable["rows"] for k, v in r.get("values", {}).items() if v is not None))
    rows = []
    for key in keys:
        if any(_quantity(r, ptable, q, quantities)[1] == key for q in ours for r in ptable["rows"]):
            continue
        if "/" in key:
            metric = key.split("/", 1)[1]
            lower = {"lower": True, "higher": False}.get(ptable.get("metrics", {}).get(metric))
            over = tuple(ptable.get("average_of", []))
            q = Column(f"{AVERAGE}/{metric.lower()}", f"{metric}{arrow(lower)} (mean of {', '.join(over)})",
                       lower=lower, digits=_digits(ptable, key), over=over)
            rows.append(Row(q.header, section="Performance", quantity=q))
        elif key in quantities:
            record = quantities[key]["record"]
            header, scale, digits = next(((h, s, d) for k, h, s, d in EFFICIENCY if k == record),
                                         (quantities[key].get("label", key), 1.0, 3))
            q = Column(record, header, digits=digits, scale=scale)
            rows.append(Row(header, {c.key: Cell(text="n/a") for c in table.columns if not c.published},
                            section="Efficiency", quantity=q))
    for row in rows:
        row.cells.update({c.key: Cell(text="n/a") for c in table.columns if not c.published})
    return rows


def _quantity(prow: dict[str, Any], ptable: dict[str, Any], q: Column,
              quantities: dict[str, Any]) -> tuple[float | None, str]:
    """(value in record units, the paper's key) of published row ``prow`` for our quantity ``q``."""
    value = _value(prow, ptable, q)
    if value is not None:
        key = next(k for k in prow["values"] if "/" in k and norm(k.split("/", 1)[1]) == norm(q.key.split("/", 1)[1]))
        return value, key
    for key, spec in quantities.items():
        if spec.get("record") == q.key and prow["values"].get(key) is not None:
            return float(prow["values"][key]) * float(spec.get("scale", 1)), key
    return None, ""


def published_tables(baselines: list[Published]) -> list[Table]:
    """Every published table as printed (the paper's own best/second marks recomputed)."""
    out = []
    for pub in baselines:
        for ptable in pub.tables:
            metrics = {m: {"lower": True, "higher": False}.get(d) for m, d in ptable.get("metrics", {}).items()}
            columns = []
            if ptable["kind"] == "ablation" and any("positioning" in r for r in ptable["rows"]):
                columns += ablation_columns()
            keys = list(dict.fromkeys(k for r in ptable["rows"] for k in r.get("values", {})))
            for key in keys:
                bench, _, metric = key.partition("/")
                lower = metrics.get(metric) if metric else None
                label = ptable.get("quantities", {}).get(key, {}).get("label", key)
                digits = _digits(ptable, key)
                columns.append(Column(key, metric + arrow(lower) if metric else label, bench if metric else "",
                                      lower, digits, ranked=ptable["kind"] in ("comparison", "ablation")))
            if ptable["kind"] == "efficiency" and ptable.get("rate_as_printed"):
                columns.append(Column("rate", "Rate (as printed)", align="r"))
            table = Table(f"published_{pub.path.stem}_{ptable['id']}", f"Published: {pub.cite(ptable)}", columns,
                          notes=[ptable.get("caption", "")] + list(ptable.get("notes", [])))
            for prow in ptable["rows"]:
                cells = {k: Cell(Stat(None if v is None else float(v), None, 1))
                         for k, v in prow.get("values", {}).items()}
                cells.update(_check_marks(prow))
                label = prow["method"] + (f" {prow['cite']}" if prow.get("cite") else "") + \
                    (f" ({prow['venue']})" if prow.get("venue") else "")
                table.rows.append(Row(label, cells, group=prow.get("group", "")))
            if ptable["kind"] == "efficiency":
                table = _transposed(table, ptable)
            table.rank()
            out.append(table)
    return out


def _digits(ptable: dict[str, Any], key: str) -> int | None:
    """As many decimals as the paper prints for this column (YAML drops trailing zeros)."""
    decimals = [len(repr(float(r["values"][key])).split(".")[1]) for r in ptable["rows"]
                if r.get("values", {}).get(key) is not None]
    longest = max(decimals, default=3)
    return max(longest, 2) if "SSIM" not in key else 4


def _transposed(table: Table, ptable: dict[str, Any]) -> Table:
    """Table 1 as printed: quantities as rows, the methods (and the Rate) as columns."""
    methods = [Column(f"m{i}", r.label) for i, r in enumerate(table.rows)]
    rate = ptable.get("rate_as_printed", {})
    out = Table(table.name, table.title, methods + ([Column("rate", "Rate")] if rate else []), notes=table.notes,
                label_header="Metric")
    for col in (c for c in table.columns if c.key != "rate"):
        cells = {m.key: Cell(r.cells[col.key].stat, text=_shown(r.cells[col.key].stat.mean, col))
                 for m, r in zip(methods, table.rows) if col.key in r.cells and r.cells[col.key].stat.mean is not None}
        if rate:
            cells["rate"] = Cell(text=rate.get(col.key, ""))
        header = f"{col.header} ({col.group})" if col.group else col.header
        out.rows.append(Row(header, cells, section="Performance" if col.group else "Efficiency"))
    return out
