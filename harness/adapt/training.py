"""The training loop every adaptation method shares: Adam on given parameters, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from harness.adapt.base import LossFn, ProgressFn
from harness.data.patches import sample_patches
from harness.errors import HarnessError
from harness.store.files import load_training_state, save_training_state

CHECKPOINT_EVERY = 25  # steps between saved states (a killed run loses at most this many)


def finite_or_fail(loss: torch.Tensor, step: int, what: str) -> None:
    if not torch.isfinite(loss):
        raise HarnessError(f"{what} loss is {loss.item()} at step {step}", "lower lr (the method's `lr` in the recipe)")


def train_steps(model: nn.Module, params: list[nn.Parameter], images: Sequence[torch.Tensor], loss_fn: LossFn,
                steps: int, lr: float, batch_size: int, patch_size: int, seed: int, state_path: Path,
                progress: ProgressFn | None = None, checkpoint_every: int | None = None,
                device: torch.device | None = None) -> None:
    """Minimise ``loss_fn(model(x), x)`` over ``params`` on random patches of ``images``.

    State (model weights, optimiser, step, RNG) is saved every ``checkpoint_every`` steps
    (default: the module's ``CHECKPOINT_EVERY``, 25) to ``state_path``; a rerun with the same path continues from there.
    """
    device = device or next(model.parameters()).device
    checkpoint_every = checkpoint_every or CHECKPOINT_EVERY
    optimiser = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    start = load_training_state(state_path, generator, device, model=model, optimiser=optimiser)
    model.train()
    for step in range(start, steps):
        x, _ = sample_patches(images, batch_size, patch_size, generator)
        x = x.to(device)
        loss = loss_fn(model(x), x)
        finite_or_fail(loss, step, "adaptation")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        if done % checkpoint_every == 0 and done < steps:
            save_training_state(state_path, done, generator, model=model, optimiser=optimiser)
        if progress is not None:
            progress(done, steps, {"h2c": loss.item()})
    model.eval()
