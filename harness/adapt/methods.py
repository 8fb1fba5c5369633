"""Adaptation methods: ``none``, ``full_ft``, ``manual_lora``, ``bilalora`` and ``naive_joint``.

BiLaLoRA searches where LoRA should go (``harness.adapt.search``): every candidate site group gets
a gate; LoRA weights follow the H2C loss on the training split (lower level) while the gates follow
the first-order hypergradient of the H2C loss on the validation split (upper level; gates are only
ever updated with it). The ``top_k`` groups with the largest gates keep their searched branches
(Algorithm 1 continues them; ``fresh_finetune: true`` restarts them at B = 0 instead), their gates
frozen at the searched value; all other branches are dropped; the kept ones are fine-tuned on the
training split and merged, so inference costs exactly what the base model costs.
``naive_joint`` is the single-level ablation: gates and LoRA trained together on the training split.
Every training loop runs on the engine (``harness.adapt.training.run_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from harness.adapt.adapter_io import save_adapter
from harness.adapt.base import AdaptJob, AdaptResult
from harness.adapt.lora import (
    Layout,
    gate_parameters,
    inject_lora,
    lora_parameters,
    merge_lora,
    remove_lora,
    select_sites,
)
from harness.adapt.search import search_gates
from harness.adapt.training import AdamStepper, LoopTotals, run_loop
from harness.errors import HarnessError
from harness.models.base import count_params
from harness.registry import METHODS, CheckContext, NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class NoAdaptation:
    name: str = "none"
    needs_loss: bool = False

    def run(self, job: AdaptJob) -> AdaptResult:
        return AdaptResult(model=job.model.eval(), params_trainable=0, params_unmerged=count_params(job.model))


@dataclass
class FullFineTune:
    steps: int
    lr: float
    name: str = "full_ft"
    needs_loss: bool = True

    def run(self, job: AdaptJob) -> AdaptResult:
        model = job.model
        params = list(model.parameters())
        for p in params:
            p.requires_grad_(True)
        totals = LoopTotals()
        stepper = AdamStepper(job, params, self.lr, self.steps, frozen_base=False)
        totals.add("full_ft", run_loop(job, "full_ft", stepper, self.steps))
        n = sum(p.numel() for p in params)
        return totals.fill(AdaptResult(model=model.eval(), params_trainable=n, params_unmerged=n))


def finetune_lora(job: AdaptJob, sites: dict[str, list[str]], rank: int, alpha: float, layout: Layout,
                  steps: int, lr: float, info: dict, totals: LoopTotals, offset: int = 0,
                  total: int | None = None) -> AdaptResult:
    """Fine-tune the LoRA branches at ``sites`` (already injected; gates frozen), save the adapter, merge."""
    model = job.model
    for gate in gate_parameters(model):
        gate.requires_grad_(False)
    params = lora_parameters(model)
    stepper = AdamStepper(job, params, lr, steps, frozen_base=True)
    totals.add("finetune", run_loop(job, "finetune", stepper, steps, offset, total))
    adapter = save_adapter(model, sites, rank, alpha, job.workdir.parent / "adapter.safetensors", layout)
    branches = {g: model.get_submodule(names[0]).gate for g, names in sites.items()}
    info = {**info, "selected": list(sites), "gates_kept": {g: torch.sigmoid(p).item() for g, p in branches.items()}}
    unmerged = count_params(model)
    return totals.fill(AdaptResult(model=merge_lora(model).eval(), params_trainable=sum(p.numel() for p in params),
                                   artifacts={"adapter": adapter}, info=info, params_unmerged=unmerged))


@dataclass
class ManualLoRA:
    sites: list[str]
    rank: int
    alpha: float
    steps: int
    lr: float
    layout: Layout = "conv"
    name: str = "manual_lora"
    needs_loss: bool = True

    def run(self, job: AdaptJob) -> AdaptResult:
        sites = select_sites(job.model, self.sites)
        # a manual site is always on: gate frozen at +6 (sigmoid = 0.9975), never learned
        inject_lora(job.model, sites, self.rank, self.alpha, gate_init=6.0, layout=self.layout)
        return finetune_lora(job, sites, self.rank, self.alpha, self.layout, self.steps, self.lr, {}, LoopTotals())


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
    layout: Layout = "conv"
    fresh_finetune: bool = False

    def run(self, job: AdaptJob) -> AdaptResult:
        """Search, keep the ``top_k`` groups by gate value (ties by name), fine-tune them, merge.

        The kept gates are not removed but frozen at their searched logit, so a kept branch is
        scaled by its searched sigmoid(g) exactly as during the search (and the adapter file records
        it); only A/B are trained. Merging folds the gate into the weight.
        """
        candidates = select_sites(job.model, self.sites)
        if self.top_k < 1:
            raise HarnessError(f"top_k={self.top_k} keeps no LoRA site", "set top_k >= 1")
        totals = LoopTotals()
        total = self.search_steps + self.finetune_steps
        found = search_gates(job, candidates, rank=self.rank, alpha=self.alpha, layout=self.layout,
                             steps=self.search_steps, lr=self.lr, gate_lr=self.gate_lr,
                             warmup_steps=self.warmup_steps, bilevel=self.bilevel, totals=totals, total_steps=total)
        gates = found["gates"]
        keep = sorted(gates, key=lambda g: (-gates[g], g))[: self.top_k]
        kept = {g: candidates[g] for g in candidates if g in keep}
        remove_lora(job.model, [n for g, names in candidates.items() if g not in kept for n in names], merge=False)
        if self.fresh_finetune:  # the option: restart the kept branches at B = 0, gates at their searched value
            remove_lora(job.model, merge=False)
            fresh = inject_lora(job.model, kept, self.rank, self.alpha, layout=self.layout)
            with torch.no_grad():
                for g, p in fresh.items():
                    p.fill_(torch.logit(torch.tensor(gates[g]).clamp(1e-6, 1 - 1e-6)).item())
        info = {"gates": gates, "gate_updates": found["gate_updates"], "search": "bilevel" if self.bilevel else "joint",
                "finetune_init": "fresh" if self.fresh_finetune else "searched"}
        return finetune_lora(job, kept, self.rank, self.alpha, self.layout, self.finetune_steps, self.lr, info,
                             totals, offset=self.search_steps, total=total)


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


@METHODS.register("manual_lora", check=_sites_match)
def manual_lora(sites: Annotated[list[str], Field(min_length=1)], rank: PositiveInt = 8, alpha: PositiveFloat = 16,
                steps: PositiveInt = 100, lr: PositiveFloat = 1e-4, layout: Layout = "conv") -> ManualLoRA:
    """LoRA at hand-picked site groups (names or fnmatch patterns)."""
    return ManualLoRA(sites, rank, alpha, steps, lr, layout)


@METHODS.register("bilalora", check=_search_fits)
def bilalora(rank: PositiveInt = 8, alpha: PositiveFloat = 16, top_k: PositiveInt = 3, search_steps: PositiveInt = 50,
             finetune_steps: PositiveInt = 200, lr: PositiveFloat = 1e-4, gate_lr: PositiveFloat = 1e-2,
             warmup_steps: NonNegativeInt = 5, sites: list[str] | None = None, layout: Layout = "conv",
             fresh_finetune: bool = False) -> LayerSearch:
    """Bilevel layer-positioning LoRA: gates on the validation split, LoRA on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, True,
                       layout=layout, fresh_finetune=fresh_finetune)


@METHODS.register("naive_joint", check=_search_fits)
def naive_joint(rank: PositiveInt = 8, alpha: PositiveFloat = 16, top_k: PositiveInt = 3,
                search_steps: PositiveInt = 50, finetune_steps: PositiveInt = 200, lr: PositiveFloat = 1e-4,
                gate_lr: PositiveFloat = 1e-2, warmup_steps: NonNegativeInt = 5, sites: list[str] | None = None,
                layout: Layout = "conv", fresh_finetune: bool = False) -> LayerSearch:
    """The single-level ablation: gates and LoRA trained together on the training split."""
    return LayerSearch(rank, alpha, top_k, search_steps, finetune_steps, lr, gate_lr, warmup_steps, sites, False,
                       name="naive_joint", layout=layout, fresh_finetune=fresh_finetune)
