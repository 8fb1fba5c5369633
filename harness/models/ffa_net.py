"""FFA-Net (Qin et al., AAAI 2020): feature fusion attention at full resolution.

A 3x3 head conv, three groups of ``blocks`` local-residual blocks (conv, ReLU, skip, conv,
channel attention, pixel attention, skip) each closed by a 3x3 conv and a group skip, a
learned per-channel weighting of the three group outputs (attention over their concatenation),
pixel attention, two 3x3 tail convs and a global skip to the input.

Names follow zhilin007/FFA-Net ``net/models/FFA.py``: ``pre.0``, ``g1.gp.<i>.conv1``/``conv2``/
``calayer.ca.*``/``palayer.pa.*``, the group's closing conv ``g1.gp.<blocks>``, ``ca.1``/``ca.3``
(fusion weights), ``palayer.pa.*``, ``post.0``/``post.1``. Official checkpoints were saved from
``DataParallel``: strip their ``module.`` prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.models.base import DehazeNet, Published, register_backbone, variant_config
from harness.models.blocks import (
    ChannelAttention,
    PixelAttention,
    ResidualConvBlock,
    conv3x3,
)


class FABlock(ResidualConvBlock):
    """Feature-attention block: the residual conv pair re-weighted by channel then pixel attention."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.calayer = ChannelAttention(channels, reduction=8)
        self.palayer = PixelAttention(channels, reduction=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.palayer(self.calayer(self.body(x))) + x


class FAGroup(nn.Module):
    """``blocks`` FA blocks and a 3x3 conv, with a skip over the whole group."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.gp = nn.Sequential(*(FABlock(channels) for _ in range(blocks)), conv3x3(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gp(x) + x


class FFANet(DehazeNet):
    """FFA-Net with ``groups`` groups of ``blocks`` blocks at ``dim`` channels (paper: 3, 19, 64)."""

    multiple = 1

    def __init__(self, dim: int = 64, groups: int = 3, blocks: int = 19):
        super().__init__()
        self.dim, self.groups = dim, groups
        self.pre = nn.Sequential(conv3x3(3, dim))
        for g in range(1, groups + 1):
            self.add_module(f"g{g}", FAGroup(dim, blocks))
        # index layout (pool at 0) kept so the official keys ca.1 / ca.3 load
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim * groups, dim // 16, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // 16, dim * groups, 1),
            nn.Sigmoid(),
        )
        self.palayer = PixelAttention(dim, reduction=8)
        self.post = nn.Sequential(conv3x3(dim, dim), conv3x3(dim, 3))

    def group_names(self) -> list[str]:
        return [f"g{g}" for g in range(1, self.groups + 1)]

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        feats, feat = [], self.pre(x)
        for name in self.group_names():
            feat = getattr(self, name)(feat)
            feats.append(feat)
        weights = self.ca(torch.cat(feats, dim=1)).view(-1, self.groups, self.dim, 1, 1)
        fused = sum(weights[:, i] * f for i, f in enumerate(feats))
        return self.post(self.palayer(fused)) + x

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per FA block (its two 3x3 convs) and one per group's closing 3x3 conv."""
        sites: dict[str, list[str]] = {}
        for name in self.group_names():
            layers = getattr(self, name).gp
            for i, layer in enumerate(layers):
                if isinstance(layer, FABlock):
                    sites[f"{name}.block{i}"] = [f"{name}.gp.{i}.conv1", f"{name}.gp.{i}.conv2"]
                else:
                    sites[f"{name}.tail"] = [f"{name}.gp.{i}"]
        return sites


_CONFIGS = {
    "full": {"dim": 64, "groups": 3, "blocks": 19},
    "tiny": {"dim": 32, "groups": 3, "blocks": 2},
}


@register_backbone(
    "ffa_net",
    variants={
        "full": Published(4_456_000, 287.8e9, "macs", "FFA-Net paper / official repo (3 groups x 19 blocks, 64 ch)"),
        "tiny": None,
    },
    multiple=1,
    description="FFA-Net: full-resolution feature-attention blocks with attention-weighted group fusion",
)
def build_ffa_net(variant: str = "full") -> FFANet:
    """FFA-Net; ``full`` = 3 groups x 19 blocks at 64 ch, ``tiny`` = 3 groups x 2 blocks at 32 ch
    (the fusion squeeze keeps dim // 16 = 2 hidden channels)."""
    return FFANet(**variant_config("ffa_net", _CONFIGS, variant))
