"""Figures built only from cell records: cross-model bars, the layer-number (top-k) curve, grafting bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.report.tables import METRIC_NAMES, records_frame  # noqa: E402


def _first_metric(frame, preferred: tuple[str, ...] = ("psnr", "fade", "entropy")) -> str | None:
    cols = [c for c in frame.columns if "/" in c and frame[c].notna().any()]
    for name in preferred:
        for col in cols:
            if col.endswith("/" + name):
                return col
    return cols[0] if cols else None


def cross_model_figure(records: list[dict[str, Any]], out: Path, metric: str | None = None) -> Path | None:
    """Grouped bars: one group per backbone, one bar per method (seed mean). None if < 2 backbones."""
    frame = records_frame(records)
    if frame.empty or frame["backbone"].nunique() < 2:
        return None
    col = metric or _first_metric(frame)
    if col is None:
        return None
    table = frame.groupby(["backbone", "method"], sort=False)[col].mean().unstack("method")
    ax = table.plot.bar(figsize=(1.6 + 1.2 * len(table), 3.2), rot=0, width=0.8)
    bench, name = col.split("/", 1)
    ax.set_ylabel(f"{METRIC_NAMES.get(name, name)} on {bench}")
    ax.set_xlabel("")
    ax.legend(fontsize="small", ncol=2)
    ax.figure.tight_layout()
    ax.figure.savefig(out, dpi=150)
    plt.close(ax.figure)
    return out


def layer_number_figure(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Metric versus ``top_k`` for methods swept over the number of adapted sites."""
    swept = [r for r in records if "top_k" in r["cell"].get("method", {})]
    frame = records_frame(swept)
    if frame.empty:
        return None
    frame["top_k"] = [r["cell"]["method"]["top_k"] for r in swept]
    frame["family"] = [r["cell"]["method"]["type"] for r in swept]
    if frame["top_k"].nunique() < 2:
        return None
    cols = [c for c in frame.columns if "/" in c and frame[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.0 * len(cols), 2.8), squeeze=False)
    for ax, col in zip(axes[0], cols):
        for (family, backbone), group in frame.groupby(["family", "backbone"], sort=False):
            curve = group.groupby("top_k")[col].mean()
            ax.plot(curve.index, curve.values, marker="o", label=f"{family} {backbone}")
        bench, name = col.split("/", 1)
        ax.set_title(f"{METRIC_NAMES.get(name, name)} ({bench})", fontsize="small")
        ax.set_xlabel("adapted sites (top-k)")
    axes[0][0].legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def graft_figure(records: list[dict[str, Any]], out: Path) -> Path | None:
    """One bar per grafted site group: its change over the pretrained model (or its value when no
    pretrained record exists), with the graft source (all blocks adapted) as a line."""
    grafts = [r for r in records if r["cell"].get("method", {}).get("type") == "graft"]
    if len(grafts) < 2:
        return None
    frame = records_frame(grafts)
    col = _first_metric(frame)
    if col is None:
        return None
    frame["site"] = [r["cell"]["method"]["site"] for r in grafts]
    bars = frame.groupby("site", sort=False)[col].mean()

    def mean_of(kind) -> float | None:
        ref = records_frame([r for r in records if kind(r["cell"].get("method", {}))])
        return float(ref[col].mean()) if not ref.empty and col in ref else None

    base = mean_of(lambda m: m.get("type") == "none")
    sources = [r["cell"]["method"]["source"] for r in grafts]
    source = mean_of(lambda m: m in sources)
    shift = base if base is not None else 0.0
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(bars), 3.0))
    ax.bar(range(len(bars)), bars.values - shift, color="tab:blue")
    ax.set_xticks(range(len(bars)), bars.index, rotation=60, ha="right", fontsize="x-small")
    if source is not None:
        ax.axhline(source - shift, color="black", linestyle=":", linewidth=1, label="source (all blocks)")
        ax.legend(fontsize="x-small")
    ax.axhline(0, color="black", linewidth=0.6)
    bench, name = col.split("/", 1)
    metric = METRIC_NAMES.get(name, name)
    ax.set_ylabel(f"{metric} − pretrained" if base is not None else metric, fontsize="small")
    ax.set_title(f"grafting one adapted block ({bench})", fontsize="small")
    ax.set_xlabel("grafted block")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def write_figures(records: list[dict[str, Any]], run_dir: Path) -> dict[str, Path]:
    """Write every figure the records support into ``run_dir``; return {name: path}."""
    made = {
        "cross_model": cross_model_figure(records, run_dir / "fig_cross_model.png"),
        "layer_number": layer_number_figure(records, run_dir / "fig_layer_number.png"),
        "graft": graft_figure(records, run_dir / "fig_graft.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
