"""Gated LoRA for Conv2d, ConvTranspose2d and Linear: ``y = base(x) + sigmoid(g) * (alpha / r) * B(A(x))``.

Why our own rather than peft: peft's scaling is a plain float (we need a learnable gate shared by
a group of layers), its conv branch ignores dilation and padding mode (DEA-Net uses reflect
padding), and it drags in transformers.

Two layouts of a conv branch (``layout=``):

- ``"conv"`` (default): ``A`` copies the base conv's geometry (kernel, stride, padding, output
  padding, dilation, padding mode, groups) into ``rank`` channels per group and ``B`` is a 1x1
  conv with the same groups, initialised to zero, so per group the branch is a rank-``rank``
  factorisation of the conv: ``r (in k^2 + out)`` weights for a ``k x k`` conv.
- ``"loralib"``: Microsoft loralib's ``ConvLoRA`` layout, which the BiLaLoRA authors' code uses and
  the paper's Table 1 counts: ``A`` is ``(r k) x (in k)``, ``B`` is ``(out/groups k) x (r k)``, and
  ``B @ A`` reshaped to the base weight's shape is the weight update (rank ``r k`` of that
  reshaped matrix): ``r k^2 (in + out/groups)`` weights. Its branch is one conv with that
  update as weight and the base's geometry. Conv2d with square kernels and Linear only.

Either way the branch composes exactly into one weight of the base's shape: merging is lossless.
"""

from __future__ import annotations

import math
from fnmatch import fnmatch
from typing import Literal

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.base import parent_of

Layout = Literal["conv", "loralib"]
LAYOUTS = ("conv", "loralib")


class GatedLoRA(nn.Module):
    """A frozen base layer plus a gated low-rank branch (``lora_A`` then ``lora_B``)."""

    def __init__(self, base: nn.Module, gate: nn.Parameter, rank: int, alpha: float, layout: Layout = "conv"):
        super().__init__()
        if layout not in LAYOUTS:
            raise HarnessError(f"unknown LoRA layout {layout!r}", f"use one of: {', '.join(LAYOUTS)}")
        self.groups = getattr(base, "groups", 1)
        self.transposed = isinstance(base, nn.ConvTranspose2d)
        # the loralib layout of a conv: weight-space factors, held as bias-free Linear weights
        self.weight_space = layout == "loralib" and isinstance(base, nn.Conv2d)
        if self.weight_space:
            k = base.kernel_size[0]
            if base.kernel_size[0] != base.kernel_size[1]:
                raise HarnessError(f"the loralib LoRA layout needs a square kernel, not {base.kernel_size}",
                                   "use layout: conv for this site")
            self.lora_A = nn.Linear(base.in_channels * k, rank * k, bias=False)  # weight (r k, in k)
            self.lora_B = nn.Linear(rank * k, base.out_channels // self.groups * k, bias=False)
        elif isinstance(base, (nn.Conv2d, nn.ConvTranspose2d)):
            if layout == "loralib":
                raise HarnessError(f"the loralib LoRA layout has no {type(base).__name__} branch",
                                   "use layout: conv, or leave transposed convs out of the sites")
            geometry = {"kernel_size": base.kernel_size, "stride": base.stride, "padding": base.padding,
                        "dilation": base.dilation, "groups": self.groups, "bias": False,
                        "padding_mode": base.padding_mode}
            if self.transposed:
                self.lora_A = nn.ConvTranspose2d(base.in_channels, rank * self.groups,
                                                 output_padding=base.output_padding, **geometry)
            else:
                self.lora_A = nn.Conv2d(base.in_channels, rank * self.groups, **geometry)
            self.lora_B = nn.Conv2d(rank * self.groups, base.out_channels, 1, groups=self.groups, bias=False)
        elif isinstance(base, nn.Linear):  # both layouts agree on a linear layer
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise HarnessError(f"LoRA supports Conv2d, ConvTranspose2d and Linear, not {type(base).__name__}",
                               "name only Conv2d/ConvTranspose2d/Linear modules as LoRA sites")
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight)
        self.lora_B.to(base.weight)
        self.base = base
        self.gate = gate
        self.layout = layout
        self.scale = alpha / rank
        self.enabled = True
        self.merged = False
        with torch.no_grad():
            shape = self.delta_weight().shape
        if shape != base.weight.shape:
            raise HarnessError(f"LoRA branch on {type(base).__name__} composes to a {tuple(shape)} weight, "
                               f"not the base's {tuple(base.weight.shape)}",
                               "leave this module out of the LoRA sites")

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """``kwargs`` (a transposed conv's ``output_size``) go to both the base and ``lora_A``."""
        y = self.base(x, **kwargs)
        if self.enabled and not self.merged:
            if self.weight_space:
                y = y + self.base._conv_forward(x, self.delta_weight(), None)
            else:
                y = y + torch.sigmoid(self.gate) * self.scale * self.lora_B(self.lora_A(x, **kwargs))
        return y

    def delta_weight(self) -> torch.Tensor:
        """The branch as one weight of the base's shape (including the gate and scale).

        Per group g: ``delta_g = B_g @ A_g`` over the rank, laid out as the base weight: (out, in/groups, ...)
        for Conv2d/Linear, (in, out/groups, kh, kw) for ConvTranspose2d. loralib layout: ``B @ A``
        reshaped to the base weight's shape.
        """
        if self.weight_space:
            delta = (self.lora_B.weight @ self.lora_A.weight).view(self.base.weight.shape)
            return torch.sigmoid(self.gate) * self.scale * delta
        b = self.lora_B.weight.flatten(1).unflatten(0, (self.groups, -1))  # (groups, out/groups, r)
        a = self.lora_A.weight.unflatten(0, (self.groups, -1))
        if self.transposed:  # a: (groups, in/groups, r, kh, kw)
            delta = torch.einsum("gor,gir...->gio...", b, a)
        else:  # a: (groups, r, in/groups, ...)
            delta = torch.einsum("gor,gri...->goi...", b, a)
        return torch.sigmoid(self.gate) * self.scale * delta.flatten(0, 1)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise HarnessError("LoRA branch has NaN/inf weights; refusing to merge", "lower the adaptation lr")
        self.base.weight += delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


def select_sites(model: nn.Module, patterns: list[str] | None = None) -> dict[str, list[str]]:
    """The model's candidate site groups whose names match any of ``patterns`` (all when None)."""
    sites = model.lora_sites()
    if patterns is None:
        return sites
    chosen = {}
    for pattern in patterns:
        hits = {g: n for g, n in sites.items() if fnmatch(g, pattern)}
        if not hits:
            raise HarnessError(f"LoRA site pattern {pattern!r} matches no site group",
                               f"use group names or patterns of: {', '.join(sites)}")
        chosen.update(hits)
    return {g: sites[g] for g in sites if g in chosen}


def inject_lora(model: nn.Module, sites: dict[str, list[str]], rank: int, alpha: float,
                gate_init: float = 0.0, layout: Layout = "conv") -> dict[str, nn.Parameter]:
    """Wrap every named module in a GatedLoRA (one gate per group); freeze the base. Returns the gates."""
    for p in model.parameters():
        p.requires_grad_(False)
    gates = {}
    for group, names in sites.items():
        first = model.get_submodule(names[0])
        # shape (1,), not a 0-dim scalar: DeepSpeed broadcasts parameters as bytes, which a 0-dim tensor cannot view
        gate = nn.Parameter(torch.full((1,), gate_init, device=first.weight.device))
        for name in names:
            parent, attr = parent_of(model, name)
            base = getattr(parent, attr)
            if isinstance(base, GatedLoRA):
                raise HarnessError(f"{name} already carries a LoRA branch", "name each module in one site group only")
            setattr(parent, attr, GatedLoRA(base, gate, rank, alpha, layout))
        gates[group] = gate
    return gates


def lora_modules(model: nn.Module) -> dict[str, GatedLoRA]:
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedLoRA)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The low-rank weights (A and B) of every branch: the lower-level variables."""
    return [p for m in lora_modules(model).values() for p in (m.lora_A.weight, m.lora_B.weight)]


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The distinct gates: the upper-level variables."""
    seen: dict[int, nn.Parameter] = {}
    for m in lora_modules(model).values():
        seen.setdefault(id(m.gate), m.gate)
    return list(seen.values())


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for m in lora_modules(model).values():
        m.enabled = enabled


def remove_lora(model: nn.Module, names: list[str] | None = None, merge: bool = True) -> nn.Module:
    """Replace branches by their base layer, merged into it (``merge``) or dropped."""
    for name, module in lora_modules(model).items():
        if names is not None and name not in names:
            continue
        if merge:
            module.merge()
        parent, attr = parent_of(model, name)
        setattr(parent, attr, module.base)
    if not lora_modules(model):
        for p in model.parameters():
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every branch into its base: a plain model with the base's parameters and FLOPs."""
    return remove_lora(model, merge=True)
