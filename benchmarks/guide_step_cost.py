"""What an embedded-guide training step costs with torch's AdamW and with RowSparseAdamW, as a ratio.

Trains the embedded guide's default recipe (its model, objective and batch; a smaller data pool, since
drawing pairs is not timed) for ``--steps`` steps with each optimiser in turn, ``--rounds`` times,
and prints each round's seconds per step, the medians and their ratio. Both optimisers give the same
weights bit for bit (``tests/test_optim.py``), so the ratio is the whole gain. ``--align-batch N``
times the guide option ``align_batch`` as well (the gradient alignment on at most N degraded crops).

    python benchmarks/guide_step_cost.py [--steps 40] [--rounds 3] [--threads 2] [--align-batch 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from harness.engine.optim import RowSparseAdamW
from harness.guide import _embedded_training
from harness.guide import training as guide_training
from harness.guide.embedded import tiny_clip
from harness.guide.pairs import make_pairs


def seconds_per_step(optimiser: type, steps: int, data, training: dict, align_batch: int) -> float:
    guide_training.RowSparseAdamW = optimiser  # what GuideStepper builds
    try:
        torch.manual_seed(0)
        model = tiny_clip(training["model_name"], training["image_size"])
        objective = {k: training[k] for k in ("direction_weight", "adversarial", "align_weight")}
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            guide_training.train_guide(model, open_clip.get_tokenizer(training["model_name"]), data, steps=steps,
                                       lr=5e-4, batch_size=64, noise=training["noise"], seed=0,
                                       state_path=Path(folder) / "state.pt", align_batch=align_batch, **objective)
            return (time.perf_counter() - start) / steps
    finally:
        guide_training.RowSparseAdamW = RowSparseAdamW


def adamw(params, tables=(), **options):
    return torch.optim.AdamW(params, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--align-batch", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    training = _embedded_training()
    data = make_pairs(256, training["image_size"], 0)
    variants = {"AdamW": (adamw, 0), "RowSparseAdamW": (RowSparseAdamW, 0)}
    if args.align_batch is not None:
        variants[f"RowSparseAdamW, align_batch {args.align_batch}"] = (RowSparseAdamW, args.align_batch)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (optimiser, align_batch) in variants.items():
            times[name].append(seconds_per_step(optimiser, args.steps, data, training, align_batch))
            print(f"round {round_ + 1} {name}: {times[name][-1]:.4f} s/step", flush=True)
    base = statistics.median(times["AdamW"])
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.4f} s/step, {statistics.median(values) / base:.3f} x AdamW")


if __name__ == "__main__":
    main()
