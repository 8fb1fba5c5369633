"""Adaptation methods: ``none``, ``full_ft``, ``manual_lora``, ``bilalora`` and ``naive_joint``.

BiLaLoRA searches where LoRA should go: every candidate site group gets a gate; LoRA weights
follow the H2C loss on the training split (lower level) while the gates follow the first-order
hypergradient of the H2C loss on the validation split (upper level; gates are only in the upper
optimiser). The ``top_k`` groups with the largest gates get fresh LoRA branches (B = 0) whose
gates are frozen at the searched value; all other branches are dropped; the kept ones are
fine-tuned on the training split and merged, so inference costs exactly what the base model costs.
``naive_joint`` is the single-level ablation: gates and LoRA trained together on the training split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field
from safetensors.torch import save_file

from harness.adapt import training
from harness.adapt.base import AdaptJob, AdaptResult
from harness.adapt.hypergrad import hypergradient
from harness.adapt.lora import (
    gate_parameters,
    inject_lora,
    lora_modules,
    lora_parameters,
    merge_lora,
    remove_lora,
    select_sites,
)
from harness.adapt.training import finite_or_fail, train_steps
from harness.data.patches import sample_patches
from harness.errors import HarnessError
from harness.registry import METHODS, CheckContext, NonNegativeInt, PositiveFloat, PositiveInt
from harness.store import atomic_write_json


@dataclass
class NoAdaptation:
    name: str = "none"
    needs_loss: bool = False

    def run(self, job: AdaptJob) -> AdaptResult:
        return AdaptResult(model=job.model.eval(), params_trainable=0)


@dataclass
class FullFineTune:
    steps: int
    lr: float
    name: str = "full_ft"
    needs_loss: bool = True

    def run(self, job: AdaptJob) -> AdaptResult:
        model = job.model
        params = [p for p in model.parameters()]
        for p in params:
            p.requires_grad_(True)
        train_steps(model, params, job.train_images, job.loss_fn, self.steps, self.lr, job.batch_size,
                    job.patch_size, job.seed, job.workdir / "finetune.pt", job.progress,
                    checkpoint_every=training.CHECKPOINT_EVERY, device=job.device)
        return AdaptResult(model=model.eval(), params_trainable=sum(p.numel() for p in params))


def save_adapter(model: torch.nn.Module, sites: dict[str, list[str]], rank: int, alpha: float, path: Path) -> Path:
    """LoRA weights and gates of ``model`` as safetensors, with a JSON sidecar describing them."""
    tensors, gates = {}, {}
    for name, module in lora_modules(model).items():
        tensors[f"{name}.lora_A"] = module.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = module.lora_B.weight.detach().cpu().contiguous()
    for group, names in sites.items():
        gate = lora_modules(model)[names[0]].gate
        tensors[f"gate.{group}"] = gate.detach().cpu().reshape(1).contiguous()
        gates[group] = torch.sigmoid(gate).item()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    atomic_write_json(path.with_name(path.name + ".json"), {"sites": sites, "rank": rank, "alpha": alpha,
                                                             "gates": gates})
    return path


def finetune_lora(job: AdaptJob, sites: dict[str, list[str]], rank: int, alpha: float, steps: int, lr: float,
                  info: dict) -> AdaptResult:
    """Fine-tune the LoRA branches at ``sites`` (already injected), save the adapter, merge."""
    model = job.model
    for gate in gate_parameters(model):
        gate.requires_grad_(False)
    params = lora_parameters(model)
    train_steps(model, params, job.train_images, job.loss_fn, steps, lr, job.batch_size, job.patch_size,
                job.seed, job.workdir / "finetune.pt", job.progress, checkpoint_every=training.CHECKPOINT_EVERY,
                device=job.device)
    adapter = save_adapter(model, sites, rank, alpha, job.workdir.parent / "adapter.safetensors")
    trainable = sum(p.numel() for p in params)
    info = {**info, "selected": list(sites), "gates_kept": json.loads(adapter.with_name(adapter.name + ".json")
                                                                       .read_text())["gates"]}
    return AdaptResult(model=merge_lora(model).eval(), params_trainable=trainable,
                       artifacts={"adapter": adapter}, info=info)


@dataclass
class ManualLoRA:
    sites: list[str]
    rank: int
    alpha: float
    steps: int
    lr: float
    name: str = "manual_lora"
    needs_loss: bool = True

    def run(self, job: AdaptJob) -> AdaptResult:
        sites = select_sites(job.model, self.sites)
        # a manual site is always on: gate frozen at +6 (sigmoid = 0.9975), never learned
        inject_lora(job.model, sites, self.rank, self.alpha, gate_init=6.0)
        return finetune_lora(job, sites, self.rank, self.alpha, self.steps, self.lr, {})


@dataclass
class LayerSearch:
    """BiLaLoRA (``bilevel=True``) or the naive single-level joint search (``bilevel=False``)."""

    rank: int
    alpha: float
    top_k: int
    search_steps: int
    finetune_steps: int
    lr: float
    gate_lr: float
    warmup_steps: int
    sites: list[str] | None
    bilevel: bool
    name: str = "bilalora"
    needs_loss: bool = True

    def search(self, job: AdaptJob, candidates: dict[str, list[str]]) -> dict[str, float]:
        """Stage 1: LoRA + a gate at every candidate group; returns sigmoid(gate) per group.

        Bilevel: each step is one lower step (Adam over LoRA A/B only, train batch) then, after
        ``warmup_steps``, one upper step (Adam over the gates only, hypergradient on a val batch).
        The warm-up exists because B = 0 at the start makes every gate gradient exactly zero.
        Joint (the ablation): one Adam over A/B and gates on the train batch, single level.
        The search result is saved as ``gates.json`` in the workdir; a rerun reuses it.
        """
        cached = job.workdir / "gates.json"
        if cached.is_file():
            gates = json.loads(cached.read_text())
            if set(gates) == set(candidates):
                return gates
        model = job.model
        gates = inject_lora(model, candidates, self.rank, self.alpha)
        w, a = lora_parameters(model), list(gates.values())
        for p in w + a:
            p.requires_grad_(True)
        if self.bilevel:  # gates are ONLY in the upper optimiser
            lower_opt = torch.optim.Adam(w, lr=self.lr)
        else:  # one optimiser, two lrs: LoRA at lr, gates at gate_lr
            lower_opt = torch.optim.Adam([{"params": w, "lr": self.lr}, {"params": a, "lr": self.gate_lr}])
        upper_opt = torch.optim.Adam(a, lr=self.gate_lr)
        generator = torch.Generator().manual_seed(job.seed)
        total = self.search_steps + self.finetune_steps
        model.train()
        for step in range(self.search_steps):
            x, _ = sample_patches(job.train_images, job.batch_size, job.patch_size, generator)
            x = x.to(job.device)
            if self.bilevel:
                loss = lower_step(model, w, lower_opt, x, job.loss_fn, step)
                if step >= self.warmup_steps:
                    v, _ = sample_patches(job.val_images, job.batch_size, job.patch_size, generator)
                    upper_step(model, w, a, upper_opt, x, v.to(job.device), job.loss_fn, step)
            else:
                loss = lower_step(model, w + a, lower_opt, x, job.loss_fn, step)
            if job.progress is not None:
                job.progress(step + 1, total, {"search": loss})
        values = {g: torch.sigmoid(p).item() for g, p in gates.items()}
        remove_lora(model, merge=False)  # back to the plain base model
        atomic_write_json(cached, values)
        return values

    def run(self, job: AdaptJob) -> AdaptResult:
        """Stage 2: keep the ``top_k`` groups by gate value and inject FRESH LoRA there (B = 0).

        Design choice: the kept gates are not removed but frozen at their searched logit, so a kept
        branch is scaled by its searched sigmoid(g) exactly as during the search (and the adapter
        file records it); only A/B are trained. Merging folds the gate into the weight.
        """
        candidates = select_sites(job.model, self.sites)
        if self.top_k < 1:
            raise HarnessError(f"top_k={self.top_k} keeps no LoRA site", "set top_k >= 1")
        gates = self.search(job, candidates)
        keep = sorted(gates, key=lambda g: (-gates[g], g))[: self.top_k]
        kept = {g: candidates[g] for g in candidates if g in keep}
        fresh = inject_lora(job.model, kept, self.rank, self.alpha)
        with torch.no_grad():
            for g, p in fresh.items():
                p.fill_(torch.logit(torch.tensor(gates[g]).clamp(1e-6, 1 - 1e-6)).item())
        offset = self.search_steps

        def shifted(done, total, info, progress=job.progress):
            if progress is not None:
                progress(offset + done, offset + total, info)

        ft_job = AdaptJob(**{**job.__dict__, "progress": shifted})
        return finetune_lora(ft_job, kept, self.rank, self.alpha, self.finetune_steps, self.lr,
                             {"gates": gates, "search": "bilevel" if self.bilevel else "joint"})


def lower_step(model: torch.nn.Module, params: list[torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor,
               loss_fn, step: int = 0) -> float:
    """One Adam step of ``loss_fn(model(x), x)`` over ``params`` only (grads via autograd.grad)."""
    loss = loss_fn(model(x), x)
    finite_or_fail(loss, step, "search (lower level)")
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    opt.step()
    return loss.item()


def upper_step(model: torch.nn.Module, w: list[torch.Tensor], a: list[torch.Tensor], opt: torch.optim.Optimizer,
               x: torch.Tensor, v: torch.Tensor, loss_fn, step: int = 0) -> float:
    """One Adam step over the gates ``a`` with the hypergradient (lower on ``x``, upper on ``v``)."""
    lower = loss_fn(model(x), x)
    upper = loss_fn(model(v), v)
    finite_or_fail(upper, step, "search (upper level)")
    opt.zero_grad(set_to_none=True)
    for p, h in zip(a, hypergradient(lower, upper, w, a)):
        p.grad = h
    opt.step()
    return upper.item()


def _sites_match(params: dict, context: CheckContext) -> dict[str, dict[str, list[str]]]:
    """The selected candidate groups per backbone (a pattern that matches nothing is an error)."""
    selected = {}
    for label, model in context.backbones.items():
        try:
            selected[label] = select_sites(model, params["sites"])
        except HarnessError as err:
            raise HarnessError(f"backbone {label}: {err}") from None
    return selected


def _search_fits(params: dict, context: CheckContext) -> None:
    """The gates get at least one update, and ``top_k`` groups exist on every backbone."""
    if params["search_steps"] <= params["warmup_steps"]:
        raise HarnessError(
            f"search_steps={params['search_steps']} is not above warmup_steps={params['warmup_steps']}, "
            "so the search would never update a gate",
            f"set search_steps above {params['warmup_steps']} or lower warmup_steps")
    for label, groups in _sites_match(params, context).items():
        if params["top_k"] > len(groups):
            raise HarnessError(f"top_k={params['top_k']} but backbone {label} has {len(groups)} candidate "
                               "site group(s)", f"set top_k to at most {len(groups)} (`harness models` lists them)")


@METHODS.register("none")
def none() -> NoAdaptation:
    """The pretrained model, unchanged."""
    return NoAdaptation()


@METHODS.register("full_ft")
def full_ft(steps: PositiveInt = 100, lr: PositiveFloat = 1e-4) -> FullFineTune:
    """Every weight trained with H2C on the target training split."""
    return FullFineTune(steps, lr)


def _sites_fit(params: dict, context: CheckContext) -> None:
    _sites_match(params, context)


@METHODS.register("manual_lora", check=_sites_fit)
def manual_lora(sites: Annotated[list[str], Field(min_length=1)], rank: PositiveInt = 8, alpha: PositiveFloat = 16,
                steps: PositiveInt = 100, lr: PositiveFloat = 1e-4) -> ManualLoRA:
    """LoRA at hand-picked site groups (names or fnmatch patterns)."""
    return ManualLoRA(sites, rank, alpha, steps, lr)


@METHODS.register("bilalora", check=_search_fits)
def bilalora(rank: PositiveInt = 8, alpha: PositiveFloat = 16, top_k: PositiveInt = 3, search_steps: PositiveInt = 50,
             finetune_steps: PositiveInt = 200, lr: PositiveFloat = 1e-4, gate_lr: PositiveFloat = 1e-2,
             warmup_steps: NonNegativeInt = 5, sites: list[str] | None = None) -> LayerSearch:
    """Bilevel layer-positioning LoRA: gates on the validation split, LoRA on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, True)


@METHODS.register("naive_joint", check=_search_fits)
def naive_joint(rank: PositiveInt = 8, alpha: PositiveFloat = 16, top_k: PositiveInt = 3,
                search_steps: PositiveInt = 50, finetune_steps: PositiveInt = 200, lr: PositiveFloat = 1e-4,
                gate_lr: PositiveFloat = 1e-2, warmup_steps: NonNegativeInt = 5,
                sites: list[str] | None = None) -> LayerSearch:
    """The single-level ablation: gates and LoRA trained together on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, False,
                       name="naive_joint")
