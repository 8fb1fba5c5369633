"""Contrastive training of an open_clip model on captioned degraded images, on the engine.

Used for the embedded guide (a tiny CLIP from scratch) and by ``harness guide tune`` (any open_clip
model from a weights file). Each step draws a batch of crops, flips it, turns it by a multiple of
90 degrees (adaptation patches are turned too) and adds a little Gaussian noise of random strength
(robustness: no single pixel pattern defines a class), then trains image-to-text cross-entropy
against one caption per class (a random paraphrase each step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F

from harness.engine.loop import LoopResult, TrainLoop
from harness.engine.strategy import Strategy, current_strategy
from harness.guide.pairs import CAPTION_CLASSES


class GuideStepper:
    """One contrastive step: a batch of captioned crops against one caption per class."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, labels: torch.Tensor, *,
                 steps: int, lr: float, batch_size: int, noise: float, strategy: Strategy,
                 weight_decay: float = 0.05):
        self.images, self.labels = images, labels
        self.batch_size, self.noise, self.strategy = batch_size, noise, strategy
        pre = open_clip.get_model_preprocess_cfg(model)
        self.mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1).to(strategy.device)
        self.std = torch.tensor(pre["std"]).view(1, 3, 1, 1).to(strategy.device)
        self.tokens = [tokenizer(list(captions)) for _, captions in CAPTION_CLASSES]
        self.trained = strategy.prepare(model, [p for p in model.parameters() if p.requires_grad],
                                        lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay))
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.trained.optimiser, max_lr=lr,
                                                            total_steps=max(steps, 1), pct_start=0.1)

    def stateful(self) -> dict[str, Any]:
        return {**self.trained.stateful(), "schedule": self.schedule}

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        n = self.batch_size
        idx = torch.randint(len(self.images), (n,), generator=rng)
        x, y = self.images[idx], self.labels[idx]
        flip = torch.rand(n, generator=rng) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = torch.rot90(x, int(torch.randint(4, (1,), generator=rng)), dims=(-2, -1))  # one turn per batch
        sigma = torch.rand(n, 1, 1, 1, generator=rng) * self.noise
        x = (x + sigma * torch.randn(x.shape, generator=rng)).clamp(0, 1)
        pick = [int(torch.randint(len(t), (1,), generator=rng)) for t in self.tokens]
        text = torch.cat([t[j:j + 1] for t, j in zip(self.tokens, pick)])
        device = self.strategy.device
        x, y = self.strategy.shard(x).to(device), self.strategy.shard(y).to(device)
        image_emb, text_emb, scale = self.trained.module(image=(x - self.mean) / self.std, text=text.to(device))
        loss = F.cross_entropy(scale * image_emb @ text_emb.T, y)
        self.trained.backward(loss)
        self.trained.step()
        self.schedule.step()
        return {"loss": loss.item()}


def train_guide(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, labels: torch.Tensor, *,
                steps: int, lr: float, batch_size: int, noise: float, seed: int, state_path: Path,
                stage: str = "guide training", progress=None, strategy: Strategy | None = None) -> LoopResult:
    """Train ``model`` in place (resumable from ``state_path``); returns the loop's result."""
    strategy = strategy or current_strategy()
    model.train()
    stepper = GuideStepper(model, tokenizer, images, labels, steps=steps, lr=lr, batch_size=batch_size,
                           noise=noise, strategy=strategy)
    result = TrainLoop(stage, steps, state_path, seed=seed, checkpoint_every=100, progress=progress,
                       strategy=strategy, nan_fix=f"lower the learning rate of the {stage}").run(stepper)
    model.eval()
    return result
