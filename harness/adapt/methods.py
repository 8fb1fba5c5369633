"""Adaptation methods: ``none``, ``full_ft``, ``manual_lora``, ``bilalora`` and ``naive_joint``.

BiLaLoRA searches where LoRA should go: every candidate site group gets a gate; LoRA weights
follow the H2C loss on the training split (lower level) while the gates follow the first-order
hypergradient of the H2C loss on the validation split (upper level; gates are only in the upper
optimiser). The ``top_k`` groups with the largest gates keep their searched LoRA weights (warm
start) with their gates frozen; the other branches are dropped; the kept ones are fine-tuned on
the training split and merged, so inference costs exactly what the base model costs.
``naive_joint`` is the single-level ablation: gates and LoRA trained together on the training split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.adapt.base import AdaptJob, AdaptResult
from harness.adapt.hypergrad import hypergradient
from harness.adapt.lora import (gate_parameters, inject_lora, lora_modules, lora_parameters, merge_lora, remove_lora,
                                select_sites)
from harness.adapt.training import finite_or_fail, train_steps
from harness.data.patches import sample_patches
from harness.registry import METHODS
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
                    job.patch_size, job.seed, job.workdir / "finetune.pt", job.progress, device=job.device)
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
                job.seed, job.workdir / "finetune.pt", job.progress, device=job.device)
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
        # a manual site is always on: gate fixed at +6 (sigmoid = 0.9975), not learned
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
        model = job.model
        gates = inject_lora(model, candidates, self.rank, self.alpha)
        w, a = lora_parameters(model), list(gates.values())
        for p in w + a:
            p.requires_grad_(True)
        lower_opt = torch.optim.Adam(w, lr=self.lr)
        upper_opt = torch.optim.Adam(a, lr=self.gate_lr)
        generator = torch.Generator().manual_seed(job.seed)
        total = self.search_steps + self.finetune_steps
        model.train()
        for step in range(self.search_steps):
            x, _ = sample_patches(job.train_images, job.batch_size, job.patch_size, generator)
            x = x.to(job.device)
            lower = job.loss_fn(model(x), x)
            finite_or_fail(lower, step, "search")
            joint = not self.bilevel and step >= self.warmup_steps
            grads = torch.autograd.grad(lower, w + a if joint else w)
            lower_opt.zero_grad(set_to_none=True)
            upper_opt.zero_grad(set_to_none=True)
            for p, g in zip(w + a if joint else w, grads):
                p.grad = g
            lower_opt.step()
            if joint:
                upper_opt.step()
            elif self.bilevel and step >= self.warmup_steps:
                v, _ = sample_patches(job.val_images, job.batch_size, job.patch_size, generator)
                v = v.to(job.device)
                lower = job.loss_fn(model(x), x)
                upper = job.loss_fn(model(v), v)
                for p, h in zip(a, hypergradient(lower, upper, w, a)):
                    p.grad = h
                upper_opt.step()
            if job.progress is not None:
                job.progress(step + 1, total, {"search": lower.item()})
        return {g: torch.sigmoid(p).item() for g, p in gates.items()}

    def run(self, job: AdaptJob) -> AdaptResult:
        candidates = select_sites(job.model, self.sites)
        gates = self.search(job, candidates)
        atomic_write_json(job.workdir / "gates.json", gates)
        keep = sorted(gates, key=gates.get, reverse=True)[: self.top_k]
        drop = [n for g, names in candidates.items() if g not in keep for n in names]
        remove_lora(job.model, drop, merge=False)
        kept = {g: candidates[g] for g in candidates if g in keep}
        offset = self.search_steps

        def shifted(done, total, info, progress=job.progress):
            if progress is not None:
                progress(offset + done, offset + total, info)

        ft_job = AdaptJob(**{**job.__dict__, "progress": shifted})
        return finetune_lora(ft_job, kept, self.rank, self.alpha, self.finetune_steps, self.lr,
                             {"gates": gates, "search": "bilevel" if self.bilevel else "joint"})


@METHODS.register("none")
def none() -> NoAdaptation:
    """The pretrained model, unchanged."""
    return NoAdaptation()


@METHODS.register("full_ft")
def full_ft(steps: int = 100, lr: float = 1e-4) -> FullFineTune:
    """Every weight trained with H2C on the target training split."""
    return FullFineTune(steps, lr)


@METHODS.register("manual_lora")
def manual_lora(sites: list[str], rank: int = 8, alpha: float = 16, steps: int = 100, lr: float = 1e-4) -> ManualLoRA:
    """LoRA at hand-picked site groups (names or fnmatch patterns)."""
    return ManualLoRA(sites, rank, alpha, steps, lr)


@METHODS.register("bilalora")
def bilalora(rank: int = 8, alpha: float = 16, top_k: int = 3, search_steps: int = 50, finetune_steps: int = 200,
             lr: float = 1e-4, gate_lr: float = 1e-2, warmup_steps: int = 5,
             sites: list[str] | None = None) -> LayerSearch:
    """Bilevel layer-positioning LoRA: gates on the validation split, LoRA on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, True)


@METHODS.register("naive_joint")
def naive_joint(rank: int = 8, alpha: float = 16, top_k: int = 3, search_steps: int = 50, finetune_steps: int = 200,
                lr: float = 1e-4, gate_lr: float = 1e-2, warmup_steps: int = 5,
                sites: list[str] | None = None) -> LayerSearch:
    """The single-level ablation: gates and LoRA trained together on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, False,
                       name="naive_joint")
