"""The paper's tables, built only from cell records (see :mod:`harness.report.frame` for groups).

- ``comparison`` (Table 2 shape): methods × benchmarks × metrics with an Average, rows grouped as
  the paper groups them (the synthetic-trained model, then ours), sanity columns beside;
- ``efficiency`` (Table 1 shape): full fine-tuning against BiLaLoRA, quality then cost, with a Rate;
- ``ablation`` (Table 3 shape): H2C positive/negative × layer positioning (manual/naive/bilevel);
- ``cross_model`` / ``cross_domain``: per backbone / per pretraining set, before and after adaptation;
- ``cost``: every method's train time, parameters, MACs/FLOPs, runtime and memory.

Seeds are averaged (mean ± sample std); the best value of a column is bold and the second
underlined, among our rows only and never on a row whose outputs collapsed (:mod:`sanity`).
"""

from __future__ import annotations

from typing import Any

from harness.report.frame import (AVERAGE, EFFICIENCY, FLOP_NOTE, SANITY, SANITY_GROUP, Cell, Column, Group, Layout,
                                  Row, Stat, Table, ablation_columns, arrow, category, check_marks, contexts,
                                  groups_of, in_paper_order, metric_name, stat_text)
from harness.report.sanity import THRESHOLD_NOTE, collapse_reasons

NO_BRANCHES = ("none", "full_ft", "graft")  # methods that add no adapter branch to the model
POSITIONING = {"manual_lora": "manual", "naive_joint": "naive", "bilalora": "bilevel"}
H2C_TERMS = {"positive": (True, False), "negative": (False, True), "both": (True, True)}


def unswept(groups: list[Group]) -> list[Group]:
    """Groups without the cells expanded from a ``sweep:`` (label ``name[k=v]``) of a method type and
    H2C mode that also has a plain cell (the sweep belongs to the layer-number figure)."""
    def swept(g: Group) -> bool:
        return "[" in g.axis_label("method")

    plain = {(g.kind, g.h2c_mode()) for g in groups if not swept(g)}
    return [g for g in groups if not swept(g) or (g.kind, g.h2c_mode()) not in plain]


def _metric_row(layout: Layout, g: Group, columns: list[Column], section: str, heading: str = "") -> Row:
    flags = collapse_reasons(g)
    return Row(g.label, {c.key: layout.cell(g, c, flags) for c in columns}, section=section, group=heading,
               flags=flags)


def comparison_table(records: list[dict[str, Any]], groups: list[Group] | None = None) -> Table | None:
    groups = groups if groups is not None else groups_of(records)
    if not groups:
        return None
    layout = Layout(records, groups)
    columns = [layout.column(f"{b}/{m}", b) for b in layout.benches for m in layout.per_bench[b] if m not in SANITY]
    columns += [layout.column(f"{AVERAGE}/{m}", AVERAGE) for m in layout.averaged()]
    columns += layout.sanity_columns()
    table = Table("comparison", "Comparison on the benchmarks", columns)
    for _, title, members in contexts(groups):
        for g in in_paper_order(members):
            table.rows.append(_metric_row(layout, g, columns, title, category(g)))
    table.notes += _notes(layout, table)
    table.rank()
    return table


def _notes(layout: Layout, table: Table) -> list[str]:
    notes = []
    if layout.averaged():
        notes.append(f"Average: per seed the mean over {', '.join(layout.benches)}, then over seeds.")
    if any(c.stat is not None and c.stat.n > 1 for r in table.rows for c in r.cells.values()):
        notes.append("mean ± sample standard deviation over seeds.")
    if layout.sanity:
        notes.append(THRESHOLD_NOTE)
    else:
        notes.append("These records carry no sanity metrics (" + ", ".join(SANITY) + "): a collapse of the "
                     "outputs cannot be flagged; re-score to add them.")
    return notes


# ------------------------------------------------------------------ Table 1: efficiency


def _rate(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "n/a"
    change = (b - a) / abs(a) * 100
    return f"{'↑' if change >= 0 else '↓'}{abs(change):.2f}%"


def efficiency_tables(records: list[dict[str, Any]], groups: list[Group] | None = None,
                      hours: bool = False) -> list[Table]:
    """One Table 1 per context holding a full fine-tuning and a BiLaLoRA cell (with the paper's loss)."""
    groups = groups if groups is not None else groups_of(records)
    layout = Layout(records, groups)
    tables = []
    ctxs = contexts(groups)
    for i, (_, title, members) in enumerate(ctxs):
        full = [g for g in members if g.kind == "full_ft"]
        ours = unswept([g for g in members if g.kind == "bilalora" and g.h2c_mode() == "both"])
        if not full or not ours:
            continue
        reference = full[0]
        columns = [Column(f"g{k}", g.label, align="r") for k, g in enumerate(full + ours)]
        rates = [Column(f"rate{k}", "Rate" if len(ours) == 1 else f"Rate ({g.label})") for k, g in enumerate(ours)]
        name = "efficiency" if len(ctxs) == 1 else f"efficiency_{i + 1}"
        table = Table(name, "Full fine-tuning against BiLaLoRA" + (f" ({title})" if title else ""),
                      columns + rates, label_header="Metric")
        seconds = max((g.efficiency("train_seconds").mean or 0) for g in full + ours)
        in_hours = hours or seconds >= 360
        quality = [layout.column(layout.summary_key(m), "") for m in layout.quality]
        sanity = [layout.column(layout.summary_key(m), "") for m in layout.sanity]
        cost = [Column(key, header, digits=digits, scale=scale) for key, header, scale, digits in EFFICIENCY]
        if in_hours:
            cost[0] = Column("train_seconds", "Train time (h)", digits=3, scale=1 / 3600)
        for section, quantities in (("Performance", quality), ("Efficiency", cost), (SANITY_GROUP, sanity)):
            for q in quantities:
                stats = [_stat(g, q.key, layout) for g in full + ours]
                if all(s.mean is None for s in stats):
                    continue
                row = Row(q.header, section=section, quantity=q)
                for col, stat, g in zip(columns, stats, full + ours):
                    flags = collapse_reasons(g) if section != "Efficiency" else ()
                    row.cells[col.key] = Cell(stat, text=stat_text(stat, q.digits, q.scale), flags=flags)
                for rate, stat in zip(rates, stats[len(full):]):
                    row.cells[rate.key] = Cell(text=_rate(stats[0].mean, stat.mean))
                table.rows.append(row)
        table.notes.append(f"Rate: change of {ours[0].label if len(ours) == 1 else 'each BiLaLoRA cell'} "
                           f"relative to {reference.label} (↑ larger, ↓ smaller value).")
        table.notes.append(FLOP_NOTE + " Train time is the adaptation's wall time.")
        if sanity:
            table.notes.append(THRESHOLD_NOTE)
        tables.append(table)
    return tables


def _stat(group: Group, key: str, layout: Layout) -> Stat:
    if "/" in key:
        return group.metric(key, layout.shared(key.split("/", 1)[1]))
    if key == "params_unmerged" and group.efficiency(key).mean is None and group.kind in NO_BRANCHES:
        return group.efficiency("params_total")  # nothing was added: unmerged equals deployed
    return group.efficiency(key)


# ------------------------------------------------------------------ Table 3: ablation


def ablation_config(group: Group) -> tuple[bool, bool, str] | None:
    """(positive text, negative text, positioning) of an H2C × positioning cell; None if not one."""
    if group.kind == "none":
        return False, False, "manual"
    if group.kind not in POSITIONING or group.h2c_mode() not in H2C_TERMS:
        return None
    return (*H2C_TERMS[group.h2c_mode()], POSITIONING[group.kind])


def ablation_table(records: list[dict[str, Any]], groups: list[Group] | None = None) -> Table | None:
    """Rows in the paper's order: no loss, positive-only, negative-only, both; manual, naive, bilevel."""
    groups = groups if groups is not None else groups_of(records)
    layout = Layout(records, groups)
    columns = ablation_columns() + layout.summary_columns()
    table = Table("ablation", "Ablation: H2C text guidance × layer positioning", columns)
    mode_order = [(False, False), (True, False), (False, True), (True, True)]
    for _, title, members in contexts(groups):
        configs = [(g, ablation_config(g)) for g in unswept(members)]
        configs = [(g, c) for g, c in configs if c is not None]
        if len({c for g, c in configs if g.kind != "none"}) < 2:
            continue
        configs.sort(key=lambda gc: (mode_order.index(gc[1][:2]), ["manual", "naive", "bilevel"].index(gc[1][2])))
        for g, (pos, neg, positioning) in configs:
            row = _metric_row(layout, g, layout.summary_columns(), title)
            row.cells.update(check_marks(pos, neg, positioning))
            table.rows.append(row)
    if not table.rows:
        return None
    table.notes.append("Neither Naïve nor Bilevel: sites chosen by hand (manual LoRA). "
                       "The row without either text term is the pretrained model.")
    table.notes += _notes(layout, table)
    table.rank()
    return table


# ------------------------------------------------------------------ cross-model and cross-domain


def before_after_table(records: list[dict[str, Any]], axis: str, groups: list[Group] | None = None) -> Table | None:
    """Rows: each value of ``axis`` (``backbone`` or ``pretrain``); per metric the pretrained model
    and each adaptation method side by side (best of each metric in a row bold). None unless the
    axis varies."""
    groups = [g for g in (groups if groups is not None else groups_of(records)) if g.kind != "graft"]
    if len({g.axis_label(axis) for g in groups}) < 2:
        return None
    layout = Layout(records, groups)
    others = [a for a in ("backbone", "pretrain", "target") if a != axis]
    methods = list(dict.fromkeys(g.label for g in sorted(groups, key=lambda g: g.kind != "none")))
    columns = []
    for metric in layout.quality + layout.sanity:
        key = layout.summary_key(metric)
        base = layout.column(key, "")
        group = metric_name(metric) + (" (sanity)" if metric in SANITY else arrow(base.lower))
        group += f" ({key.split('/')[0]})" if not key.startswith(AVERAGE) else ""
        columns += [Column(f"{key}|{m}", m, group, base.lower, base.digits, base.ranked) for m in methods]
    name = {"backbone": "cross_model", "pretrain": "cross_domain"}.get(axis, f"across_{axis}")
    title = {"backbone": "Cross-model: each backbone before and after adaptation",
             "pretrain": "Cross-domain: each pretraining set before and after adaptation"}.get(axis, name)
    header = {"backbone": "Backbone", "pretrain": "Pretrained on"}.get(axis, axis)
    table = Table(name, title, columns, label_header=header, rank_by="row")
    rows: dict[tuple[str, str], Row] = {}
    for g in groups:
        section = " / ".join(g.axis_label(a) for a in others if len({h.axis_label(a) for h in groups}) > 1)
        row = rows.setdefault((section, g.axis_label(axis)), Row(g.axis_label(axis), section=section))
        flags = collapse_reasons(g)
        for col in columns:
            key, method = col.key.split("|", 1)
            if method == g.label:
                metric = key.split("/", 1)[1]
                row.cells[col.key] = Cell(g.metric(key, layout.shared(metric)), flags=flags)
    table.rows = list(rows.values())
    table.notes.append("Each metric: the pretrained model (before) beside each adaptation method (after); "
                       "the best in a row is bold" + (", a collapsed method never." if layout.sanity else "."))
    if layout.sanity:
        table.notes.append(THRESHOLD_NOTE)
    table.rank()
    return table


# ------------------------------------------------------------------ cost of every method


def cost_table(records: list[dict[str, Any]], groups: list[Group] | None = None) -> Table | None:
    groups = groups if groups is not None else groups_of(records)
    keys = [(k, h, s, d) for k, h, s, d in EFFICIENCY if any(g.efficiency(k).mean is not None for g in groups)]
    if not keys:
        return None
    table = Table("cost", "Cost of each method", [Column(k, h, digits=d, scale=s) for k, h, s, d in keys])
    for _, title, members in contexts(groups):
        for g in in_paper_order(members):
            cells = {k: Cell(g.efficiency(k)) for k, *_ in keys}
            table.rows.append(Row(g.label, cells, section=title, group=category(g)))
    table.notes.append(FLOP_NOTE + " Train time is the adaptation's wall time (0 for the pretrained model).")
    return table


def all_tables(records: list[dict[str, Any]], hours: bool = False) -> list[Table]:
    """Every table the records support, in the paper's order."""
    groups = groups_of(records)
    made = [comparison_table(records, groups), *efficiency_tables(records, groups, hours=hours),
            ablation_table(records, groups), before_after_table(records, "backbone", groups),
            before_after_table(records, "pretrain", groups), cost_table(records, groups)]
    return [t for t in made if t is not None]
