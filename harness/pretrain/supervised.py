"""Supervised pretraining on synthetic hazy/clear pairs: L1, Adam, cosine schedule, resumable.

Random patches with flips and 90-degree rotations. State (weights, optimiser, schedule, RNG) is
saved every ``checkpoint_every`` steps so a killed run continues where it stopped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.data.patches import sample_patches
from harness.errors import HarnessError
from harness.store import load_training_state, save_training_state


def pretrain_supervised(
    model: nn.Module,
    hazy: Sequence[torch.Tensor],
    clear: Sequence[torch.Tensor],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    patch_size: int,
    seed: int,
    state_path: Path,
    checkpoint_every: int = 100,
    device: torch.device = torch.device("cpu"),
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> nn.Module:
    """Train ``model`` to map hazy patches to clear ones; resumes from ``state_path`` if present."""
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    generator = torch.Generator().manual_seed(seed)
    start = load_training_state(state_path, generator, device, model=model, optimiser=optimiser, schedule=schedule)
    for step in range(start, steps):
        x, y = sample_patches(hazy, batch_size, patch_size, generator, targets=clear)
        loss = F.l1_loss(model(x.to(device)), y.to(device))
        if not torch.isfinite(loss):
            raise HarnessError(f"pretraining loss is {loss.item()} at step {step}",
                               "lower budget.pretrain_lr or check the pretraining images")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        done = step + 1
        if done % checkpoint_every == 0 and done < steps:
            save_training_state(state_path, done, generator, model=model, optimiser=optimiser, schedule=schedule)
        if progress is not None:
            progress(done, steps, {"l1": loss.item()})
    model.eval()
    return model
