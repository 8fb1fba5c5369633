"""The contract between the runner and an adaptation method.

A method is registered in ``METHODS`` as ``builder(**recipe_params) -> AdaptMethod``. The runner
hands it an :class:`AdaptJob` (pretrained model, unlabeled target images split into train/val,
the H2C loss, budgets, a folder for resumable state) and gets back an :class:`AdaptResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

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


@dataclass
class AdaptResult:
    model: nn.Module  # ready for inference (adapters merged)
    params_trainable: int
    artifacts: dict[str, Path] = field(default_factory=dict)  # e.g. {"adapter": ..., "weights": ...}
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able: chosen sites, gate values, ...


class AdaptMethod(Protocol):
    name: str
    needs_loss: bool  # False for methods that never call job.loss_fn (e.g. ``none``)

    def run(self, job: AdaptJob) -> AdaptResult: ...
