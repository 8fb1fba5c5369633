"""What a BILD step costs against a plain L1 pretraining step, and what the one-pass dot products save.

Side by side on the same backbone, batch and patches (interleaved rounds, median), all on the engine:

  (a) plain step: ``SupervisedStepper.step`` (1 forward + 1 backward, Adam)
  (b) BILD step: ``BILDStepper.step``: f_w forward; weighted inner step (1F + 1B); validation
      gradient at theta_t (1F + 1B); the n per-patch dot products (one ``torch.func.jvp``); f_w's
      REINFORCE step
  (j) the n dot products alone, one forward-mode pass (what (b) does)
  (e) the n dot products alone, n reverse passes (one per patch: what BILD must not do)

Ratios are to (a); (e)/(j) is what the forward-mode pass saves. Nothing is asserted.

    OMP_NUM_THREADS=1 python benchmarks/bild_step_cost.py [--backbones aod_net,ffa_net,dea_net] [--batch 10]
        [--patch 32] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from harness.engine.strategy import Strategy
from harness.models import build_backbone, count_params
from harness.plugins import load_plugins
from harness.pretrain.bild import BILD, per_patch_dots, per_patch_loss
from harness.pretrain.supervised import SupervisedStepper

ROWS = {"a": "(a) plain L1 step", "b": "(b) BILD step", "j": "(j) n dots, one jvp", "e": "(e) n dots, n backwards"}


def explicit_dots(model, direction, x, y):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    losses = per_patch_loss("l1", model(x), y)
    out = []
    for i in range(len(x)):
        grads = torch.autograd.grad(losses[i], [p for _, p in named], retain_graph=i < len(x) - 1)
        out.append(sum((g * direction[n]).sum() for (n, _), g in zip(named, grads)))
    return torch.stack(out)


def step_functions(plain: SupervisedStepper, bild, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The four timed calls; each stepper draws its own batches from its own generator."""
    model = bild.trained.model
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn_like(p) for n, p in params.items()}
    rng_a, rng_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    counter = iter(range(10**9))
    return {
        "a": lambda: plain.step(next(counter), rng_a),
        "b": lambda: bild.step(next(counter), rng_b),
        "j": lambda: per_patch_dots(model, params, direction, x, y),
        "e": lambda: explicit_dots(model, direction, x, y),
    }


def time_rounds(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():  # warm-up (allocations, Adam state)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="aod_net,ffa_net,dea_net")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=10, help="paper: 10")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    load_plugins()
    console = Console(width=150)
    load_start = os.getloadavg()[0]
    gen = torch.Generator().manual_seed(0)
    clear = [torch.rand(3, 2 * args.patch, 2 * args.patch, generator=gen) for _ in range(10)]
    hazy = [0.6 * c + 0.4 for c in clear]
    common = dict(steps=10_000, lr=1e-4, batch_size=args.batch, patch_size=args.patch, strategy=Strategy("cpu"))
    seconds, sizes = {}, {}
    for name in args.backbones.split(","):
        torch.manual_seed(0)
        plain = SupervisedStepper(build_backbone(name, args.variant), hazy, clear, **common)
        bild = BILD(alpha=1.0, lr=0.01).stepper(build_backbone(name, args.variant), hazy, clear, **common)
        x, y = (torch.rand(args.batch, 3, args.patch, args.patch, generator=gen) for _ in range(2))
        seconds[name] = time_rounds(step_functions(plain, bild, x, y), args.repeats)
        sizes[name] = count_params(bild.trained.model)
    table = Table(title=f"Step cost, ratio to (a) (median ms of {args.repeats} interleaved rounds); batch "
                        f"{args.batch}, {args.patch}px patches, {args.variant} variants, CPU "
                        f"{torch.get_num_threads()} thread(s)")
    table.add_column("step")
    for name in seconds:
        table.add_column(f"{name} ({sizes[name]:,} params)", justify="right")
    for key, label in ROWS.items():
        table.add_row(label, *(f"{s[key] / s['a']:.2f} ({1e3 * s[key]:.0f} ms)" for s in seconds.values()))
    table.add_row("(e)/(j): saved by one forward-mode pass",
                  *(f"{s['e'] / s['j']:.1f}x" for s in seconds.values()))
    console.print(table)
    console.print(f"1-min load average at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores (a load above the core count makes the ratios noisy)")
    return {"seconds": seconds, "ratios": {n: {k: v / s["a"] for k, v in s.items()} for n, s in seconds.items()}}


if __name__ == "__main__":
    main()
