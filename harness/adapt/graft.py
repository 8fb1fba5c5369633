"""The grafting analysis: which adapted block carries the adaptation?

A ``graft`` cell takes the model adapted by its ``source`` method (full fine-tuning by default,
any registered method in general), copies the parameters of one candidate site group (a block,
as ``harness models`` lists them; a pattern grafts every group it matches) into the pretrained
model and leaves everything else pretrained. Swept over the groups
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
        names = [n for members in groups.values() for n in members]
        grafted = graft_modules(job.model, job.source_model, names)
        return AdaptResult(model=job.model.eval(), params_trainable=0,
                           info={"grafted_groups": list(groups), "grafted_params": grafted,
                                 "source": self.source})


@torch.no_grad()
def graft_modules(base: torch.nn.Module, source: torch.nn.Module, names: list[str]) -> int:
    """Copy the parameters of modules ``names`` from ``source`` into ``base``; return how many values."""
    copied = 0
    for name in names:
        target, donor = base.get_submodule(name), source.get_submodule(name)
        for pname, param in target.named_parameters(recurse=False):
            param.copy_(getattr(donor, pname))
            copied += param.numel()
    return copied


@METHODS.register("graft")
def graft(site: str, source: dict[str, Any]) -> GraftBlock:
    """Graft one adapted site group of the ``source`` method's model into the pretrained model."""
    return GraftBlock(site, source)
