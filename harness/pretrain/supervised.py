"""Supervised pretraining on synthetic hazy/clear pairs: L1, Adam, cosine schedule, on the engine.

Random patches with flips and 90-degree rotations; every rank draws the same global batch and
trains on its slice. The loop (``harness.engine.loop``) saves the state every
``checkpoint_every`` steps and on SIGTERM, so a killed run continues where it stopped.

A backbone may split pretraining into phases (``DehazeNet.pretrain_phases``, e.g. LoRun's single
block, then its stage adapters): each phase is its own loop with its own parameters, loss,
optimiser, schedule and state file, and a finished phase leaves its final state behind, so a run
killed in a later phase resumes there without repeating an earlier one.
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
from harness.models.base import PretrainPhase


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


def phase_state_path(state_path: Path, phase: PretrainPhase, phases: Sequence[PretrainPhase]) -> Path:
    """``state_path`` itself for a single phase; ``<stem>-<phase name><suffix>`` beside it otherwise."""
    state_path = Path(state_path)
    return state_path if len(phases) == 1 else state_path.with_name(f"{state_path.stem}-{phase.name}{state_path.suffix}")


def _frozen_except(model: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Only ``params`` require gradients (DDP leaves the others out of its buckets)."""
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


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
    """Train ``model`` to map hazy patches to clear ones, phase by phase; resumes from ``state_path``
    (or its per-phase siblings, see :func:`phase_state_path`) if present.

    Returns the model and one result over all phases: steps, resumed steps and seconds summed, the
    curves joined (each point's ``step`` counted from the first phase, ``phase`` its index).
    ``make_stepper`` (with :class:`SupervisedStepper`'s arguments) makes each phase's stepper: plain
    L1 by default, or a reweighting one (``harness.pretrain.bild``).
    """
    strategy = strategy or (Strategy(device) if device is not None else current_strategy())
    model.to(strategy.device).train()
    phases = model.pretrain_phases(steps) if hasattr(model, "pretrain_phases") else [
        PretrainPhase("pretraining", steps, list(model.parameters()))]
    total = sum(phase.steps for phase in phases)
    results: list[LoopResult] = []
    done_before = 0
    try:
        for index, phase in enumerate(phases):
            if phase.setup is not None:
                phase.setup()
            _frozen_except(model, phase.params)
            stepper = make_stepper(model, hazy, clear, steps=phase.steps, lr=lr, batch_size=batch_size,
                                   patch_size=patch_size, strategy=strategy, params=phase.params,
                                   loss=phase.loss)
            path = phase_state_path(state_path, phase, phases)
            offset = done_before
            shifted = None if progress is None else (
                lambda done, _total, info, offset=offset: progress(offset + done, total, info))
            loop = TrainLoop(phase.name, phase.steps, path, seed=seed + index, checkpoint_every=checkpoint_every,
                             progress=shifted, strategy=strategy,
                             nan_fix="lower budget.pretrain_lr or check the pretraining images")
            result = loop.run(stepper)
            if len(phases) > 1 and index < len(phases) - 1:  # a later phase's rerun starts from here
                strategy.save_state(path, stepper.stateful(), torch.Generator().manual_seed(seed),
                                    {"step": phase.steps, "curve": result.curve, "seconds": result.seconds,
                                     "stage": phase.name})
            results.append(result)
            done_before += phase.steps
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    return model, _joined(results, phases)


def _joined(results: list[LoopResult], phases: Sequence[PretrainPhase]) -> LoopResult:
    if len(results) == 1:
        return results[0]
    curve, offset = [], 0
    for index, (phase, result) in enumerate(zip(phases, results)):
        curve += [{**point, "step": offset + point["step"], "phase": float(index)} for point in result.curve]
        offset += phase.steps
    peaks = [r.peak_mem_mb for r in results if r.peak_mem_mb is not None]
    return LoopResult(sum(r.steps for r in results), sum(r.resumed_at for r in results),
                      sum(r.seconds for r in results), curve, max(peaks) if peaks else None)
