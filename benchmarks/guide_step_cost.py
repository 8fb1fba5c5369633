"""What an embedded-guide training step costs with torch's AdamW and with RowSparseAdamW, as a ratio.

Trains the embedded guide's default recipe (``train_embedded``: its model, objective and batch; a
smaller data pool, since drawing the pairs is not timed) for ``--steps`` steps with each optimiser in
turn, ``--rounds`` times, and prints each round's seconds per step, the medians and their ratio.
Both optimisers give the same weights bit for bit (``tests/test_optim.py``), so the ratio is the
whole gain. ``--align-batch N`` times the guide option ``align_batch`` as well (the gradient
alignment on at most N degraded crops).

    python benchmarks/guide_step_cost.py [--steps 40] [--rounds 3] [--threads 2] [--align-batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from harness.engine.optim import RowSparseAdamW
from harness.guide import _embedded_training
from harness.guide import training as guide_training
from harness.guide.embedded import train_embedded


def adamw(params, tables=(), **options):
    return torch.optim.AdamW(params, **options)


def seconds_per_step(optimiser, steps: int, training: dict) -> float:
    """The training loop's seconds per step (drawing the pairs not included) with ``optimiser`` in
    place of the one :class:`GuideStepper` builds."""
    guide_training.RowSparseAdamW = optimiser
    try:
        with tempfile.TemporaryDirectory() as folder:
            _, summary = train_embedded(steps, 0, Path(folder) / "state.pt", **training)
        return summary["seconds"] / steps
    finally:
        guide_training.RowSparseAdamW = RowSparseAdamW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--align-batch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = {"AdamW": (adamw, _embedded_training(pool=256)),
                "RowSparseAdamW": (RowSparseAdamW, _embedded_training(pool=256))}
    if args.align_batch is not None:
        variants[f"RowSparseAdamW, align_batch {args.align_batch}"] = (
            RowSparseAdamW, _embedded_training(pool=256, align_batch=args.align_batch))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (optimiser, training) in variants.items():
            times[name].append(seconds_per_step(optimiser, args.steps, training))
            print(f"round {round_ + 1} {name}: {times[name][-1]:.4f} s/step", flush=True)
    base = statistics.median(times["AdamW"])
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.4f} s/step, {statistics.median(values) / base:.3f} x AdamW")


if __name__ == "__main__":
    main()
