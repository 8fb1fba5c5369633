"""Supervised pretraining on synthetic hazy/clear pairs: L1, Adam, cosine schedule, on the engine.

Random patches with flips and 90-degree rotations; every rank draws the same global batch and
trains on its slice. The loop (``harness.engine.loop``) saves the state every
``checkpoint_every`` steps and on SIGTERM, so a killed run continues where it stopped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.data.patches import sample_patches
from harness.engine.loop import LoopResult, TrainLoop
from harness.engine.strategy import Strategy, current_strategy


def cosine_schedule(optimiser: torch.optim.Optimizer, steps: int, floor: float = 0.0):
    """Cosine decay from the optimiser's lr to ``floor`` x lr over ``steps`` steps."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))


class SupervisedStepper:
    """One L1 step on a random paired batch (``loss`` may be ``l1`` or ``l2``)."""

    def __init__(self, model: nn.Module, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor], *,
                 steps: int, lr: float, batch_size: int, patch_size: int, strategy: Strategy,
                 params: list[nn.Parameter] | None = None, loss: str = "l1"):
        self.hazy, self.clear = hazy, clear
        self.batch_size, self.patch_size = batch_size, patch_size
        self.strategy = strategy
        self.loss = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        params = list(model.parameters()) if params is None else params
        self.trained = strategy.prepare(model, params, lambda p: torch.optim.Adam(p, lr=lr))
        self.schedule = cosine_schedule(self.trained.optimiser, steps)

    def stateful(self) -> dict[str, Any]:
        return {**self.trained.stateful(), "schedule": self.schedule}

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        x, y = sample_patches(self.hazy, self.batch_size, self.patch_size, rng, targets=self.clear)
        device = self.strategy.device
        x, y = self.strategy.shard(x).to(device), self.strategy.shard(y).to(device)
        loss = self.loss(self.trained.module(x), y)
        self.trained.backward(loss)
        self.trained.step()
        self.schedule.step()
        return {"loss": loss.item()}


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
    device: torch.device | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    strategy: Strategy | None = None,
    make_stepper: Callable[..., Any] = SupervisedStepper,
) -> tuple[nn.Module, LoopResult]:
    """Train ``model`` to map hazy patches to clear ones; resumes from ``state_path`` if present.

    ``make_stepper(model, hazy, clear, steps=, lr=, batch_size=, patch_size=, strategy=)`` makes the
    loop's stepper: plain L1 by default, or a reweighting one (``harness.pretrain.bild``).
    """
    strategy = strategy or (Strategy(device) if device is not None else current_strategy())
    model.to(strategy.device).train()
    stepper = make_stepper(model, hazy, clear, steps=steps, lr=lr, batch_size=batch_size, patch_size=patch_size,
                           strategy=strategy)
    loop = TrainLoop("pretraining", steps, state_path, seed=seed, checkpoint_every=checkpoint_every,
                     progress=progress, strategy=strategy,
                     nan_fix="lower budget.pretrain_lr or check the pretraining images")
    result = loop.run(stepper)
    model.eval()
    return model, result
