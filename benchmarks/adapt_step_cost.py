"""What one optimisation step of each adaptation method costs, as a ratio to a full fine-tuning step.

BiLaLoRA reports 0.94 h of adaptation against 4.215 h for full fine-tuning (ratio 0.22). Its run
is ``S`` search steps plus ``F`` LoRA fine-tuning steps; full fine-tuning is ``N`` steps. This
times, side by side on the same deployed DEA-Net, batch and loss (interleaved rounds, median):

  (a) full FT: Adam on every weight (``training.AdamStepper``): 1 forward + 1 backward
  (b) LoRA FT: rank-8 LoRA at ``top_k`` = 3 kept groups, Adam on A/B only (``AdamStepper``, frozen base):
      1 forward + 1 backward that stops at the earliest kept site and skips frozen weight gradients
  (c) bilevel search step (``search.SearchStepper``), LoRA + gate at every candidate group: f on x
      and F on v, one ``autograd.grad`` of each over w and a: 2 forwards + 2 backwards; ``d_w f``
      serves the lower update and the hypergradient
  (c old) the step before this change, for the side-by-side: a lower step (f on x, backward, Adam),
      then ``hypergradient`` on f at x and F at v again: 3 forwards + 3 backwards
  (d) naive joint search (``SearchStepper``, joint): 1 forward + 1 backward

plus, to explain the numbers: (c-) a bilevel warm-up step (lower update only), (b') LoRA at the three
earliest groups (backward reaches the input) and (g) the H2C loss alone (guide forward + backward to
the image). Every stepper draws its batch from one fixed batch of images (``x`` for the training
split, ``v`` for validation) with the same patch sampling as a run.

The loss is the real H2C loss (``H2CLoss``) through a guide: ``--guide tiny`` (default) is the
embedded guide's architecture (``harness-tiny-clip``, 64 px ViT) with random weights, which costs
exactly what the trained embedded guide costs and needs no training; ``--guide embedded`` loads
(or trains once, ~1 min) the real one; ``--guide vit-b-32`` is a randomly initialised ViT-B/32 at
224 px, the cost of the paper's CLIP. Inputs are random patches (no data loading is timed).

Then the implied whole-run ratio for a schedule, ``(W*c- + (S-W)*c + F*b) / (N*a)`` with ``W``
warm-up search steps (``W = 0``: ``(S*c + F*b) / (N*a)``), for the given steps (default: the
quickstart's 20 search incl. 5 warm-up / 60 fine-tune / 60 full FT) and for the paper's schedule
(5 search + 25 fine-tune epochs vs 30 full-FT epochs, equal steps per epoch). Nothing is asserted.

    python benchmarks/adapt_step_cost.py [--variants tiny,full] [--patches 48,96] [--batch 8]
        [--search-steps 20 --finetune-steps 60 --fullft-steps 60 --warmup-steps 5] [--guide tiny]
    OMP_NUM_THREADS=1 python benchmarks/adapt_step_cost.py --variants tiny --patches 16 --batch 2 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from harness.adapt.base import AdaptJob
from harness.adapt.hypergrad import hypergradient
from harness.adapt.lora import (
    gate_parameters,
    inject_lora,
    lora_parameters,
    select_sites,
)
from harness.adapt.search import SearchStepper
from harness.adapt.training import AdamStepper
from harness.data.patches import sample_patches
from harness.guide.h2c import H2CLoss
from harness.guide.model import TINY_MODEL, Guide, load_open_clip
from harness.models import build_backbone, count_params

PAPER_HOURS = (0.94, 4.215)  # BiLaLoRA, full fine-tuning
KEEP = ["level3_block1", "level3_block2", "down_level2_block1"]  # as benchmarks/merge_runtime.py
METHODS = {  # key: (label, passes)
    "a": ("(a) full FT, Adam on every weight", "1F+1B"),
    "b": ("(b) LoRA FT, top-3 kept groups", "1F+1B (LoRA grads)"),
    "b'": ("(b') LoRA FT, 3 earliest groups", "1F+1B (LoRA grads)"),
    "c": ("(c) bilevel search: lower+upper", "2F+2B"),
    "c old": ("(c old) bilevel search before", "3F+3B"),
    "c-": ("(c-) bilevel warm-up: lower only", "1F+1B"),
    "d": ("(d) naive joint search", "1F+1B"),
    "g": ("(g) H2C loss alone (guide)", "guide 1F+1B"),
}
Step = Callable[[], None]


def build_guide(kind: str) -> tuple[Guide, str]:
    """The guide and a line saying what it is."""
    torch.manual_seed(0)
    if kind == "tiny":
        return load_open_clip(TINY_MODEL, None), (f"H2C through {TINY_MODEL} (the embedded guide's architecture, "
                                                  "random weights: same cost as the trained one)")
    if kind == "embedded":
        from harness.guide import build_guide as build

        return build("embedded"), f"H2C through the embedded guide ({TINY_MODEL}, trained)"
    if kind == "vit-b-32":
        return load_open_clip("ViT-B-32", None), ("H2C through ViT-B-32 at 224 px (random weights: the cost "
                                                  "of the paper's CLIP)")
    raise ValueError(kind)


def _job(model: torch.nn.Module, loss_fn, x: torch.Tensor, v: torch.Tensor, tmp: Path) -> AdaptJob:
    """A job whose train/val splits are the images of ``x`` and ``v`` (patches = whole images)."""
    return AdaptJob(model, list(x), list(v), loss_fn, batch_size=len(x), patch_size=x.shape[-1], workdir=tmp,
                    device=x.device)


def _stepping(stepper) -> Step:
    rng = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))
    return lambda: stepper.step(next(counter), rng)


def _old_bilevel_step(job: AdaptJob, w: list, a: list, lr: float, gate_lr: float) -> Step:
    """The search step before the 2F+2B change: a lower step, then the hypergradient from f and F afresh."""
    lower_opt, upper_opt = torch.optim.Adam(w, lr=lr), torch.optim.Adam(a, lr=gate_lr)
    rng = torch.Generator().manual_seed(0)
    model, loss_fn = job.model, job.loss_fn

    def step() -> None:
        x = sample_patches(job.train_images, job.batch_size, job.patch_size, rng)[0]
        loss = loss_fn(model(x), x)
        for p, g in zip(w, torch.autograd.grad(loss, w)):
            p.grad = g
        lower_opt.step()
        v = sample_patches(job.val_images, job.batch_size, job.patch_size, rng)[0]
        for p, h in zip(a, hypergradient(loss_fn(model(x), x), loss_fn(model(v), v), w, a)):
            p.grad = h
        upper_opt.step()

    return step


def build_steps(base: torch.nn.Module, loss_fn, rank: int, alpha: float, lr: float, gate_lr: float,
                keep: list[str], x: torch.Tensor, v: torch.Tensor, tmp: Path) -> tuple[dict[str, Step], dict[str, int]]:
    """One step function per method, each on its own copy of ``base``; and trainable counts."""
    steps: dict[str, Step] = {}
    trainable: dict[str, int] = {}

    full = copy.deepcopy(base)
    params = list(full.parameters())
    for p in params:
        p.requires_grad_(True)
    steps["a"] = _stepping(AdamStepper(_job(full, loss_fn, x, v, tmp), params, lr, 10**9, frozen_base=False))
    trainable["a"] = sum(p.numel() for p in params)

    earliest = list(base.lora_sites())[:3]
    for key, groups in (("b", keep), ("b'", earliest)):
        model = copy.deepcopy(base)
        inject_lora(model, select_sites(model, groups), rank, alpha)
        for g in gate_parameters(model):  # kept gates are frozen at their searched value
            g.requires_grad_(False)
        w = lora_parameters(model)
        steps[key] = _stepping(AdamStepper(_job(model, loss_fn, x, v, tmp), w, lr, 10**9, frozen_base=True))
        trainable[key] = sum(p.numel() for p in w)

    for key, bilevel, warmup in (("c", True, 0), ("c-", True, 10**9), ("d", False, 0)):
        model = copy.deepcopy(base)
        a = list(inject_lora(model, select_sites(model), rank, alpha).values())
        w = lora_parameters(model)
        stepper = SearchStepper(_job(model, loss_fn, x, v, tmp), w, a, lr=lr, gate_lr=gate_lr, bilevel=bilevel,
                                warmup_steps=warmup, steps=10**9)
        steps[key], trainable[key] = _stepping(stepper), sum(p.numel() for p in w + a)
    model = copy.deepcopy(base)
    a = list(inject_lora(model, select_sites(model), rank, alpha).values())
    w = lora_parameters(model)
    for p in w + a:
        p.requires_grad_(True)
    model.train()
    steps["c old"], trainable["c old"] = _old_bilevel_step(_job(model, loss_fn, x, v, tmp), w, a, lr, gate_lr), trainable["c"]

    def guide_only() -> None:
        out = (x * 0.9).requires_grad_(True)
        loss_fn(out, x).backward()

    steps["g"], trainable["g"] = guide_only, 0
    return {k: steps[k] for k in METHODS}, trainable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: dict[str, Step], warmup: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per step of each method, warm-up first, then interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved so load drift on a shared machine hits every method alike
        for key, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(t) for k, t in times.items()}


def run_ratio(r: dict[str, float], search: int, finetune: int, fullft: int, warmup: int) -> float:
    """(W*c- + (S-W)*c + F*b) / (N*a), per-step costs taken relative to (a)."""
    w = min(warmup, search)
    return (w * r["c-"] + (search - w) * r["c"] + finetune * r["b"]) / (fullft * r["a"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="tiny,full", help="DEA-Net variants, comma-separated")
    parser.add_argument("--patches", default="48", help="patch sizes, comma-separated (quickstart: 48)")
    parser.add_argument("--batch", type=int, default=8, help="quickstart: 8")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--keep", default=",".join(KEEP), help="the top-k kept groups of (b)")
    parser.add_argument("--guide", choices=("tiny", "embedded", "vit-b-32"), default="tiny")
    parser.add_argument("--search-steps", type=int, default=20)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--fullft-steps", type=int, default=60)
    parser.add_argument("--warmup-steps", type=int, default=5, help="search steps without an upper step")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per method first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    keep = args.keep.split(",")
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the tables into 80 columns
        console = Console(width=150)
    load_start = os.getloadavg()[0]
    guide, guide_line = build_guide(args.guide)
    loss_fn = H2CLoss(guide).to(device)
    configs = [(variant, int(p)) for variant in args.variants.split(",") for p in args.patches.split(",")]
    ratios: dict[tuple[str, int], dict[str, float]] = {}
    seconds: dict[tuple[str, int], dict[str, float]] = {}
    notes = []
    for variant, patch in configs:
        torch.manual_seed(0)
        base = build_backbone("dea_net", variant).deploy().to(device)  # the runner adapts the deploy form
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(args.batch, 3, patch, patch, generator=gen).to(device)
        v = torch.rand(args.batch, 3, patch, patch, generator=gen).to(device)
        with tempfile.TemporaryDirectory() as tmp:
            steps, trainable = build_steps(base, loss_fn, args.rank, args.alpha, 1e-4, 1e-2, keep, x, v, Path(tmp))
            with console.status(f"DEA-Net {variant}, batch {args.batch}, patch {patch}: timing {len(steps)} steps "
                                f"x {args.repeats} rounds"):
                t = time_steps(steps, args.warmup, args.repeats, device)
        seconds[variant, patch] = t
        ratios[variant, patch] = {k: s / t["a"] for k, s in t.items()}
        notes.append(f"DEA-Net {variant}: {count_params(base):,} params (deploy form), {len(base.lora_sites())} "
                     f"candidate groups; trainable (a) {trainable['a']:,}, (b) {trainable['b']:,}, "
                     f"(c) {trainable['c']:,}")

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    table = Table(title=f"One optimisation step, ratio to (a) full FT (median ms); batch {args.batch}, rank "
                        f"{args.rank}, {where}, median of {args.repeats} interleaved rounds")
    table.add_column("method")
    table.add_column("passes")
    for variant, patch in configs:
        table.add_column(f"{variant} @ {patch}px", justify="right")
    for key, (label, passes) in METHODS.items():
        table.add_row(label, passes, *(f"{ratios[c][key]:.2f} ({1e3 * seconds[c][key]:.0f} ms)" for c in configs))
    console.print(table)
    console.print(f"loss: {guide_line}")
    console.print(f"(b) keeps {', '.join(keep)}; (b') keeps the first three candidate groups")
    for line in notes:
        console.print(line)
    if device.type == "cpu":  # other processes' threads inflate small-kernel steps (tiny model) the most
        console.print(f"1-min load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on "
                      f"{os.cpu_count()} cores; a load above the core count makes these ratios unreliable")

    s, f, n, w = args.search_steps, args.finetune_steps, args.fullft_steps, args.warmup_steps
    schedules = [
        (f"given: {s} search ({w} warm-up) + {f} FT steps vs {n} full-FT steps", s, f, n, w),
        (f"given, no warm-up: (S*c + F*b)/(N*a), S={s} F={f} N={n}", s, f, n, 0),
        ("paper: 5 search + 25 FT epochs vs 30 full-FT epochs", 5, 25, 30, 0),
    ]
    whole = Table(title="Implied whole-run time ratio BiLaLoRA / full FT: (W*c- + (S-W)*c + F*b) / (N*a); "
                        f"paper: {PAPER_HOURS[0]} h / {PAPER_HOURS[1]} h = {PAPER_HOURS[0] / PAPER_HOURS[1]:.3f}")
    whole.add_column("schedule")
    for variant, patch in configs:
        whole.add_column(f"{variant} @ {patch}px", justify="right")
    run = {}
    for label, *sched in schedules:
        run[label] = {f"{v}@{p}": run_ratio(ratios[v, p], *sched) for v, p in configs}
        whole.add_row(label, *(f"{x:.2f}" for x in run[label].values()))
    console.print(whole)
    paper = PAPER_HOURS[0] / PAPER_HOURS[1]
    console.print(f"to reach {paper:.2f} with the paper's 5 + 25 epochs vs 30, a LoRA step would have to cost "
                  f"(30 x {paper:.3f} - 5c/a) / 25 of a full-FT step: at most {30 * paper / 25:.2f} even if "
                  f"a search step were free; measured b/a: "
                  + ", ".join(f"{ratios[c]['b']:.2f} ({c[0]} @ {c[1]}px)" for c in configs))
    return {"ratios": {f"{v}@{p}": r for (v, p), r in ratios.items()},
            "seconds": {f"{v}@{p}": t for (v, p), t in seconds.items()}, "run_ratio": run}


if __name__ == "__main__":
    main()
