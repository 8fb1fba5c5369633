"""``harness guide probe`` and ``harness guide tune``: check a guide before spending GPU hours on it,
and make a degradation-aware one from any open_clip model. Imports happen inside the commands, so
``harness --help`` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def probe_command(
    recipe: Path = typer.Argument(..., help="YAML recipe whose guide, prompts and benchmarks are probed"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="a paired benchmark's label or type "
                                            "(default: the recipe's first benchmark with ground truth)"),
    steps: int = typer.Option(50, "--steps", min=0, help="steps of pixel-space H2C descent"),
    lr: float = typer.Option(0.01, "--lr", min=0.0, help="step size of the pixel-space descent (gd: root mean "
                             "square per pixel; adam: its learning rate)"),
    optimiser: str = typer.Option("gd", "--optimiser", help="gd (steepest descent: where the gradient leads) or "
                                  "adam (per-pixel rescaled steps, as the issue's first measurements)"),
    images: int = typer.Option(12, "--images", min=1, help="how many benchmark pairs to probe"),
    size: int = typer.Option(128, "--size", min=16, help="side of the central square each image is resized to"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="a model file written by `harness run` "
                                              "(RUN_DIR/pretrained/<id>/model.safetensors): descend from its "
                                              "outputs, where adapting it starts, instead of from the hazy input"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="recipe override, key.path=value (repeatable)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="also save the descended images to this PNG (rows: "
                                        "images; columns: the start, a few steps, the ground truth)"),
) -> None:
    """H2C loss of the ground truth, the input and simple edits, and PSNR/SSIM after pixel-space H2C descent."""
    from rich.console import Console
    from rich.table import Table

    from harness.errors import HarnessError
    from harness.guide.probe import OPTIMISERS, probe_recipe, save_grid
    from harness.validate import load_recipe

    if optimiser not in OPTIMISERS:
        raise HarnessError(f"unknown --optimiser {optimiser!r}", f"pass one of: {', '.join(OPTIMISERS)}")
    spec = load_recipe(recipe, set_)
    result = probe_recipe(spec, benchmark, steps=steps, lr=lr, images=images, size=size, optimiser=optimiser,
                          checkpoint=checkpoint)
    console = Console()
    g = spec.guide
    table = Table(title=f"H2C loss on {result.benchmark} ({result.images} images, guide {g.type}, mode {g.mode}, "
                        f"'{g.negative}' -> '{g.positive}'); lower = more 'clear' to the guide")
    table.add_column("image")
    table.add_column("H2C", justify="right")
    for name, value in result.h2c.items():
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    d = result.descent
    how = "steepest-descent" if d["optimiser"] == "gd" else "Adam"
    begin = "the hazy input" if d["start"] == "input" else f"the outputs of {checkpoint}"
    descent = Table(title=f"pixel-space H2C descent from {begin} ({d['steps']} {how} steps, lr {d['lr']:g})")
    for column in ("", "H2C", "PSNR", "SSIM"):
        descent.add_column(column, justify="right")
    descent.add_row("before", f"{d['loss_before']:.3f}", f"{d['psnr_before']:.2f}", f"{d['ssim_before']:.3f}")
    descent.add_row("after", f"{d['loss_after']:.3f}", f"{d['psnr_after']:.2f}", f"{d['ssim_after']:.3f}")
    console.print(descent)
    console.print(f"first step towards the ground truth: cos {d['gradient_alignment']:+.3f}; mean CIELAB a*b* shift "
                  f"{d['lab_shift']:.1f} (ground truth: {d['lab_shift_ground_truth']:.1f}); "
                  f"PSNR {result.psnr_gain:+.2f} dB, SSIM {result.ssim_gain:+.3f}: the guide {result.verdict()}")
    if result.start_beats_truth:
        console.print(f"warning: the guide scores the {d['start']} clearer than the ground truth "
                      f"({result.h2c[d['start']]:.3f} < {result.h2c['ground truth']:.3f}), so its gradient there "
                      "leads away from the truth")
    trajectory = ", ".join(f"{t['step']}: {t['psnr']:.2f} / {t['ssim']:.3f}" for t in d["trajectory"])
    if trajectory:
        console.print(f"PSNR / SSIM after steps {trajectory}", highlight=False)
    if grid is not None:
        console.print(f"descended images: {save_grid(result, grid)}", highlight=False)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.figures(), indent=1))


def tune_command(
    model: str = typer.Option(..., "--model", help="open_clip model name, e.g. ViT-B-32"),
    pretrained: Path = typer.Option(..., "--pretrained", help="local open_clip weights file to start from"),
    out: Path = typer.Option(..., "--out", help="weights file to write (.safetensors, .pt, .pth or .bin)"),
    steps: int = typer.Option(300, "--steps", min=1),
    lr: float = typer.Option(1e-5, "--lr", min=0.0),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    pool: int = typer.Option(1024, "--pool", min=1, help="how many captioned degraded crops to draw batches from"),
    photos: Optional[Path] = typer.Option(None, "--photos", help="a folder of clean photos to degrade "
                                          "(default: the harness's guide photo pool and procedural scenes)"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
) -> None:
    """Fine-tune an open_clip model on captioned degraded images; the result is usable as guide.pretrained."""
    from rich.console import Console

    from harness.guide.tune import tune_open_clip

    summary = tune_open_clip(model, pretrained, out, steps=steps, lr=lr, batch_size=batch_size, pool=pool,
                             photos=photos, seed=seed, overwrite=overwrite)
    Console().print(f"wrote {out} (loss {summary['curve'][0]['loss']:.3f} -> {summary['curve'][-1]['loss']:.3f}); "
                    f"use it as guide: {{type: open_clip, model: {model}, pretrained: {out}}}", highlight=False)


guide_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                        help="Probe a guide before training with it; tune a CLIP into one.")
guide_app.command("probe")(probe_command)
guide_app.command("tune")(tune_command)
