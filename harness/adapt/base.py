"""The contract between the runner and an adaptation method.

A method is registered in ``METHODS`` as ``builder(**recipe_params) -> AdaptMethod``. The runner
hands it an :class:`AdaptJob` (pretrained model, unlabeled target images split into train/val,
the H2C loss, budgets, a folder for resumable state) and gets back an :class:`AdaptResult`.
Every training loop of a method runs on the engine (``harness.engine.loop.TrainLoop``): it
checkpoints, survives SIGTERM, and returns its curve, its step time and (when asked) its peak memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from harness.registry import METHODS

# loss(restored, hazy_input) -> scalar tensor, differentiable w.r.t. ``restored``
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# progress(step_done, total_steps, info) -> None; lets the runner drive a rich progress bar
ProgressFn = Callable[[int, int, dict[str, float]], None]


@dataclass
class AdaptJob:
    model: nn.Module  # pretrained backbone (a DehazeNet), already on ``device``
    train_images: list[torch.Tensor]  # unlabeled target images, CHW float in [0, 1]
    val_images: list[torch.Tensor]  # held-out split for upper-level (gate) updates
    loss_fn: LossFn | None  # None only for methods whose ``needs_loss`` is False
    batch_size: int
    patch_size: int
    workdir: Path  # resumable state lives here; a rerun continues from it
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: ProgressFn | None = None
    source_model: nn.Module | None = None  # the ``source`` method's adapted model, for analyses like graft
    strategy: Any = None  # a harness.engine.strategy.Strategy; None: the current one (or one on ``device``)
    checkpoint_every: int = 25  # steps between saved loop states
    log_every: int = 10  # steps between curve points
    val_loss: bool = False  # curve points also carry the loss on a fixed validation batch
    measure_memory: bool = False  # peak tensor memory of the loops (on probed steps, outside train time)


@dataclass
class AdaptResult:
    model: nn.Module  # ready for inference (adapters merged)
    params_trainable: int
    artifacts: dict[str, Path] = field(default_factory=dict)  # e.g. {"adapter": ..., "weights": ...}
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able: chosen sites, gate values, ...
    params_unmerged: int | None = None  # base + adapter branches before merging (None: nothing to merge)
    train_seconds: float = 0.0  # wall time of the training steps, all loops, all process lives
    peak_mem_mb: float | None = None  # peak over the loops' probed steps (``measure_memory``)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # loop name -> curve points


class AdaptMethod(Protocol):
    name: str
    needs_loss: bool  # False for methods that never call job.loss_fn (e.g. ``none``)

    def run(self, job: AdaptJob) -> AdaptResult: ...


def build_method(spec: dict[str, Any]) -> AdaptMethod:
    """The method object of a method spec (``h2c`` is the loss's business, not the method's)."""
    return METHODS.build(spec["type"], **{k: v for k, v in spec.items() if k not in ("type", "h2c")})
