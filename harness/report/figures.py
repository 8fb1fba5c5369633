"""The paper's figures, built only from records, each written as PNG and PDF under ``figures/``.

cross-model and cross-domain bars (before / after adaptation), the layer-number curve (metric
against ``top_k`` for cells that differ only in ``top_k``), convergence curves (``record["curves"]``
against wall time), the learned gate per site (``method_info["gates"]``), the grafting bars (change
over the pretrained model of the same backbone and data) and, per benchmark, an image grid of the
hazy input against each method's output (``artifacts["samples"]``). A method whose outputs
collapsed (see :mod:`harness.report.sanity`) is drawn hatched and titled with ⚠.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.report.frame import (Group, Layout, contexts, flatten, groups_of, identity,  # noqa: E402
                                  in_paper_order, metric_name, stable_hash, titles)
from harness.report.sanity import collapse_reasons  # noqa: E402

LOOP_ORDER = ("search", "finetune")  # records store curves by loop name (JSON keys come back sorted)
PRETRAIN_LOOP = "pretrain"  # the pretraining curve, not part of the adaptation's convergence
SAMPLE_ROWS = 4
SAMPLE_METHODS = 8
_SWEEP_SUFFIX = re.compile(r"\[top_k=[^\]]*\]|,?top_k=[^,\]]*")


def _save(fig, out: Path) -> Path:
    """Write ``out`` (.png) and its .pdf twin; return the PNG path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)
    return out


def _ylabel(layout: Layout, metric: str) -> str:
    key = layout.summary_key(metric)
    bench = key.split("/", 1)[0]
    arrow = {True: " (lower is better)", False: " (higher is better)"}.get(layout.lower.get(metric), "")
    return f"{metric_name(metric)} ({bench}){arrow}"


def _panels(n: int, width: float = 3.2, height: float = 2.8):
    fig, axes = plt.subplots(1, n, figsize=(0.6 + width * n, height), squeeze=False)
    return fig, list(axes[0])


# ------------------------------------------------------------------ before / after bars


def before_after_figure(records: list[dict[str, Any]], axis: str, out: Path,
                        groups: list[Group] | None = None) -> Path | None:
    """Grouped bars: one group per value of ``axis`` (backbone or pretraining set), one bar per method."""
    groups = [g for g in (groups if groups is not None else groups_of(records)) if g.kind != "graft"]
    if len({g.axis_label(axis) for g in groups}) < 2:
        return None
    others = [a for a in ("backbone", "pretrain", "target") if a != axis]
    combos = [tuple(g.axis_label(a) for a in others) for g in groups]
    common = max(dict.fromkeys(combos), key=combos.count)  # the most frequent, the first on a tie
    groups = [g for g in groups if tuple(g.axis_label(a) for a in others) == common]
    layout = Layout(records, groups)
    if not layout.quality:
        return None
    xs = list(dict.fromkeys(g.axis_label(axis) for g in groups))
    methods = list(dict.fromkeys(g.label for g in sorted(groups, key=lambda g: g.kind != "none")))
    fig, axes = _panels(len(layout.quality), width=max(3.2, 0.5 * len(xs) * len(methods)))
    width = 0.8 / len(methods)
    for ax, metric in zip(axes, layout.quality):
        key = layout.summary_key(metric)
        labelled: set[str] = set()
        for j, method in enumerate(methods):
            for i, x in enumerate(xs):
                g = next((g for g in groups if g.label == method and g.axis_label(axis) == x), None)
                if g is None:
                    continue
                stat = g.metric(key, layout.shared(metric))
                if stat.mean is None:
                    continue
                collapsed = bool(collapse_reasons(g))
                ax.bar(i + (j - (len(methods) - 1) / 2) * width, stat.mean, width, yerr=stat.std,
                       color=f"C{j}", hatch="//" if collapsed else None, edgecolor="red" if collapsed else None,
                       label=None if method in labelled else method + (" ⚠" if collapsed else ""))
                labelled.add(method)
        ax.set_xticks(range(len(xs)), xs, fontsize="small", rotation=20 if len(xs) > 3 else 0)
        ax.set_ylabel(_ylabel(layout, metric), fontsize="small")
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="upper center", ncol=min(len(unique), 5), fontsize="small",
               frameon=False)
    hatched = any(collapse_reasons(g) for g in groups)
    fig.suptitle({"backbone": "cross-model", "pretrain": "cross-domain"}.get(axis, axis)
                 + (f" ({' / '.join(common)})" if common else "")
                 + ("; hatched: outputs collapsed (sanity)" if hatched else ""), fontsize="small", y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.05, 1, 0.9))
    return _save(fig, out)


# ------------------------------------------------------------------ layer number


def layer_families(groups: list[Group]) -> list[list[Group]]:
    """Groups that differ only in ``method.top_k`` (never bilalora with its positive-only ablation)."""
    families: dict[str, list[Group]] = {}
    for g in groups:
        if "top_k" not in g.method:
            continue
        cell = identity(g.cell)
        cell["method"] = {k: v for k, v in g.method.items() if k != "top_k"}
        families.setdefault(stable_hash(cell), []).append(g)
    return [sorted(f, key=lambda g: g.method["top_k"]) for f in families.values()
            if len({g.method["top_k"] for g in f}) > 1]


def layer_number_figure(records: list[dict[str, Any]], out: Path, groups: list[Group] | None = None) -> Path | None:
    groups = groups if groups is not None else groups_of(records)
    families = layer_families(groups)
    if not families:
        return None
    layout = Layout(records, [g for f in families for g in f])
    fig, axes = _panels(len(layout.quality))
    titles = {id(f): _family_label(f, groups) for f in families}
    for ax, metric in zip(axes, layout.quality):
        key = layout.summary_key(metric)
        for i, family in enumerate(families):
            stats = [g.metric(key, layout.shared(metric)) for g in family]
            ks = [g.method["top_k"] for g in family]
            means = [s.mean if s.mean is not None else np.nan for s in stats]
            stds = [s.std or 0.0 for s in stats]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=2, color=f"C{i}", label=titles[id(family)])
            for k, m, g in zip(ks, means, family):
                if collapse_reasons(g):
                    ax.plot(k, m, "x", color="red", markersize=9)
        ax.set_xlabel("adapted sites (top-k)", fontsize="small")
        ax.set_ylabel(_ylabel(layout, metric), fontsize="small")
        ax.set_xticks(sorted({g.method["top_k"] for f in families for g in f}))
    axes[0].legend(fontsize="x-small")
    fig.tight_layout()
    return _save(fig, out)


def _family_label(family: list[Group], groups: list[Group]) -> str:
    label = _SWEEP_SUFFIX.sub("", family[0].label).replace("[]", "").replace(" []", "").strip()
    if len({g.context for g in groups}) > 1:
        label += f" ({family[0].axis_label('backbone')}, {family[0].axis_label('pretrain')})"
    return label


# ------------------------------------------------------------------ convergence


def convergence_figure(records: list[dict[str, Any]], out: Path, groups: list[Group] | None = None) -> Path | None:
    """Training loss (and validation H2C where recorded) against wall time, the adaptation's loops one
    after another (the pretraining curve left out)."""
    def adaptation(g: Group) -> dict[str, list[dict[str, Any]]]:
        return {k: v for k, v in (g.records[0].get("curves") or {}).items() if k != PRETRAIN_LOOP and v}

    groups = [g for g in (groups if groups is not None else groups_of(records)) if adaptation(g)]
    if not groups:
        return None
    ctxs = [(title, [g for g in members if g in groups]) for _, title, members in contexts(groups)]
    ctxs = [(t, m) for t, m in ctxs if m]
    fig, axes = _panels(len(ctxs), width=4.2, height=3.0)
    for ax, (title, members) in zip(axes, ctxs):
        for i, g in enumerate(members):
            offset = 0.0
            curves = adaptation(g)
            loops = sorted(curves, key=lambda n: LOOP_ORDER.index(n) if n in LOOP_ORDER else len(LOOP_ORDER))
            for points in (curves[n] for n in loops):
                if not points:
                    continue
                t = [offset + p["seconds"] for p in points]
                ax.plot(t, [p["loss"] for p in points], color=f"C{i}", linewidth=1,
                        label=g.label if offset == 0 else None)
                val = [(offset + p["seconds"], p["val_loss"]) for p in points if p.get("val_loss") is not None]
                if val:
                    ax.plot(*zip(*val), color=f"C{i}", linestyle="--", linewidth=1)
                offset = t[-1]
                ax.axvline(offset, color=f"C{i}", linewidth=0.4, alpha=0.4)
        ax.set_xlabel("adaptation wall time (s)", fontsize="small")
        ax.set_ylabel("H2C loss (solid: train, dashed: validation)", fontsize="x-small")
        if title:
            ax.set_title(title, fontsize="small")
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return _save(fig, out)


# ------------------------------------------------------------------ gates


def gates_figure(records: list[dict[str, Any]], out: Path, groups: list[Group] | None = None) -> Path | None:
    """sigmoid(gate) per candidate site after the search; kept sites filled, others outlined."""
    groups = groups if groups is not None else groups_of(records)
    names = titles(groups)
    searches: dict[str, tuple[dict[str, float], list[str], list[str]]] = {}
    for g in groups:
        info = g.records[0].get("method_info", {})
        if not info.get("gates"):
            continue
        key = stable_hash(info["gates"])
        entry = searches.setdefault(key, (info["gates"], [], list(info.get("selected") or info.get("gates_kept", []))))
        entry[1].append(names[g.id])
    if not searches:
        return None
    fig, axes = _panels(len(searches), width=max(3.0, 0.35 * max(len(s[0]) for s in searches.values())), height=3.2)
    for ax, (gates, labels, kept) in zip(axes, searches.values()):
        sites = list(gates)
        colours = ["tab:orange" if s in kept else "white" for s in sites]
        ax.bar(range(len(sites)), [gates[s] for s in sites], color=colours, edgecolor="tab:orange")
        ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xticks(range(len(sites)), sites, rotation=70, ha="right", fontsize="x-small")
        ax.set_ylim(0, 1)
        ax.set_ylabel("sigmoid(gate)", fontsize="small")
        ax.set_title(", ".join(labels) if len(", ".join(labels)) < 60 else f"{labels[0]} (+{len(labels) - 1})",
                     fontsize="x-small")
    fig.tight_layout()
    return _save(fig, out)


# ------------------------------------------------------------------ grafting


def graft_studies(groups: list[Group]) -> list[tuple[list[Group], Group | None, Group | None]]:
    """(grafted groups, the pretrained model of the same backbone and data, the graft source) per
    backbone × data × source with at least two grafted sites."""
    studies: dict[tuple[str, str], list[Group]] = {}
    for g in groups:
        if g.kind == "graft":
            studies.setdefault((g.context, stable_hash(g.method.get("source"))), []).append(g)
    out = []
    for (context, _), grafts in studies.items():
        if len(grafts) < 2:
            continue
        base = next((g for g in groups if g.kind == "none" and g.context == context), None)
        source_spec = flatten(grafts[0].method.get("source"))
        source = next((g for g in groups if g.context == context and g.kind != "graft"
                       and flatten(g.method) == source_spec), None)
        out.append((grafts, base, source))
    return out


def graft_figure(records: list[dict[str, Any]], out: Path, groups: list[Group] | None = None) -> Path | None:
    """One bar per grafted site: its change over the pretrained model of the same backbone and data
    (its value where that model has no record), the graft source (all sites adapted) as a line."""
    groups = groups if groups is not None else groups_of(records)
    studies = graft_studies(groups)
    if not studies:
        return None
    layout = Layout(records, [g for grafts, _, _ in studies for g in grafts])
    fig, axes = plt.subplots(len(studies), len(layout.quality), squeeze=False,
                             figsize=(0.6 + 3.4 * len(layout.quality), 3.0 * len(studies)))
    for r, (grafts, base, source) in enumerate(studies):
        for ax, metric in zip(axes[r], layout.quality):
            key = layout.summary_key(metric)
            benches = layout.shared(metric)
            shift = base.metric(key, benches).mean if base is not None else None
            values = [g.metric(key, benches).mean for g in grafts]
            ax.bar(range(len(grafts)), [(v if v is not None else np.nan) - (shift or 0.0) for v in values],
                   color="tab:blue")
            ax.set_xticks(range(len(grafts)), [g.method.get("site", g.label) for g in grafts], rotation=60,
                          ha="right", fontsize="x-small")
            if source is not None and source.metric(key, benches).mean is not None:
                ax.axhline(source.metric(key, benches).mean - (shift or 0.0), color="black", linestyle=":",
                           linewidth=1, label=f"source: {source.label} (all sites)")
                ax.legend(fontsize="x-small")
            ax.axhline(0, color="black", linewidth=0.6)
            name = metric_name(metric)
            ax.set_ylabel(f"{name} − pretrained" if shift is not None else name, fontsize="small")
            ax.set_title(f"grafting one adapted site ({grafts[0].axis_label('backbone')})", fontsize="x-small")
    fig.tight_layout()
    return _save(fig, out)


# ------------------------------------------------------------------ image grids


def samples(groups: list[Group]) -> dict[str, list[tuple[Group, list[dict[str, str]]]]]:
    """{benchmark: [(group, its first seed's samples)]} for the groups that saved samples, context by
    context, the pretrained model first."""
    out: dict[str, list[tuple[Group, list[dict[str, str]]]]] = {}
    for g in (g for _, _, members in contexts(groups) for g in in_paper_order(members)):
        for bench, items in (g.records[0].get("artifacts", {}).get("samples") or {}).items():
            if items:
                out.setdefault(bench, []).append((g, items))
    return out


def sample_grid_figure(run_dir: Path, bench: str, entries: list[tuple[Group, list[dict[str, str]]]],
                       out: Path) -> Path | None:
    """Rows: the first images of ``bench``; columns: the hazy input, each method's output, then the
    ground truth where the benchmark has one."""
    from PIL import Image

    entries = [(g, items) for g, items in entries if g.kind != "graft"][:SAMPLE_METHODS]
    if not entries:
        return None
    names_of = titles([g for g, _ in entries])
    names = [s["name"] for s in entries[0][1]][:SAMPLE_ROWS]
    truth = all("reference" in s for s in entries[0][1][:SAMPLE_ROWS])
    cols = 1 + len(entries) + truth
    fig, axes = plt.subplots(len(names), cols, figsize=(1.9 * cols, 1.9 * len(names) + 0.4), squeeze=False)
    for r, name in enumerate(names):
        first = next(s for s in entries[0][1] if s["name"] == name)
        panels = [("hazy input", first["input"], False)]
        for g, items in entries:
            item = next((s for s in items if s["name"] == name), None)
            panels.append((names_of[g.id].replace(" (", "\n(", 1), item["output"] if item else None,
                           bool(collapse_reasons(g))))
        if truth:
            panels.append(("ground truth", first["reference"], False))
        for c, (title, rel, collapsed) in enumerate(panels):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            path = run_dir / rel if rel else None
            if path is not None and path.is_file():
                with Image.open(path) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize="x-small", transform=ax.transAxes)
            if r == 0:
                ax.set_title(("⚠ " if collapsed else "") + title, fontsize="x-small",
                             color="red" if collapsed else "black")
            if c == 0:
                ax.set_ylabel(name, fontsize="xx-small")
    fig.suptitle(bench, fontsize="small")
    fig.tight_layout()
    return _save(fig, out)


# ------------------------------------------------------------------ all of them


def write_figures(records: list[dict[str, Any]], run_dir: Path) -> dict[str, Path]:
    """Every figure the records support, under ``run_dir/figures``; {name: PNG path} (PDF beside)."""
    run_dir = Path(run_dir)
    folder = run_dir / "figures"
    groups = groups_of(records)
    made = {
        "cross_model": before_after_figure(records, "backbone", folder / "fig_cross_model.png", groups),
        "cross_domain": before_after_figure(records, "pretrain", folder / "fig_cross_domain.png", groups),
        "layer_number": layer_number_figure(records, folder / "fig_layer_number.png", groups),
        "convergence": convergence_figure(records, folder / "fig_convergence.png", groups),
        "gates": gates_figure(records, folder / "fig_gates.png", groups),
        "graft": graft_figure(records, folder / "fig_graft.png", groups),
    }
    for i, (bench, entries) in enumerate(samples(groups).items()):
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", bench)
        made[f"samples:{bench}"] = sample_grid_figure(run_dir, bench, entries, folder / f"fig_samples_{slug}.png")
    return {k: v for k, v in made.items() if v is not None}
