"""Training throughput of every backbone: forward+backward images/s, two settings side by side.

For each backbone variant (default: every registered backbone's published variants, at their
published size; the training form, or with ``--deploy`` the re-parameterised inference form that
adaptation trains), one step is ``L1(model(x), target).backward()`` on a random batch (the optimiser
step is left out). The two settings of ``--compare`` are timed interleaved (warm-up first, then
``--repeats`` rounds of ``--steps`` steps per setting, median), with ``torch.cuda.synchronize``
around each timed block on GPU:

- ``precision`` (default): fp32 against bf16 autocast;
- ``layout`` (CPU): fp32 with ``restore`` on NCHW against NHWC tensors (``DehazeNet.channels_last``,
  what ``register_backbone(..., channels_last=True)`` turns on); the two give the same function up to
  float summation order, so the ratio is the whole difference.

Prints images/s, the speed ratio and, on CUDA, the peak memory of each setting; a setting that runs
out of memory (or fails) is reported in its row. Ratios only; nothing is asserted.

    python benchmarks/backbone_throughput.py [--backbones dea_net,msbdn] [--variant full]
        [--batch 16] [--size 256] [--repeats 5] [--steps 3] [--device cuda] [--json FILE]
    OMP_NUM_THREADS=1 python benchmarks/backbone_throughput.py --variant tiny --batch 2 --size 64  # CPU smoke
    python benchmarks/backbone_throughput.py --compare layout --variant tiny --batch 8 --size 48 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from harness.models import build_backbone, count_params
from harness.models.base import BACKBONE_CARDS

COMPARISONS = {"precision": ("fp32", "bf16"), "layout": ("nchw", "nhwc")}


def published_variants(name: str) -> list[tuple[str, str]]:
    """(variant, label) of every variant of ``name`` with published figures; ``full`` is skipped
    where it only aliases another published variant (ConvIR's ``full`` is ``b``)."""
    variants = BACKBONE_CARDS[name].variants
    out = []
    for variant, pub in variants.items():
        if pub is None:
            continue
        alias = [v for v, p in variants.items() if v != variant and p is pub]
        if variant == "full" and alias:
            continue
        out.append((variant, f"{variant} (full)" if variants.get("full") is pub and variant != "full" else variant))
    return out


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _short(err: BaseException) -> str:
    if _is_oom(err):
        return "OOM"
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"{type(err).__name__}: {first[:80]}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, setting: str) -> None:
    if setting in COMPARISONS["layout"]:
        model.channels_last = setting == "nhwc"
    ctx = (torch.autocast(x.device.type, dtype=torch.bfloat16) if setting == "bf16"
           else contextlib.nullcontext())
    with ctx:
        out = model(x)
    F.l1_loss(out.float(), target).backward()
    model.zero_grad(set_to_none=True)


def _timed(model, x, target, setting: str, steps: int, device: torch.device) -> tuple[float, int | None]:
    """(seconds for ``steps`` steps, peak CUDA bytes during them or None off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        _train_step(model, x, target, setting)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return seconds, peak


def measure(name: str, variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One row: params, and per setting of ``args.compare`` images/s (median), peak memory or an error."""
    settings = COMPARISONS[args.compare]
    row: dict = {"backbone": name, "variant": variant, "params": None,
                 "registered_channels_last": BACKBONE_CARDS[name].channels_last}
    results: dict[str, dict] = {s: {"times": [], "peak": 0, "error": None} for s in settings}
    model = x = target = None
    try:
        torch.manual_seed(0)
        model = build_backbone(name, variant)
        model = (model.deploy() if args.deploy else model).to(device).train()
        row["params"] = count_params(model)
        x = torch.rand(args.batch, 3, args.size, args.size, device=device)
        target = torch.rand_like(x)
    except Exception as err:  # noqa: BLE001 -- reported in the row (OOM while moving weights, bad variant)
        for r in results.values():
            r["error"] = _short(err)
    active = [s for s in settings if results[s]["error"] is None]

    def attempt(setting: str, steps: int, record: bool) -> None:
        try:
            seconds, peak = _timed(model, x, target, setting, steps, device)
        except Exception as err:  # noqa: BLE001 -- OOM, an op without bf16 support, a view NHWC breaks: report
            results[setting]["error"] = _short(err)
            active.remove(setting)
            if model is not None:
                model.zero_grad(set_to_none=True)
            _free(device)
            return
        if record:
            results[setting]["times"].append(seconds)
        if peak is not None:
            results[setting]["peak"] = max(results[setting]["peak"], peak)

    for setting in list(active):  # warm-up (cudnn autotuning, allocator, lazy init)
        attempt(setting, args.warmup, record=False)
    for _ in range(args.repeats):  # interleaved so clock/load drift hits both settings alike
        for setting in list(active):
            attempt(setting, args.steps, record=True)
    for setting, r in results.items():
        ips = args.batch * args.steps / statistics.median(r["times"]) if r["times"] else None
        row[setting] = {"images_per_s": ips, "peak_mem_mib": (r["peak"] / 2**20) if device.type == "cuda"
                        and r["times"] else None, "error": r["error"]}
    first, second = (row[s]["images_per_s"] for s in settings)
    row[f"{settings[1]}_over_{settings[0]}"] = second / first if first and second else None
    model = x = target = None  # free before the next backbone
    _free(device)
    return row


def _cell(value: float | None, fmt: str, error: str | None) -> str:
    if error:
        return f"[red]{error}[/red]"
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=None, help="comma-separated names (default: all registered)")
    parser.add_argument("--variant", default=None, help="one variant for every backbone (default: published ones)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--compare", choices=sorted(COMPARISONS), default="precision",
                        help="precision: fp32 vs bf16; layout: NCHW vs NHWC restore (CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per setting")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--deploy", action="store_true", help="time the deploy form (what adaptation trains)")
    parser.add_argument("--no-tf32", action="store_true", help="fp32 convs/matmuls without TF32 on CUDA")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.compare == "layout" and device.type != "cpu":
        parser.error("--compare layout times the CPU hand-off to NHWC (DehazeNet.channels_last); use --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    names = args.backbones.split(",") if args.backbones else sorted(BACKBONE_CARDS)
    unknown = [n for n in names if n not in BACKBONE_CARDS]
    if unknown:
        parser.error(f"unknown backbone(s) {', '.join(unknown)}; known: {', '.join(sorted(BACKBONE_CARDS))}")
    jobs = [(n, v, label) for n in names
            for v, label in ([(args.variant, args.variant)] if args.variant else published_variants(n))]
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the table into 80 columns
        console = Console(width=150)
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("backbones", total=len(jobs))
        for name, variant, label in jobs:
            progress.update(task, description=f"{name} {label}")
            row = measure(name, variant, args, device)
            row["label"] = label
            rows.append(row)
            progress.advance(task)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, TF32 for fp32 convs {'off' if args.no_tf32 else 'on'}"
    else:
        where = f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    form = "deploy" if args.deploy else "training"
    table = Table(title=f"forward+backward ({form} form, L1 to a random target) at {args.size}x{args.size}, "
                        f"batch {args.batch}; {where}; median of {args.repeats} interleaved rounds "
                        f"of {args.steps} steps")
    one, two = COMPARISONS[args.compare]
    for col in ("backbone", "variant", "params (M)", f"{one} img/s", f"{two} img/s", f"{two}/{one}",
                f"{one} peak MiB", f"{two} peak MiB", "registered NHWC"):
        table.add_column(col, justify="left" if col in ("backbone", "variant") else "right")
    for row in rows:
        f, b = row[one], row[two]
        table.add_row(row["backbone"], row["label"], "-" if row["params"] is None else f"{row['params'] / 1e6:.3f}",
                      _cell(f["images_per_s"], ".2f", f["error"]), _cell(b["images_per_s"], ".2f", b["error"]),
                      _cell(row[f"{two}_over_{one}"], ".2f", None),
                      _cell(f["peak_mem_mib"], ",.0f", f["error"]), _cell(b["peak_mem_mib"], ",.0f", b["error"]),
                      "yes" if row["registered_channels_last"] else "no")
    console.print(table)
    if args.json:
        meta = {"device": where, "form": form, "torch": torch.__version__, "batch": args.batch, "size": args.size,
                "repeats": args.repeats, "steps": args.steps, "warmup": args.warmup, "compare": args.compare}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        console.print(f"rows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
