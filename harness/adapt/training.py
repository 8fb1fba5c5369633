"""The adaptation's training loops, on the engine (``harness.engine.loop.TrainLoop``).

:class:`AdamStepper` is the step of full fine-tuning and of LoRA fine-tuning: the loss on a random
global batch of target patches (this rank's slice), Adam on the given parameters through the
strategy. :func:`run_loop` runs any adaptation stepper the same way: resumable state
``<workdir>/<stage>.pt``, the job's seed, checkpoints, SIGTERM save-and-stop, progress placed in
the method's whole schedule, the engine's memory probe; :class:`LoopTotals` folds the loops of a
method into its :class:`AdaptResult` (train time, peak memory, one curve per loop).

Under LoRA methods the base is frozen, and so are its normalisation statistics: BatchNorm (and
any norm layer with running statistics) stays in eval mode, so the saved base + adapter is
exactly the model that was trained and scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from harness.adapt.base import AdaptJob, AdaptResult
from harness.data.patches import sample_patches
from harness.engine.loop import LoopResult, TrainLoop, rng_state_kept
from harness.engine.strategy import Prepared, Strategy, current_strategy

NAN_FIX = "lower lr (the method's `lr` in the recipe)"
VAL_SEED_OFFSET = 7919  # the fixed validation batch is drawn with its own generator, off the data stream


def job_strategy(job: AdaptJob) -> Strategy:
    """The job's strategy; else the current one when it is distributed or on the job's device."""
    if job.strategy is not None:
        return job.strategy
    current = current_strategy()
    return current if current.world > 1 or current.device == torch.device(job.device) else Strategy(job.device)


def hold_norm_statistics(model: nn.Module) -> None:
    """Put every norm layer with running statistics (BatchNorm, tracked InstanceNorm) in eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()


def train_mode(model: nn.Module, frozen_base: bool) -> None:
    """``model.train()``, norm statistics held when the base is frozen (LoRA methods)."""
    model.train()
    if frozen_base:
        hold_norm_statistics(model)


def draw(images: Sequence[torch.Tensor], job: AdaptJob, rng: torch.Generator, strategy: Strategy) -> torch.Tensor:
    """A global batch of random patches drawn with ``rng``; this rank's slice, on its device."""
    x, _ = sample_patches(images, job.batch_size, job.patch_size, rng)
    return strategy.shard(x).to(strategy.device)


class ValidationLoss:
    """The loss on one fixed validation batch (every rank the whole batch), for the curves."""

    def __init__(self, job: AdaptJob, strategy: Strategy, steps: int):
        self.job, self.steps = job, steps
        self.batch = None
        if job.val_loss and job.val_images:
            generator = torch.Generator().manual_seed(job.seed + VAL_SEED_OFFSET)
            self.batch = sample_patches(job.val_images, job.batch_size, job.patch_size, generator)[0].to(strategy.device)

    def add_to(self, info: dict[str, float], step: int, model: nn.Module) -> dict[str, float]:
        """Add ``val_loss`` to ``info`` on the steps that make a curve point."""
        done = step + 1
        if self.batch is None or (done % self.job.log_every and done != self.steps):
            return info
        modes = {m: m.training for m in model.modules()}
        model.eval()
        with rng_state_kept(), torch.no_grad():
            info["val_loss"] = float(self.job.loss_fn(model(self.batch), self.batch))
        for module, mode in modes.items():
            module.training = mode
        return info


class AdamStepper:
    """One step of ``loss_fn(model(x), x)`` with Adam on ``params`` (full FT, LoRA fine-tuning)."""

    def __init__(self, job: AdaptJob, params: list[nn.Parameter], lr: float, steps: int, frozen_base: bool):
        self.job = job
        self.strategy = job_strategy(job)
        train_mode(job.model, frozen_base)
        self.trained: Prepared = self.strategy.prepare(job.model, params, lambda p: torch.optim.Adam(p, lr=lr))
        self.validation = ValidationLoss(job, self.strategy, steps)

    def stateful(self) -> dict[str, Any]:
        return self.trained.stateful()

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        x = draw(self.job.train_images, self.job, rng, self.strategy)
        loss = self.job.loss_fn(self.trained.module(x), x)
        self.trained.backward(loss)
        self.trained.step()
        return self.validation.add_to({"loss": loss.item()}, step, self.trained.model)


def run_loop(job: AdaptJob, stage: str, stepper: Any, steps: int, offset: int = 0,
             total: int | None = None) -> LoopResult:
    """Run ``stepper`` for ``steps`` steps as loop ``stage`` of the job (state ``<workdir>/<stage>.pt``).

    Progress reports ``offset + done`` of ``total`` (the method's whole schedule; default ``steps``).
    """
    from harness.metrics.efficiency import peak_memory

    strategy = getattr(stepper, "strategy", None) or job_strategy(job)
    progress = None
    if job.progress is not None:
        def progress(done: int, _: int, info: dict[str, float], report=job.progress) -> None:
            report(offset + done, total or steps, info)
    probe = None
    if job.measure_memory:
        def probe():
            return peak_memory(strategy.device, model=(job.model, job.loss_fn, job.source_model),
                               optimisers=[stepper.trained.optimiser])
    job.workdir.mkdir(parents=True, exist_ok=True)
    loop = TrainLoop(stage, steps, job.workdir / f"{stage}.pt", seed=job.seed, checkpoint_every=job.checkpoint_every,
                     log_every=job.log_every, progress=progress, strategy=strategy, nan_fix=NAN_FIX,
                     memory_probe=probe)
    return loop.run(stepper)


class LoopTotals:
    """The loops of one method: summed step time, peak memory, one curve per loop."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.peak: float | None = None
        self.curves: dict[str, list[dict[str, float]]] = {}

    def add(self, stage: str, result: LoopResult) -> LoopResult:
        self.seconds += result.seconds
        if result.peak_mem_mb is not None:
            self.peak = max(self.peak or 0.0, result.peak_mem_mb)
        self.curves[stage] = result.curve
        return result

    def fill(self, result: AdaptResult) -> AdaptResult:
        result.train_seconds, result.peak_mem_mb, result.curves = self.seconds, self.peak, self.curves
        return result
