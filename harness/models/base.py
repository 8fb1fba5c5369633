"""What every backbone shares: pad-to-multiple forward, LoRA candidate sites, published figures.

A backbone subclasses :class:`DehazeNet`, implements ``restore`` on an input whose sides are a
multiple of ``multiple``, and declares its candidate LoRA sites in ``lora_sites``. Builders are
registered with :func:`register_backbone`, which also records the published size per variant so
``harness models`` can print ours beside the paper's.

Two optional protocols: ``pretrain_phases`` (supervised pretraining in several phases, each over
its own parameters and loss; default one phase, every parameter, L1) and ``needs_guide`` (a
backbone whose forward reads the recipe's CLIP guide, given with ``attach_guide``; the guide is
held by reference, so it is never part of the backbone's state dict, parameters or copies).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import BACKBONES


@dataclass(frozen=True)
class Published:
    """A backbone variant's size as its paper or official repository reports it."""

    params: int | None
    flops_256: float | None = None  # as published at 256x256
    # "macs" (exact multiply-adds), "thop" (thop's multiply-adds: transposed convs overcounted,
    # see efficiency.macs_256) or "flops" (2 x MACs)
    flops_convention: str = "macs"
    source: str = ""


@dataclass(frozen=True)
class BackboneCard:
    name: str
    variants: dict[str, Published | None] = field(default_factory=dict)
    multiple: int = 1
    description: str = ""
    needs_guide: bool = False  # its forward reads the recipe's guide (so the guide is part of its pretraining)
    channels_last: bool = False  # its ``restore`` runs on channels-last tensors on the CPU (DehazeNet.channels_last)


@dataclass(frozen=True)
class PretrainPhase:
    """One phase of supervised pretraining: ``steps`` steps of ``loss`` over ``params`` only.

    ``setup`` runs before the phase starts (or resumes), e.g. to switch the network's mode.
    """

    name: str  # the training loop's stage name (also names its state file when there are several)
    steps: int
    params: list[nn.Parameter]
    loss: str = "l1"  # "l1" or "l2"
    setup: Callable[[], None] | None = None


class _GuideRef:
    """Holds a guide by reference: ``copy.deepcopy`` of the backbone shares it instead of copying CLIP."""

    def __init__(self, guide):
        self.guide = guide

    def __deepcopy__(self, memo) -> "_GuideRef":
        return self


BACKBONE_CARDS: dict[str, BackboneCard] = {}


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding submodule ``name`` of ``model`` and the attribute it is held under."""
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def register_backbone(
    name: str,
    *,
    variants: dict[str, Published | None],
    multiple: int,
    description: str = "",
    needs_guide: bool = False,
    channels_last: bool = False,
) -> Callable[[Callable[..., "DehazeNet"]], Callable[..., "DehazeNet"]]:
    """Register ``fn(variant=..., **kw) -> DehazeNet`` under ``name`` with its published figures;
    ``channels_last``: the networks it builds restore in channels-last on the CPU (measure it with
    ``benchmarks/backbone_throughput.py --compare layout``; it changes float summation order, so it
    enters the cache keys)."""

    def wrap(fn: Callable[..., DehazeNet]) -> Callable[..., DehazeNet]:
        BACKBONE_CARDS[name] = BackboneCard(name, dict(variants), multiple, description, needs_guide, channels_last)

        @functools.wraps(fn)
        def build(*args, **kwargs) -> DehazeNet:
            model = fn(*args, **kwargs)
            model.channels_last = channels_last
            return model

        return BACKBONES.register(name)(build)

    return wrap


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 0) -> torch.Tensor:
    """Pad the bottom/right of ``x`` so H and W are multiples of ``multiple`` and >= ``min_size``."""
    h, w = x.shape[-2:]
    th = max(-(-h // multiple) * multiple, min_size)
    tw = max(-(-w // multiple) * multiple, min_size)
    if (th, tw) == (h, w):
        return x
    ph, pw = th - h, tw - w
    # reflect needs the pad to be smaller than the side; fall back to replicate for tiny inputs
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class DehazeNet(nn.Module):
    """Base class: ``forward`` pads to the network's multiple, restores, and crops back."""

    multiple: int = 1
    min_size: int = 0
    needs_guide: bool = False
    reference_guide: str | None = None  # open_clip architecture of the paper's guide (``harness models`` counts with it)
    # ``restore`` runs on channels-last (NHWC) tensors on the CPU, where oneDNN's convolutions are then
    # faster for some networks; set from the registration (``register_backbone``); the output is NCHW as always
    channels_last: bool = False

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple, self.min_size)
        if self.channels_last and x.device.type == "cpu":
            return self.restore(x.contiguous(memory_format=torch.channels_last))[..., :h, :w].contiguous()
        return self.restore(x)[..., :h, :w]

    def lora_sites(self) -> dict[str, list[str]]:
        """Candidate LoRA sites: group name -> qualified names of Conv2d/Linear modules.

        One gate is learned per group. The default makes every conv/linear its own group;
        backbones override it with the grouping their paper uses.
        """
        return {
            name: [name]
            for name, module in self.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))
        }

    def deploy(self) -> "DehazeNet":
        """Return the inference form (re-parameterised where the paper defines one)."""
        return self

    def pretrain_phases(self, steps: int) -> list[PretrainPhase]:
        """How supervised pretraining spends ``steps``: by default one L1 phase over every parameter."""
        return [PretrainPhase("pretraining", steps, list(self.parameters()))]

    def unshared_params(self) -> int | None:
        """Parameters of the same network without its cross-stage weight sharing (None: it shares none)."""
        return None

    def attach_guide(self, guide) -> "DehazeNet":
        """Give a guide-driven backbone (``needs_guide``) its frozen guide; returns the backbone."""
        self.__dict__["_guide_ref"] = _GuideRef(guide)
        return self

    @property
    def guide(self):
        """The attached guide; a clear error when a guide-driven backbone has none."""
        ref = self.__dict__.get("_guide_ref")
        if ref is None:
            from harness.errors import HarnessError

            raise HarnessError(f"{type(self).__name__} reads a CLIP guide and none is attached",
                               "set guide: in the recipe (open_clip or embedded), or call model.attach_guide(guide)")
        return ref.guide


def build_backbone(name: str, variant: str = "full", **kwargs) -> DehazeNet:
    """Build a registered backbone by name and variant."""
    return BACKBONES.build(name, variant=variant, **kwargs)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def sites_under(model: nn.Module, *prefixes: str) -> list[str]:
    """Qualified names of the Conv2d/Linear modules inside the submodules named by ``prefixes``."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and any(name == p or name.startswith(p + ".") for p in prefixes)
    ]


def variant_config(backbone: str, configs: dict[str, dict], variant: str) -> dict:
    """The builder keyword arguments of ``variant``, or a HarnessError listing the variants."""
    if variant not in configs:
        from harness.errors import HarnessError

        raise HarnessError(f"unknown {backbone} variant {variant!r}", f"use one of: {', '.join(configs)}")
    return configs[variant]
