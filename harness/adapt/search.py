"""The layer search of BiLaLoRA and of its single-level ablation, as one engine loop (stage ``search``).

Every candidate group gets LoRA branches and one gate. One step of :class:`SearchStepper`:

- bilevel, after ``warmup_steps``: the lower loss f on a train batch and the upper loss F on a
  validation batch, both at the current (w, a); one ``autograd.grad`` of each over LoRA weights w
  and gates a together: 2 forwards + 2 backwards. ``d_w f`` is the lower (LoRA) update and
  ``hypergradient_from(d f, d F)`` the upper (gate) update, applied together.
- bilevel warm-up (B = 0 makes every gate gradient exactly zero): the lower update only.
- joint (the ablation): ``d f`` over w and a, one update of both.

One Adam holds two parameter groups, LoRA weights at ``lr`` and gates at ``gate_lr``: Adam is
per-parameter, so this is two optimisers in one state; in the bilevel search a gate's gradient
is only ever the hypergradient, and a gate without one (warm-up) is left untouched, moments
included. Under several ranks every gradient is averaged over ranks (``all_reduce_mean``) before
the hypergradient's dot products, so they are over the global batch.

The searched branches (all candidate groups' LoRA weights and gates) are saved as
``<workdir>/search.safetensors``, the search's curve, step time, peak memory and gate update count
in its sidecar: a rerun after the search loads them instead of searching again, and fine-tuning
continues from them.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from harness.adapt.adapter_io import load_branches, read_adapter, save_adapter
from harness.adapt.base import AdaptJob
from harness.adapt.hypergrad import hypergradient_from
from harness.adapt.lora import Layout, inject_lora, lora_parameters
from harness.adapt.training import NAN_FIX, LoopTotals, ValidationLoss, draw, job_strategy, run_loop, train_mode
from harness.engine.loop import finite_or_fail
from harness.store import sidecar

SEARCH_FILE = "search.safetensors"


class Counter:
    """An integer that checkpoints with the loop state."""

    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict[str, int]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.value = int(state["value"])


def _grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class SearchStepper:
    """One step of the bilevel (or joint) search over LoRA weights ``w`` and gates ``a``."""

    def __init__(self, job: AdaptJob, w: list[torch.nn.Parameter], a: list[torch.nn.Parameter], *, lr: float,
                 gate_lr: float, bilevel: bool, warmup_steps: int, steps: int):
        self.job, self.w, self.a = job, w, a
        self.bilevel, self.warmup_steps = bilevel, warmup_steps
        self.strategy = job_strategy(job)
        for p in w + a:
            p.requires_grad_(True)
        train_mode(job.model, frozen_base=True)
        self.trained = self.strategy.prepare(
            job.model, w + a, lambda _: torch.optim.Adam([{"params": w, "lr": lr}, {"params": a, "lr": gate_lr}]),
            manual_grads=True)
        self.gate_updates = Counter()
        self.validation = ValidationLoss(job, self.strategy, steps)

    def stateful(self) -> dict[str, Any]:
        return {**self.trained.stateful(), "gate_updates": self.gate_updates}

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        job, n = self.job, len(self.w)
        model = self.trained.model  # plain model: gradients come from autograd.grad, averaged below
        x = draw(job.train_images, job, rng, self.strategy)
        upper = self.bilevel and step >= self.warmup_steps
        v = draw(job.val_images, job, rng, self.strategy) if upper else None
        lower_loss = job.loss_fn(model(x), x)
        grads_f = _grads(lower_loss, self.w + self.a if upper or not self.bilevel else self.w)
        info = {"loss": lower_loss.item()}
        if upper:
            upper_loss = job.loss_fn(model(v), v)
            info["upper_loss"] = upper_loss.item()
            finite_or_fail(info["upper_loss"], "search (upper level)", step, NAN_FIX)
            grads_F = _grads(upper_loss, self.w + self.a)
            self.strategy.all_reduce_mean(grads_f + grads_F)
            gate_grads = hypergradient_from(grads_f[:n], grads_f[n:], grads_F[:n], grads_F[n:])
        else:
            self.strategy.all_reduce_mean(grads_f)
            gate_grads = None if self.bilevel else grads_f[n:]
        for p, g in zip(self.w, grads_f[:n]):
            p.grad = g
        if gate_grads is not None:
            for p, g in zip(self.a, gate_grads):
                p.grad = g
            self.gate_updates.value += 1
        self.trained.step()
        return self.validation.add_to(info, step, model)


def search_gates(job: AdaptJob, candidates: dict[str, list[str]], *, rank: int, alpha: float, layout: Layout,
                 steps: int, lr: float, gate_lr: float, warmup_steps: int, bilevel: bool, totals: LoopTotals,
                 total_steps: int) -> dict[str, Any]:
    """Search with a gated branch at every candidate group (or load a finished search); the model
    keeps every branch. Returns ``{"gates": {group: sigmoid(gate)}, "gate_updates": int}``."""
    saved = job.workdir / SEARCH_FILE
    settings = {"rank": rank, "alpha": alpha, "layout": layout, "sites": candidates}
    if saved.is_file() and sidecar(saved).is_file():
        meta, tensors = read_adapter(saved)
        if all(meta.get(k) == v for k, v in settings.items()):
            load_branches(job.model, meta, tensors)
            totals.seconds += meta["seconds"]
            totals.curves["search"] = meta["curve"]
            if meta.get("peak_mem_mb") is not None:
                totals.peak = max(totals.peak or 0.0, meta["peak_mem_mb"])
            return {"gates": meta["gates"], "gate_updates": meta["gate_updates"]}
    gates = inject_lora(job.model, candidates, rank, alpha, layout=layout)
    stepper = SearchStepper(job, lora_parameters(job.model), list(gates.values()), lr=lr, gate_lr=gate_lr,
                            bilevel=bilevel, warmup_steps=warmup_steps, steps=steps)
    result = totals.add("search", run_loop(job, "search", stepper, steps, total=total_steps))
    extra = {"seconds": result.seconds, "curve": result.curve, "peak_mem_mb": result.peak_mem_mb,
             "gate_updates": stepper.gate_updates.value}
    meta = json.loads(sidecar(save_adapter(job.model, candidates, rank, alpha, saved, layout, extra)).read_text())
    (job.workdir / "search.pt").unlink(missing_ok=True)  # the loop's state: the saved search replaces it
    return {"gates": meta["gates"], "gate_updates": meta["gate_updates"]}
