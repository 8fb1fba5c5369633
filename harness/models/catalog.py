"""``harness models``: every registered backbone variant, our size beside the published one.

Models are built on the ``meta`` device (no memory, no arithmetic) where their code allows it, so
counting FLOPs of the full-size networks at 256x256 takes about a second each on a CPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
import typer
from torch import nn

from harness.metrics.efficiency import macs_256
from harness.models.base import BACKBONE_CARDS, Published, build_backbone, count_params


def _measure(name: str, variant: str, include_flops: bool) -> tuple[nn.Module, nn.Module, tuple[int, int] | None]:
    """Build the model, its deployed form and the latter's (exact, thop-style) MACs, on ``meta``
    where the backbone's code allows it (code that needs real values falls back to CPU)."""
    try:
        with torch.device("meta"):
            model = build_backbone(name, variant)
            deployed = _with_guide(model.deploy(), "meta")
        return model, deployed, (macs_256(deployed, device="meta") if include_flops else None)
    except Exception:  # noqa: BLE001 -- any failure on meta is retried with real tensors
        model = build_backbone(name, variant)
        deployed = _with_guide(model.deploy(), "cpu")
        return model, deployed, (macs_256(deployed) if include_flops else None)


def _with_guide(deployed: nn.Module, device: str) -> nn.Module:
    """A guide-driven backbone gets its paper's guide architecture (random weights) to be counted with;
    its parameters stay the backbone's own."""
    if deployed.needs_guide:
        from harness.guide.model import architecture_only

        deployed.attach_guide(architecture_only(deployed.reference_guide, device))
    return deployed


def published_macs(pub: Published | None) -> float | None:
    """The published compute as multiply-adds, in the convention the paper used."""
    if pub is None or pub.flops_256 is None:
        return None
    return pub.flops_256 / 2 if pub.flops_convention == "flops" else pub.flops_256


def comparable_macs(row: dict) -> int | None:
    """Our MACs counted the way the published figure was (thop-style where the paper used thop)."""
    return row["macs_256"] if row["flops_convention"] == "thop" else row["macs_256_exact"]


def catalog_rows(include_flops: bool = True, names: Sequence[str] | None = None) -> list[dict]:
    """One dict per registered backbone variant (optionally only the backbones in ``names``):
    parameters and torch FLOPs/MACs at 256x256 of the deployed form (papers report that one),
    LoRA site groups of the trainable form, and the published figures."""
    rows = []
    for name in sorted(BACKBONE_CARDS):
        if names is not None and name not in names:
            continue
        for variant, pub in BACKBONE_CARDS[name].variants.items():
            model, deployed, macs = _measure(name, variant, include_flops)
            rows.append({
                "name": name,
                "variant": variant,
                "params_total": count_params(deployed),
                "params_unshared": deployed.unshared_params(),  # the same network without cross-stage sharing
                "flops_256": None if macs is None else 2 * macs[0],
                "macs_256_exact": None if macs is None else macs[0],
                "macs_256": None if macs is None else macs[1],  # thop's convention, as records and papers
                "sites": len(model.lora_sites()),
                "published_params": pub.params if pub else None,
                "published_flops_256": pub.flops_256 if pub else None,
                "flops_convention": pub.flops_convention if pub else None,
                "source": pub.source if pub else "",
            })
    return rows


def deviation_pct(ours: float | None, published: float | None) -> float | None:
    """(ours - published) / published in percent; None when either is unknown."""
    if ours is None or not published:
        return None
    return 100.0 * (ours - published) / published


def _fmt(value: float | None, scale: float, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _fmt_pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}%"


def models_command(
    json_out: bool = typer.Option(False, "--json", help="print the rows as a JSON list instead of a table"),
) -> None:
    """List every backbone variant: params and MACs at 256x256, ours beside the published figures."""
    rows = catalog_rows(include_flops=True)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Backbones at 256x256: parameters and multiply-adds, ours beside the published")
    for col in ("backbone", "variant", "params M", "paper M", "dev", "MACs G", "thop G", "paper G", "as", "dev",
                "groups"):
        table.add_column(col, justify="left" if col in ("backbone", "variant", "as") else "right")
    for r in rows:
        pub_macs = published_macs(BACKBONE_CARDS[r["name"]].variants[r["variant"]])
        table.add_row(
            r["name"], r["variant"],
            _fmt(r["params_total"], 1e6, 3), _fmt(r["published_params"], 1e6, 3),
            _fmt_pct(deviation_pct(r["params_total"], r["published_params"])),
            _fmt(r["macs_256_exact"], 1e9), _fmt(r["macs_256"], 1e9), _fmt(pub_macs, 1e9),
            r["flops_convention"] or "", _fmt_pct(deviation_pct(comparable_macs(r), pub_macs)),
            str(r["sites"]),
        )
    Console().print(table)
    guided = sorted({r["name"] for r in rows if BACKBONE_CARDS[r["name"]].needs_guide})
    if guided:
        Console().print(f"{', '.join(guided)}: parameters exclude the CLIP guide; MACs include its image tower "
                        "(the paper's guide architecture, e.g. ViT-B-32 at 224x224)")
    for r in rows:
        if r["params_unshared"]:
            Console().print(f"{r['name']} {r['variant']}: {r['params_total'] / 1e6:.3f} M with its stages sharing one "
                            f"denoiser, {r['params_unshared'] / 1e6:.3f} M without sharing "
                            f"({r['params_total'] / r['params_unshared']:.3f}x)")
    Console().print("MACs: exact multiply-adds (torch FlopCounterMode / 2). thop: the same network counted as thop "
                    "does (transposed convs charged per output pixel). dev compares with the published figure in "
                    "its own convention (column 'as').")
