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
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.engine.loop import LoopResult, TrainLoop
from harness.engine.optim import RowSparseAdamW
from harness.engine.strategy import Strategy, current_strategy
from harness.guide.pairs import CAPTION_CLASSES, Captioned


# How "clear" each class is along every haze direction T(clear) - T(haze class): 1 clear, 0 not clear.
CLEARNESS = {"clear": 1.0, "light": 0.5}
HAZE_CLASSES = ("light", "haze", "heavy", "uneven", "night")


class GuideStepper:
    """One step: contrastive cross-entropy of a batch of captioned crops against one caption per class,
    plus (``direction_weight``) a logistic loss along each haze direction ``T(clear) - T(c)`` that
    only clear crops pass (light haze half-way); optionally adversarial crops (FGSM or PGD), gradient
    alignment, and H2C rankings of points towards the clean crop (``rank_weight``) and of
    recolourings (``cast_weight``)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, data: Captioned, *,
                 steps: int, lr: float, batch_size: int, noise: float, strategy: Strategy,
                 weight_decay: float = 0.05, direction_weight: float = 1.0, adversarial: float = 0.0,
                 align_weight: float = 0.0, rank_weight: float = 0.0, adversarial_steps: int = 1,
                 align_radius: float = 0.0, cast_weight: float = 0.0, align_batch: int = 0):
        self.data = data
        self.cast_weight, self.align_batch = cast_weight, align_batch
        self.adversarial_steps, self.align_radius = adversarial_steps, align_radius
        self.batch_size, self.noise, self.strategy = batch_size, noise, strategy
        self.direction_weight, self.adversarial, self.align_weight = direction_weight, adversarial, align_weight
        self.rank_weight = rank_weight
        names = [c for c, _ in CAPTION_CLASSES]
        self.clearness = torch.tensor([CLEARNESS.get(c, 0.0) for c in names], device=strategy.device)
        self.clear_index = names.index("clear")
        self.haze_index = torch.tensor([names.index(c) for c in HAZE_CLASSES], device=strategy.device)
        # the prompt H2C contrasts with "clear" for each class: "night" for night haze, "haze" for every other
        self.prompt_of = torch.tensor([names.index("night") if c == "night" else names.index("haze") for c in names],
                                      device=strategy.device)
        # the haze direction each class's alignment uses: its own, or the default "haze" for casts/artifacts
        own = {c: names.index(c) for c in HAZE_CLASSES}
        self.negative_of = torch.tensor([own.get(c, names.index("haze")) for c in names], device=strategy.device)
        pre = open_clip.get_model_preprocess_cfg(model)
        self.mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1).to(strategy.device)
        self.std = torch.tensor(pre["std"]).view(1, 3, 1, 1).to(strategy.device)
        self.tokens = [tokenizer(list(captions)) for _, captions in CAPTION_CLASSES]
        tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]  # the token table
        self.trained = strategy.prepare(model, [p for p in model.parameters() if p.requires_grad],
                                        lambda p: RowSparseAdamW(p, tables=tables, lr=lr, weight_decay=weight_decay))
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(self.trained.optimiser, max_lr=lr,
                                                            total_steps=max(steps, 1), pct_start=0.1)

    def stateful(self) -> dict[str, Any]:
        return {**self.trained.stateful(), "schedule": self.schedule}

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        n = self.batch_size
        idx = torch.randint(len(self.data.labels), (n,), generator=rng)
        x, y, clean = self.data.images[idx], self.data.labels[idx], self.data.clean[idx]
        flip = (torch.rand(n, generator=rng) < 0.5).view(-1, 1, 1, 1)
        turn = int(torch.randint(4, (1,), generator=rng))  # one turn per batch
        x, clean = (torch.rot90(torch.where(flip, t.flip(-1), t), turn, dims=(-2, -1)) for t in (x, clean))
        sigma = torch.rand(n, 1, 1, 1, generator=rng) * self.noise
        x = (x + sigma * torch.randn(x.shape, generator=rng)).clamp(0, 1)
        pick = [int(torch.randint(len(t), (1,), generator=rng)) for t in self.tokens]
        text = torch.cat([t[j:j + 1] for t, j in zip(self.tokens, pick)])
        device = self.strategy.device
        x, y, clean = (self.strategy.shard(t).to(device) for t in (x, y, clean))
        text = text.to(device)
        if self.adversarial > 0:
            x = torch.cat([self._attack(x[:len(x) // 2], y[:len(x) // 2], text, rng), x[len(x) // 2:]])
        loss = self._loss(self.trained.module, x, y, text)
        if self.rank_weight > 0:
            loss = loss + self.rank_weight * self._ranking(x, y, clean, text, rng)
        if self.cast_weight > 0:
            loss = loss + self.cast_weight * self._casts(x, y, clean, text, rng)
        self.trained.backward(loss)
        info = {"loss": loss.item()}
        if self.align_weight > 0:
            align = self._alignment(x, y, clean, text, rng)
            params = self.trained.params
            grads = torch.autograd.grad(self.align_weight * align, params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            self.strategy.all_reduce_mean(grads)
            for p, g in zip(params, grads):
                p.grad = g if p.grad is None else p.grad.add_(g)  # in place: no second 25 MB token-table gradient
            info["alignment"] = 1.0 - align.item()
        self.trained.step()
        self.schedule.step()
        return info

    def _attack(self, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Adversarial versions of ``x`` within ``adversarial`` of it (max-norm): one FGSM step from a
        random start (fast adversarial training), or ``adversarial_steps`` PGD steps."""
        radius, k = self.adversarial, self.adversarial_steps
        step = 1.25 * radius if k == 1 else 2.5 * radius / k
        adv = (x + radius * (2 * torch.rand(x.shape, generator=rng).to(x.device) - 1)).clamp(0, 1)
        for _ in range(k):
            adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(self._loss(self.trained.model, adv, y, text), adv)
            adv = torch.minimum(torch.maximum(adv.detach() + step * grad.sign(), x - radius), x + radius).clamp(0, 1)
        return adv

    def _alignment(self, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, text: torch.Tensor,
                   rng: torch.Generator) -> torch.Tensor:
        """1 - cos(gradient of the clear score at a point on the line through a degraded crop and its
        clean crop, the way to the clean crop): teaches the guide's pixel gradient to lead towards the
        clean image (double backprop). Points run from the degraded crop (a = 1) past the clean one
        (a < 0: overdone, e.g. too much contrast), so the gradient also leads back from overshoots."""
        degraded = y != self.clear_index
        if self.align_batch:  # the batch is drawn at random: its first degraded crops are a random subset
            degraded &= torch.cumsum(degraded, 0) <= self.align_batch
        if not degraded.any():
            return torch.zeros((), device=x.device)
        a = (torch.rand(int(degraded.sum()), 1, 1, 1, generator=rng) * 1.5 - 0.5).to(x.device)
        start = (clean[degraded] + a * (x[degraded] - clean[degraded])).clamp(0, 1)
        model = self.trained.model
        with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no double backward
            text_emb = model.encode_text(text, normalize=True)
        direction = text_emb[self.clear_index][None] - text_emb[self.negative_of[y[degraded]]]

        def clear_score_gradient(images: torch.Tensor, direction: torch.Tensor, create_graph: bool) -> torch.Tensor:
            xd = images.detach().requires_grad_(True)
            with sdpa_kernel(SDPBackend.MATH):
                score = (model.encode_image((xd - self.mean) / self.std, normalize=True) * direction).sum()
                return torch.autograd.grad(score, xd, create_graph=create_graph)[0]

        if self.align_radius > 0:  # where sign steps up the clear score lead, as pixel descent on H2C does
            u = torch.rand(len(start), 1, 1, 1, generator=rng).to(x.device)
            step = clear_score_gradient(start, direction.detach(), False).sign()
            start = (start + self.align_radius * u * step).clamp(0, 1)
        grad = clear_score_gradient(start, direction, True)
        way = (clean[degraded] - start).flatten(1)
        return 1.0 - F.cosine_similarity(grad.flatten(1), way, dim=1).mean()

    def _ranking(self, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, text: torch.Tensor,
                 rng: torch.Generator) -> torch.Tensor:
        """Rank by the H2C loss itself, with a hazy crop as its input: closer to the clean crop scores lower.

        Two points on the line through the hazy and the clean crop (``c + a (h - c)``, ``a`` from
        -0.6, overdone, to 1, the input): the one with the smaller ``|a|`` must score lower, by a
        margin growing with the gap; and the clean crop must beat a version of itself missed the way
        a dehazer misses it (see :func:`_imperfect`). The cosine of H2C ignores how far an output
        moved, so without this a small, "pure" move scores as well as removing all the haze."""
        hazy = torch.isin(y, self.haze_index)
        if not hazy.any():
            return torch.zeros((), device=x.device)
        h, c = x[hazy], clean[hazy]
        n, device = len(h), x.device
        a = (torch.rand(2, n, 1, 1, 1, generator=rng) * 1.6 - 0.6).to(device)
        first_nearer = a[0].abs() <= a[1].abs()
        near, far = torch.where(first_nearer, a[0], a[1]), torch.where(first_nearer, a[1], a[0])
        h2c_near, h2c_far, h2c_clean, h2c_imperfect = self._h2c(
            y[hazy], text, h, (c + near * (h - c)).clamp(0, 1), (c + far * (h - c)).clamp(0, 1), c, _imperfect(c, rng))
        line = F.relu(h2c_near - h2c_far + 0.2 * (far.abs() - near.abs()).flatten())
        truth = F.relu(h2c_clean - h2c_imperfect + 0.1)
        return line.mean() + truth.mean()

    def _casts(self, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, text: torch.Tensor,
               rng: torch.Generator) -> torch.Tensor:
        """Rank by the H2C loss, with a hazy crop as its input: its clean crop must score lower, by a
        margin, than the hazy crop under a strong global cast or as a tinted monochrome (see
        :func:`_recoloured`). The class captions only say a cast *clean* crop is a cast; this says
        that recolouring a hazy one is not dehazing it, the collapse adaptation found (docs/guide.md)."""
        hazy = torch.isin(y, self.haze_index)
        if not hazy.any():
            return torch.zeros((), device=x.device)
        h2c_clean, h2c_recoloured = self._h2c(y[hazy], text, x[hazy], clean[hazy], _recoloured(x[hazy], rng))
        return F.relu(h2c_clean - h2c_recoloured + 0.3).mean()

    def _h2c(self, y: torch.Tensor, text: torch.Tensor, inputs: torch.Tensor, *outputs: torch.Tensor
             ) -> list[torch.Tensor]:
        """The H2C loss of each batch in ``outputs`` with ``inputs`` (hazy crops of classes ``y``) as
        its input, per image, towards each class's own prompt pair; one forward pass for all."""
        model = self.trained.model  # the guide trains on one device (see embedded.train_embedded)
        e_in, *e_out = model.encode_image((torch.cat([inputs, *outputs]) - self.mean) / self.std,
                                          normalize=True).split(len(inputs))
        text_emb = model.encode_text(text, normalize=True)
        direction = F.normalize(text_emb[self.clear_index][None] - text_emb[self.prompt_of[y]], dim=-1)
        return [1 - F.cosine_similarity(e - e_in, direction, dim=-1) for e in e_out]

    def _loss(self, module, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image_emb, text_emb, scale = module(image=(x - self.mean) / self.std, text=text)
        loss = F.cross_entropy(scale * image_emb @ text_emb.T, y)
        if self.direction_weight > 0:
            directions = text_emb[self.clear_index][None] - text_emb[self.haze_index]  # (haze classes, dim)
            score = scale * image_emb @ directions.T / 2  # /2: |T(clear) - T(c)| is at most 2
            target = self.clearness[y][:, None].expand_as(score)
            loss = loss + self.direction_weight * F.binary_cross_entropy_with_logits(score, target)
        return loss


def _luma(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma of NCHW RGB images, N1HW."""
    return (images * torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _imperfect(clean: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each clean crop missed in one random way a dehazer misses it: flat or overstretched contrast,
    desaturated or oversaturated, too dark, blurred, a checkerboard (transposed convolutions), a cast."""
    n, device = len(clean), clean.device
    pick = torch.randint(8, (n,), generator=rng).to(device)
    u = torch.rand(n, 1, 1, 1, generator=rng).to(device)
    gain = (0.75 + 0.5 * torch.rand(n, 3, 1, 1, generator=rng)).to(device)
    mean = clean.mean((1, 2, 3), keepdim=True)
    luma = _luma(clean)
    yy, xx = torch.meshgrid(torch.arange(clean.shape[-2]), torch.arange(clean.shape[-1]), indexing="ij")
    checker = ((yy + xx) % 2 * 2 - 1).to(clean)
    options = torch.stack([
        mean + (0.45 + 0.3 * u) * (clean - mean),
        mean + (1.4 + 0.5 * u) * (clean - mean),
        luma + 0.5 * u * (clean - luma),
        luma + (1.4 + 0.6 * u) * (clean - luma),
        clean ** (1.4 + 0.8 * u),
        F.avg_pool2d(F.pad(clean, (1, 1, 1, 1), mode="replicate"), 3, stride=1),
        clean + (0.03 + 0.05 * u) * checker,
        clean * gain / gain.mean(1, keepdim=True),
    ])
    return options[pick, torch.arange(n)].clamp(0, 1)


def _recoloured(images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each image under a strong global colour cast (channel gains from 0.4-1.6 over their mean) or, for half of
    them, as a monochrome of its luma in a random tint (the orange monochrome adaptation collapsed to)."""
    n, device = len(images), images.device
    gain = (0.4 + 1.2 * torch.rand(n, 3, 1, 1, generator=rng)).to(device)
    tint = (0.3 + 1.2 * torch.rand(n, 3, 1, 1, generator=rng)).to(device)
    mono = (torch.rand(n, 1, 1, 1, generator=rng) < 0.5).to(device)
    luma = _luma(images)
    cast = images * gain / gain.mean(1, keepdim=True)
    return torch.where(mono, luma * tint / tint.mean(1, keepdim=True), cast).clamp(0, 1)


def train_guide(model: torch.nn.Module, tokenizer: Callable, data: Captioned, *,
                steps: int, lr: float, batch_size: int, noise: float, seed: int, state_path: Path,
                stage: str = "guide training", progress=None, strategy: Strategy | None = None,
                **objective) -> LoopResult:
    """Train ``model`` in place (resumable from ``state_path``); returns the loop's result.
    ``objective``: :class:`GuideStepper`'s loss options (direction, adversarial, alignment, ranking)."""
    strategy = strategy or current_strategy()
    model.train()
    stepper = GuideStepper(model, tokenizer, data, steps=steps, lr=lr, batch_size=batch_size,
                           noise=noise, strategy=strategy, **objective)
    result = TrainLoop(stage, steps, state_path, seed=seed, checkpoint_every=100, progress=progress,
                       strategy=strategy, nan_fix=f"lower the learning rate of the {stage}").run(stepper)
    model.eval()
    return result
