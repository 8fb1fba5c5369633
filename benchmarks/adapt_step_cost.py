"""What one optimisation step of each adaptation method costs, as a ratio to a full fine-tuning step.

BiLaLoRA reports 0.94 h of adaptation against 4.215 h for full fine-tuning (ratio 0.22). Its run
is ``S`` search steps plus ``F`` LoRA fine-tuning steps; full fine-tuning is ``N`` steps. This
times, side by side on the same deployed DEA-Net, batch and loss (interleaved rounds, median):

  (a) full FT: Adam on every weight (``train_steps``): 1 forward + 1 backward
  (b) LoRA FT: rank-8 LoRA at ``top_k`` = 3 kept groups, Adam on A/B only (``finetune_lora``):
      1 forward + 1 backward that stops at the earliest kept site and skips frozen weight gradients
  (c) bilevel search: ``lower_step`` + ``upper_step``, LoRA + gate at every candidate group:
      3 forwards (x; x and v again) + 3 backwards (lower; then ``hypergradient`` takes one
      ``autograd.grad`` per loss over w and a together)
  (d) naive joint search: ``lower_step`` over LoRA + gates: 1 forward + 1 backward

plus, to explain the numbers: (c-) a bilevel warm-up step (``lower_step`` only), (b') LoRA at the three earliest groups
(backward reaches the input) and (g) the H2C loss alone (guide forward + backward to the image).

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
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table

from harness.adapt.lora import (
    gate_parameters,
    inject_lora,
    lora_parameters,
    select_sites,
)
from harness.adapt.methods import lower_step, upper_step
from harness.adapt.training import finite_or_fail
from harness.guide.h2c import H2CLoss
from harness.guide.model import TINY_MODEL, Guide, load_open_clip
from harness.models import build_backbone, count_params

PAPER_HOURS = (0.94, 4.215)  # BiLaLoRA, full fine-tuning
KEEP = ["level3_block1", "level3_block2", "down_level2_block1"]  # as benchmarks/merge_runtime.py
METHODS = {  # key: (label, passes)
    "a": ("(a) full FT, Adam on every weight", "1F+1B"),
    "b": ("(b) LoRA FT, top-3 kept groups", "1F+1B (LoRA grads)"),
    "b'": ("(b') LoRA FT, 3 earliest groups", "1F+1B (LoRA grads)"),
    "c": ("(c) bilevel search: lower+upper", "3F+3B"),
    "c-": ("(c-) bilevel warm-up: lower only", "1F+1B"),
    "d": ("(d) naive joint search", "1F+1B"),
    "g": ("(g) H2C loss alone (guide)", "guide 1F+1B"),
}
Step = Callable[[torch.Tensor, torch.Tensor], None]


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


def _adam_step(model: torch.nn.Module, params: list[torch.nn.Parameter], loss_fn, lr: float) -> Step:
    """The step of ``training.train_steps``: loss, finite check, zero_grad, backward, Adam."""
    opt = torch.optim.Adam(params, lr=lr)

    def step(x: torch.Tensor, v: torch.Tensor) -> None:
        loss = loss_fn(model(x), x)
        finite_or_fail(loss, 0, "benchmark")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    return step


def build_steps(base: torch.nn.Module, loss_fn, rank: int, alpha: float, lr: float, gate_lr: float,
                keep: list[str]) -> tuple[dict[str, Step], dict[str, int]]:
    """One step function per method, each on its own copy of ``base``; and trainable counts."""
    steps: dict[str, Step] = {}
    trainable: dict[str, int] = {}

    full = copy.deepcopy(base).train()
    params = list(full.parameters())
    for p in params:
        p.requires_grad_(True)
    steps["a"], trainable["a"] = _adam_step(full, params, loss_fn, lr), sum(p.numel() for p in params)

    earliest = list(base.lora_sites())[:3]
    for key, groups in (("b", keep), ("b'", earliest)):
        model = copy.deepcopy(base)
        inject_lora(model, select_sites(model, groups), rank, alpha)
        for g in gate_parameters(model):  # kept gates are frozen at their searched value
            g.requires_grad_(False)
        model.train()
        w = lora_parameters(model)
        steps[key], trainable[key] = _adam_step(model, w, loss_fn, lr), sum(p.numel() for p in w)

    def searched(bilevel: bool):
        model = copy.deepcopy(base)
        a = list(inject_lora(model, select_sites(model), rank, alpha).values())
        w = lora_parameters(model)
        for p in w + a:
            p.requires_grad_(True)
        model.train()
        if bilevel:
            return model, w, a, torch.optim.Adam(w, lr=lr), torch.optim.Adam(a, lr=gate_lr)
        return model, w, a, torch.optim.Adam([{"params": w, "lr": lr}, {"params": a, "lr": gate_lr}]), None

    for key in ("c", "c-"):
        model, w, a, lower_opt, upper_opt = searched(bilevel=True)
        trainable[key] = sum(p.numel() for p in w + a)
        if key == "c":
            def step(x, v, model=model, w=w, a=a, lo=lower_opt, up=upper_opt):
                lower_step(model, w, lo, x, loss_fn)
                upper_step(model, w, a, up, x, v, loss_fn)
        else:
            def step(x, v, model=model, w=w, lo=lower_opt):
                lower_step(model, w, lo, x, loss_fn)
        steps[key] = step

    model, w, a, opt, _ = searched(bilevel=False)
    trainable["d"] = sum(p.numel() for p in w + a)
    steps["d"] = lambda x, v, model=model, wa=w + a, opt=opt: lower_step(model, wa, opt, x, loss_fn)

    def guide_only(x: torch.Tensor, v: torch.Tensor) -> None:
        out = (x * 0.9).requires_grad_(True)
        loss_fn(out, x).backward()

    steps["g"], trainable["g"] = guide_only, 0
    return {k: steps[k] for k in METHODS}, trainable


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(steps: dict[str, Step], x: torch.Tensor, v: torch.Tensor, warmup: int, repeats: int,
               device: torch.device) -> dict[str, float]:
    """Median seconds per step of each method, warm-up first, then interleaved rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step(x, v)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):  # interleaved so load drift on a shared machine hits every method alike
        for key, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step(x, v)
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
        steps, trainable = build_steps(base, loss_fn, args.rank, args.alpha, 1e-4, 1e-2, keep)
        with console.status(f"DEA-Net {variant}, batch {args.batch}, patch {patch}: timing {len(steps)} steps "
                            f"x {args.repeats} rounds"):
            t = time_steps(steps, x, v, args.warmup, args.repeats, device)
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
