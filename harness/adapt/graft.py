"""The grafting analysis: which adapted block carries the adaptation?

A ``graft`` cell takes the model adapted by its ``source`` method (full fine-tuning by default,
any registered method in general), copies one candidate site group's whole block (as ``harness
models`` lists the groups; a pattern grafts every group it matches) into the pretrained model and
leaves everything else pretrained. The whole block, as the paper grafts modules: every parameter
and buffer of the modules that hold the group, attention and norms included, not only its LoRA
sites (see :func:`group_blocks`). Swept over the groups
(``sweep: {site: [level1_block1, ...]}``) it gives one record per grafted block, the analysis the
BiLaLoRA paper uses to argue that a few layers matter. The source is adapted once and cached
like any other cell's adaptation, so a full fine-tuning cell in the same recipe is reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.adapt.base import AdaptJob, AdaptResult
from harness.adapt.lora import select_sites
from harness.errors import HarnessError
from harness.models.base import count_params
from harness.registry import METHODS


@dataclass
class GraftBlock:
    site: str
    source: dict[str, Any]
    name: str = "graft"
    needs_loss: bool = False  # the source method's training is the runner's business

    def run(self, job: AdaptJob) -> AdaptResult:
        if job.source_model is None:
            raise HarnessError("graft ran without its source model", "run graft cells through `harness run`")
        groups = select_sites(job.model, [self.site])
        blocks = sorted({b for group, members in groups.items() for b in group_blocks(job.model, group, members)})
        grafted = graft_modules(job.model, job.source_model, blocks)
        return AdaptResult(model=job.model.eval(), params_trainable=0, params_unmerged=count_params(job.model),
                           info={"grafted_groups": list(groups), "grafted_modules": blocks,
                                 "grafted_params": grafted, "source": self.source})


def group_blocks(model: torch.nn.Module, group: str, members: list[str]) -> list[str]:
    """The modules that make up site group ``group``: for each member site, its largest enclosing
    module (never the model itself) that holds no site of another group; outermost ones only.

    DEA-Net's ``level3_block1`` (sites ``conv1``, ``conv2``) gives the block ``level3_block1`` with its
    attention; a group spread over several modules (MSBDN's ``encoder1``) gives each of them.
    """
    others = [n for g, names in model.lora_sites().items() if g != group for n in names]
    found = set()
    for name in members:
        parts = name.split(".")
        block = name
        for i in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:i])
            if any(o == prefix or o.startswith(prefix + ".") for o in others):
                break
            block = prefix
        found.add(block)
    return sorted(b for b in found if not any(b.startswith(o + ".") for o in found))


@torch.no_grad()
def graft_modules(base: torch.nn.Module, source: torch.nn.Module, names: list[str]) -> int:
    """Copy every parameter and buffer of modules ``names`` from ``source`` into ``base``; the
    number of parameter values copied."""
    copied = 0
    for name in names:
        target = base.get_submodule(name)
        target.load_state_dict(source.get_submodule(name).state_dict())
        copied += sum(p.numel() for p in target.parameters())
    return copied


@METHODS.register("graft")
def graft(site: str, source: dict[str, Any]) -> GraftBlock:
    """Graft one adapted site group of the ``source`` method's model into the pretrained model."""
    return GraftBlock(site, source)
