"""What every report module shares: records read into cell groups, the metric catalogue and the
table model that the tables, the published baselines and the renderers exchange.

A *group* is one cell identity, ``cell["group_id"]`` (a hash of the cell without its seed): the
records of its seeds are averaged, never records that only share a display label. Records written
before ``group_id`` existed get it derived the same way (:func:`group_id`). Two groups whose labels
collide within one context (backbone × pretraining × target) get the parameter that differs
appended, e.g. ``full_ft [steps=60]`` and ``full_ft [steps=600]``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from harness.hashing import stable_hash

# ------------------------------------------------------------------ the metric catalogue

# display name, decimals (the paper's: 3 for FADE/BIQME/Entropy, 2 for MUSIQ), lower is better
METRICS: dict[str, tuple[str, int, bool | None]] = {
    "fade": ("FADE", 3, True),
    "biqme": ("BIQME", 3, False),
    "entropy": ("Entropy", 3, False),
    "musiq": ("MUSIQ", 2, False),
    "psnr": ("PSNR", 2, False),
    "ssim": ("SSIM", 4, False),
    "lab_shift": ("Lab shift", 2, True),
    "colourfulness_delta": ("ΔColour", 2, None),
    "luma_ssim_input": ("SSIM-Y in", 3, False),
    "clipped_delta": ("Clipped +%", 2, True),
}
# harness.metrics.sanity's SANITY_METRICS, spelled here so that reports need no torch
SANITY = ("lab_shift", "colourfulness_delta", "luma_ssim_input", "clipped_delta")
# benchmarks in the papers' column order (names compared by :func:`norm`); others follow as met
BENCHMARK_ORDER = ("rtts", "urhi", "fattal", "hazydet", "densehaze", "ohaze", "nhhaze", "sotsindoor", "sotsoutdoor")
AVERAGE = "Average"

# record efficiency key, display name, scale, decimals (None: whole number with separators)
EFFICIENCY: list[tuple[str, str, float, int | None]] = [
    ("train_seconds", "Train time (s)", 1.0, 1),
    ("params_total", "Params (M, deployed)", 1e-6, 3),
    ("params_unmerged", "Params (M, unmerged)", 1e-6, 3),
    ("params_trainable", "Trainable params", 1.0, None),
    ("macs_256", "MACs@256 (G, thop)", 1e-9, 2),
    ("flops_256", "FLOPs@256 (G, torch)", 1e-9, 2),
    ("runtime_ms_256", "Runtime@256 (ms)", 1.0, 2),
    ("peak_mem_mb", "Peak mem (MB)", 1.0, 0),
]
FLOP_NOTE = ("MACs@256 count multiply-adds of one 256×256 image as thop counts them (what the BiLaLoRA "
             "and DEA-Net papers call FLOPs); FLOPs@256 are torch FlopCounterMode's, 2 × MACs. "
             "Deployed counts are of the merged model; unmerged counts add the adapter branches. "
             "Runtime is timed once per architecture in each process, so merged adapters share their backbone's.")


def metric_name(metric: str) -> str:
    return METRICS.get(metric, (metric, 3, None))[0]


def metric_digits(metric: str) -> int:
    return METRICS.get(metric, (metric, 3, None))[1]


def norm(name: str) -> str:
    """``O-HAZE`` / ``o_haze`` -> ``ohaze``: benchmark and metric names compared loosely."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def arrow(lower: bool | None) -> str:
    return {True: "↓", False: "↑"}.get(lower, "")


def paper_order(metrics: Iterable[str]) -> list[str]:
    """Quality metrics first in the paper's order, then the rest as met; sanity metrics last."""
    seen = list(dict.fromkeys(metrics))
    known = [m for m in METRICS if m in seen and m not in SANITY]
    return known + [m for m in seen if m not in METRICS] + [m for m in SANITY if m in seen]


# ------------------------------------------------------------------ records and groups

_NOT_IDENTITY = ("seed", "index", "id", "pretrain_id", "adapt_id", "group_id", "labels")


def identity(cell: dict[str, Any]) -> dict[str, Any]:
    """What makes a cell what it is: the cell without its seed, index, ids and labels."""
    return {k: v for k, v in cell.items() if k not in _NOT_IDENTITY}


def group_id(cell: dict[str, Any]) -> str:
    """The record's ``group_id``, or the stable hash of :func:`identity`."""
    if cell.get("group_id"):
        return str(cell["group_id"])
    return stable_hash(identity(cell))


def context_of(cell: dict[str, Any]) -> str:
    """The identity of what a method is applied to: backbone × pretraining data × target data."""
    return stable_hash({k: cell.get(k) for k in ("backbone", "pretrain", "target")})


@dataclass(frozen=True)
class Stat:
    """A number averaged over seeds: mean, sample standard deviation (None for one seed), count."""

    mean: float | None
    std: float | None = None
    n: int = 0

    @staticmethod
    def of(values: Iterable[float | None]) -> "Stat":
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return Stat(None)
        std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return Stat(float(np.mean(vals)), std, len(vals))


@dataclass
class Group:
    """The records (one per seed) of one cell identity."""

    id: str
    records: list[dict[str, Any]]
    label: str = ""

    @property
    def cell(self) -> dict[str, Any]:
        return self.records[0]["cell"]

    @property
    def method(self) -> dict[str, Any]:
        return self.cell.get("method", {}) or {}

    @property
    def kind(self) -> str:
        return self.method.get("type", "?")

    @property
    def context(self) -> str:
        return context_of(self.cell)

    def axis_label(self, axis: str) -> str:
        labels = self.cell.get("labels", {})
        if axis in labels:
            return str(labels[axis])
        spec = self.cell.get(axis) or {}
        return str(spec.get("label") or spec.get("type") or "?")

    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(b for r in self.records for b in r.get("metrics", {})))

    def value(self, bench: str, metric: str) -> Stat:
        return Stat.of(r.get("metrics", {}).get(bench, {}).get(metric) for r in self.records)

    def average(self, metric: str, benches: list[str]) -> Stat:
        """Per seed the mean over ``benches`` (None if one lacks the metric), then over seeds."""
        per_seed = []
        for r in self.records:
            vals = [r.get("metrics", {}).get(b, {}).get(metric) for b in benches]
            per_seed.append(None if any(v is None for v in vals) else float(np.mean(vals)))
        return Stat.of(per_seed)

    def metric(self, key: str, benches: list[str]) -> Stat:
        """``bench/metric`` or ``Average/metric`` (over ``benches``)."""
        bench, metric = key.split("/", 1)
        return self.average(metric, benches) if bench == AVERAGE else self.value(bench, metric)

    def efficiency(self, key: str) -> Stat:
        return Stat.of(r.get("efficiency", {}).get(key) for r in self.records)

    def h2c_mode(self) -> str:
        return (self.method.get("h2c") or {}).get("mode", "both")


def _merge_same_seed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per seed: a re-scored record of the same cell and seed adds or replaces metrics."""
    by_seed: dict[Any, dict[str, Any]] = {}
    for rec in sorted(records, key=lambda r: r.get("provenance", {}).get("finished_at", "")):
        seed = rec["cell"].get("seed", 0)
        if seed not in by_seed:
            by_seed[seed] = {**rec, "metrics": {b: dict(m) for b, m in rec.get("metrics", {}).items()}}
            continue
        merged = by_seed[seed]
        for bench, scores in rec.get("metrics", {}).items():
            merged["metrics"].setdefault(bench, {}).update(scores)
        for key in ("efficiency", "method_info", "artifacts", "curves", "metric_directions"):
            if rec.get(key):
                merged[key] = {**merged.get(key, {}), **rec[key]}
    return sorted(by_seed.values(), key=lambda r: r["cell"].get("seed", 0))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"h2c": {"mode": "positive"}}`` -> ``{"h2c.mode": "positive"}``."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _differing(cells: list[dict[str, Any]]) -> list[str]:
    flats = [flatten(identity(c)) for c in cells]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    method_first = sorted(keys, key=lambda k: (not k.startswith("method."), keys.index(k)))
    return [k for k in method_first if len({repr(f.get(k, "—")) for f in flats}) > 1]


def _disambiguate(groups: list[Group]) -> None:
    """Label each group; labels that collide within a context get the parameter(s) that differ."""
    for g in groups:
        g.label = g.axis_label("method")
    by_label: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        by_label.setdefault((g.context, g.label), []).append(g)
    for (_, label), clash in by_label.items():
        if len(clash) < 2:
            continue
        keys = _differing([g.cell for g in clash])[:2]
        for g in clash:
            flat = flatten(identity(g.cell))
            parts = [f"{k.removeprefix('method.')}={flat.get(k, '—')}" for k in keys]
            g.label = f"{label} [{', '.join(parts)}]" if parts else f"{label} [{g.id[:6]}]"


def groups_of(records: list[dict[str, Any]]) -> list[Group]:
    """Records grouped by cell identity, in the order their first record appears."""
    buckets: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        buckets.setdefault(group_id(rec["cell"]), []).append(rec)
    groups = [Group(gid, _merge_same_seed(recs)) for gid, recs in buckets.items()]
    _disambiguate(groups)
    return groups


# the paper's row groups: the synthetic-trained model, then ours (and the grafting analysis)
CATEGORY = {"none": "Synthetic (pretrained)", "graft": "Grafting (analysis)"}
ADAPTED = "Adapted (ours)"


def category(group: Group) -> str:
    return CATEGORY.get(group.kind, ADAPTED)


def in_paper_order(groups: list[Group]) -> list[Group]:
    """The pretrained model first, then the adapted methods, then the grafting analysis (stable)."""
    order = [CATEGORY["none"], ADAPTED, CATEGORY["graft"]]
    return sorted(groups, key=lambda g: order.index(category(g)))


def directions(records: list[dict[str, Any]]) -> dict[str, bool | None]:
    """metric -> lower is better (True), higher (False), unknown (None): records first, then the catalogue."""
    out = {name: lower for name, (_, _, lower) in METRICS.items()}
    for rec in records:
        out.update({k: v for k, v in rec.get("metric_directions", {}).items() if v is not None})
    return out


def benchmarks_and_metrics(groups: list[Group]) -> tuple[list[str], dict[str, list[str]]]:
    """Benchmarks (the papers' order, then as met) and, for each, its metrics in the paper's order."""
    benches: dict[str, list[str]] = {}
    for g in groups:
        for r in g.records:
            for bench, scores in r.get("metrics", {}).items():
                benches.setdefault(bench, [])
                benches[bench] += [m for m in scores if m not in benches[bench]]

    def rank(b: str) -> int:
        return BENCHMARK_ORDER.index(norm(b)) if norm(b) in BENCHMARK_ORDER else len(BENCHMARK_ORDER)

    ordered = sorted(benches, key=rank)  # stable: unknown benchmarks keep their order
    return ordered, {b: paper_order(benches[b]) for b in ordered}


def titles(groups: list[Group]) -> dict[str, str]:
    """{group id: its label, with its context when the groups span several} for figure legends."""
    out = {}
    for _, title, members in contexts(groups):
        for g in members:
            out[g.id] = f"{g.label} ({title})" if title else g.label
    return out


def contexts(groups: list[Group]) -> list[tuple[str, str, list[Group]]]:
    """(context id, title, groups) in order; the title names only the axes that vary."""
    order: dict[str, list[Group]] = {}
    for g in groups:
        order.setdefault(g.context, []).append(g)
    axes = ("backbone", "pretrain", "target")
    varying = [a for a in axes if len({g.axis_label(a) for g in groups}) > 1]
    out = []
    for ctx, members in order.items():
        title = " / ".join(members[0].axis_label(a) for a in varying)
        out.append((ctx, title, members))
    named = [t for _, t, _ in out]
    return [(c, f"{t} [{c[:6]}]" if named.count(t) > 1 else t, m) for c, t, m in out]


# ------------------------------------------------------------------ the table model


@dataclass
class Column:
    """One column: ``key`` addresses row cells; ``group`` is the spanning header above it."""

    key: str
    header: str
    group: str = ""
    lower: bool | None = None  # direction shown as an arrow; None: no arrow
    digits: int | None = 3
    ranked: bool = False  # best bold, second underlined
    align: str = "r"
    scale: float = 1.0  # shown value = stored value × scale
    over: tuple[str, ...] = ()  # for an Average: the benchmarks it averages
    published: bool = False


@dataclass
class Cell:
    """One table entry: a seed-averaged number or a text; marks set by :meth:`Table.rank`."""

    stat: Stat | None = None
    text: str | None = None
    mark: str | None = None  # "best" | "second"
    flags: tuple[str, ...] = ()  # collapse reasons: never marked best

    @property
    def value(self) -> float | None:
        return self.stat.mean if self.stat is not None else None


@dataclass
class Row:
    """A table row; ``section`` is the ranking scope (shown as a heading), ``group`` a sub-heading."""

    label: str
    cells: dict[str, Cell] = field(default_factory=dict)
    section: str = ""
    group: str = ""
    published: bool = False
    flags: tuple[str, ...] = ()
    note: str = ""  # a published row's source
    quantity: Column | None = None  # for tables whose rows are quantities (Table 1): what this row holds


@dataclass
class Table:
    """A table every renderer understands (markdown, LaTeX booktabs, HTML)."""

    name: str
    title: str
    columns: list[Column]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_header: str = "Method"
    rank_by: str = "column"  # "column": rank rows within a section; "row": rank columns within a group

    def rank(self) -> None:
        """Bold the best and underline the second of each ranked column (or column group).

        Published rows and flagged cells take no part and are never marked.
        """
        for row in self.rows:
            for cell in row.cells.values():
                cell.mark = None
        if self.rank_by == "column":
            sections = dict.fromkeys(r.section for r in self.rows if not r.published)
            for col in (c for c in self.columns if c.ranked and c.lower is not None):
                for section in sections:
                    cells = [r.cells.get(col.key) for r in self.rows if r.section == section and not r.published]
                    _mark([c for c in cells if c is not None], col.lower, col.digits)
        else:
            groups: dict[str, list[Column]] = {}
            for col in self.columns:
                if col.ranked and col.lower is not None:
                    groups.setdefault(col.group, []).append(col)
            for row in (r for r in self.rows if not r.published):
                for cols in groups.values():
                    _mark([row.cells[c.key] for c in cols if c.key in row.cells], cols[0].lower, cols[0].digits)


def ablation_columns() -> list[Column]:
    """The check-mark columns of the paper's Table 3."""
    return [Column(k, h, "H2C loss" if k in ("positive", "negative") else "Layer positioning", digits=None,
                   align="c") for k, h in (("positive", "Positive"), ("negative", "Negative"), ("naive", "Naïve"),
                                           ("bilevel", "Bilevel"))]


def check_marks(positive: bool, negative: bool, positioning: str) -> dict[str, Cell]:
    """✓/× cells of a Table 3 row (positioning: manual, naive or bilevel)."""
    on = {"positive": positive, "negative": negative, "naive": positioning == "naive",
          "bilevel": positioning == "bilevel"}
    return {k: Cell(text="✓" if v else "×") for k, v in on.items()}


def _mark(cells: list[Cell], lower: bool, digits: int | None) -> None:
    """Rank by the value as shown (rounded to ``digits``): equal shown values share a mark."""
    def shown(c: Cell) -> float:
        return round(c.value, digits if digits is not None else 0)

    eligible = [c for c in cells if c.value is not None and not c.flags]
    if len(eligible) < 2:
        return
    values = sorted({shown(c) for c in eligible}, reverse=not lower)
    for c in eligible:
        if shown(c) == values[0]:
            c.mark = "best"
        elif len(values) > 1 and shown(c) == values[1]:
            c.mark = "second"


def format_number(value: float | None, digits: int | None) -> str:
    if value is None:
        return "n/a"
    if digits is None:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 10 ** -digits * 5:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def stat_text(stat: Stat | None, digits: int | None, scale: float = 1.0) -> str:
    """``0.752``, ``0.752 ± 0.010`` (several seeds) or ``n/a``."""
    if stat is None or stat.mean is None:
        return "n/a"
    text = format_number(stat.mean * scale, digits)
    if stat.std is not None and not (digits is None and stat.std == 0):  # counts equal over seeds: no "± 0"
        text += " ± " + format_number(stat.std * scale, digits)
    return text


def cell_text(cell: Cell, column: Column) -> str:
    """The plain text of a cell (its own text if it has one)."""
    return cell.text if cell.text is not None else stat_text(cell.stat, column.digits, column.scale)


# ------------------------------------------------------------------ the benchmark/metric layout

SANITY_GROUP = "Sanity (vs input)"


class Layout:
    """The benchmark/metric layout of a set of records and the columns built from it."""

    def __init__(self, records: list[dict[str, Any]], groups: list[Group]):
        self.benches, self.per_bench = benchmarks_and_metrics(groups)
        self.lower = directions(records)
        quality = paper_order(m for ms in self.per_bench.values() for m in ms if m not in SANITY)
        self.quality = quality
        self.sanity = [m for m in SANITY if any(m in ms for ms in self.per_bench.values())]

    def shared(self, metric: str) -> list[str]:
        return [b for b in self.benches if metric in self.per_bench[b]]

    def averaged(self) -> list[str]:
        """Metrics of the Average column: measured on every benchmark, and there are several."""
        if len(self.benches) < 2:
            return []
        return [m for m in self.quality if len(self.shared(m)) == len(self.benches)]

    def summary_key(self, metric: str) -> str:
        """``Average/m`` over its benchmarks, or ``bench/m`` where it has only one."""
        benches = self.shared(metric)
        return f"{benches[0]}/{metric}" if len(benches) == 1 else f"{AVERAGE}/{metric}"

    def column(self, key: str, group: str, ranked: bool = True) -> Column:
        metric = key.split("/", 1)[1]
        sanity = metric in SANITY
        lower = None if sanity else self.lower.get(metric)
        over = tuple(self.shared(metric)) if key.startswith(AVERAGE + "/") else ()
        return Column(key, metric_name(metric) + arrow(lower), group, lower, metric_digits(metric),
                      ranked=ranked and not sanity, over=over)

    def sanity_columns(self) -> list[Column]:
        return [self.column(self.summary_key(m), SANITY_GROUP) for m in self.sanity]

    def summary_columns(self) -> list[Column]:
        """One column per quality metric (its Average, or its one benchmark), then sanity."""
        return [self.column(self.summary_key(m), AVERAGE if len(self.shared(m)) > 1 else self.shared(m)[0])
                for m in self.quality] + self.sanity_columns()

    def cell(self, group: Group, column: Column, flags: tuple[str, ...] = ()) -> Cell:
        metric = column.key.split("/", 1)[1]
        return Cell(group.metric(column.key, self.shared(metric)), flags=flags)
