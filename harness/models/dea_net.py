"""DEA-Net (Chen et al., TIP 2024): detail-enhanced convolution and content-guided attention.

A three-level U-shape (widths d, 2d, 4d): level-1/2 encoder and decoder stacks of DE blocks,
a level-3 stack of DEA blocks (DE block + content-guided attention), and CGA fusion of the
skip features. A DE block's first conv is a DEConv: the sum of a vanilla 3x3 conv and four
difference convs (central, angular, horizontal, vertical). All five are linear in the input,
so ``deploy()`` folds them into one 3x3 conv without changing the output.

Names follow cecret3350/DEA-Net: training form ``code/model/backbone_train.py`` (``DEANet``),
deploy form ``code/model/backbone.py`` (``Backbone``). Both load by identical keys, e.g.
``level3_block1.conv1.conv1_1.conv.weight`` (training) and ``level3_block1.conv1.weight`` (deploy);
``conv1_1..conv1_5`` are the central, horizontal, vertical, angular and vanilla branches.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import DehazeNet, Published, register_backbone, variant_config
from harness.models.blocks import ChannelAttention, ResidualConvBlock

# flat 3x3 index each tap is differenced against in the angular branch: every border tap minus
# its clockwise neighbour; the centre minus itself (so it vanishes)
_ANGULAR_PARTNER = [3, 0, 1, 6, 4, 2, 7, 8, 5]


class DifferenceConv(nn.Module):
    """One difference branch of a DEConv; ``kernel()`` is its equivalent 3x3 weight.

    ``central``/``angular`` learn a 3x3 kernel (``conv`` is a Conv2d); ``horizontal``/``vertical``
    learn three taps (``conv`` is a Conv1d, as in the official code) placed on one border
    column/row with the negated copy on the opposite one. ``conv`` is only a parameter holder.
    """

    KINDS = ("central", "angular", "horizontal", "vertical")

    def __init__(self, kind: str, channels: int):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown difference kind {kind!r}")
        self.kind = kind
        conv = nn.Conv2d if kind in ("central", "angular") else nn.Conv1d
        self.conv = conv(channels, channels, 3, padding=1)

    def kernel(self) -> torch.Tensor:
        w = self.conv.weight
        if self.kind == "central":
            centre = torch.zeros(3, 3, dtype=w.dtype, device=w.device)
            centre[1, 1] = 1.0
            return w - w.sum(dim=(-2, -1), keepdim=True) * centre
        if self.kind == "angular":
            flat = w.flatten(-2)
            return (flat - flat[..., _ANGULAR_PARTNER]).reshape(w.shape)
        zeros = torch.zeros_like(w)
        axis = -1 if self.kind == "horizontal" else -2
        return torch.stack([w, zeros, -w], dim=axis)


class DEConv(nn.Module):
    """Detail-enhanced 3x3 convolution (training form): five branches run as one folded conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1_1 = DifferenceConv("central", channels)
        self.conv1_2 = DifferenceConv("horizontal", channels)
        self.conv1_3 = DifferenceConv("vertical", channels)
        self.conv1_4 = DifferenceConv("angular", channels)
        self.conv1_5 = nn.Conv2d(channels, channels, 3, padding=1)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 weight and bias equal to the sum of the five branches."""
        branches = (self.conv1_1, self.conv1_2, self.conv1_3, self.conv1_4)
        weight = self.conv1_5.weight + sum(b.kernel() for b in branches)
        bias = self.conv1_5.bias + sum(b.conv.bias for b in branches)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias, padding=1)

    def to_conv(self) -> nn.Conv2d:
        """The deploy form: a plain Conv2d holding the folded weights."""
        weight, bias = self.folded()
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
        conv.weight.data.copy_(weight.detach())
        conv.bias.data.copy_(bias.detach())
        return conv.to(weight.device)


class SpatialAttention(nn.Module):
    """Channel mean and max -> reflect-padded 7x7 conv -> one (B, 1, H, W) logit map."""

    def __init__(self):
        super().__init__()
        self.sa = nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sa(torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1))


class GuidedPixelAttention(nn.Module):
    """Refine a coarse map per channel: each feature channel and its coarse map, interleaved,
    go through a grouped reflect-padded 7x7 conv, then a sigmoid."""

    def __init__(self, channels: int):
        super().__init__()
        self.pa2 = nn.Conv2d(2 * channels, channels, 7, padding=3, padding_mode="reflect", groups=channels)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        pairs = torch.stack([x, coarse.expand_as(x)], dim=2).flatten(1, 2)
        return torch.sigmoid(self.pa2(pairs))


class ContentGuided:
    """Mixin for CGA: channel logits + spatial logits give a coarse map, refined per channel.

    The official classes hold ``sa``/``ca``/``pa`` directly (no nested module), so this adds them
    as attributes of the host module and keeps checkpoint keys identical.
    """

    def init_cga(self, channels: int, reduction: int) -> None:
        self.sa = SpatialAttention()
        self.ca = ChannelAttention(channels, reduction, scale=False)
        self.pa = GuidedPixelAttention(channels)

    def guided_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.pa(x, self.sa(x) + self.ca(x))


class DEBlock(ResidualConvBlock):
    """``x + conv2(ReLU(conv1(x)) + x)`` with ``conv1`` a DEConv (a plain Conv2d once deployed)."""

    def __init__(self, channels: int):
        super().__init__(channels, conv1=DEConv(channels))


class DEABlock(DEBlock, ContentGuided):
    """A DE block whose residual branch is weighted by content-guided attention."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__(channels)
        self.init_cga(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        return res * self.guided_map(res) + x


class CGAFusion(nn.Module, ContentGuided):
    """Mix a skip feature ``x`` and a decoder feature ``y`` with CGA weights, then a 1x1 conv.

    The official code applies a sigmoid to the pixel attention's (already sigmoid) output; it is
    kept so official weights reproduce their results.
    """

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.init_cga(channels, reduction)
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        initial = x + y
        weight = torch.sigmoid(self.guided_map(initial))
        return self.conv(initial + weight * x + (1 - weight) * y)


class DEANet(DehazeNet):
    """DEA-Net with ``blocks = (n1, n2, n3)`` blocks per level at widths ``dim, 2 dim, 4 dim``.

    The official network is ``dim=32, blocks=(4, 4, 8)``. ``deploy()`` returns a copy whose
    DEConvs are folded into plain Conv2d (the official ``*_simplified.pk`` layout).
    """

    multiple = 4

    def __init__(self, dim: int = 32, blocks: tuple[int, int, int] = (4, 4, 8)):
        super().__init__()
        n1, n2, n3 = blocks
        self.blocks = tuple(blocks)
        self.deployed = False
        self.down1 = nn.Sequential(nn.Conv2d(3, dim, 3, padding=1))
        self.down2 = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, stride=2, padding=1), nn.ReLU(True))
        self.down3 = nn.Sequential(nn.Conv2d(dim * 2, dim * 4, 3, stride=2, padding=1), nn.ReLU(True))
        self.fe_level_2 = nn.Conv2d(dim * 2, dim * 2, 3, padding=1)
        self.fe_level_3 = nn.Conv2d(dim * 4, dim * 4, 3, padding=1)
        stacks = {
            "down_level1_block": (n1, lambda: DEBlock(dim)),
            "up_level1_block": (n1, lambda: DEBlock(dim)),
            "down_level2_block": (n2, lambda: DEBlock(dim * 2)),
            "up_level2_block": (n2, lambda: DEBlock(dim * 2)),
            "level3_block": (n3, lambda: DEABlock(dim * 4)),
        }
        for prefix, (count, make) in stacks.items():
            for i in range(1, count + 1):
                self.add_module(f"{prefix}{i}", make())
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(dim * 4, dim * 2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(True))
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(dim * 2, dim, 3, stride=2, padding=1, output_padding=1), nn.ReLU(True))
        self.up3 = nn.Sequential(nn.Conv2d(dim, 3, 3, padding=1))
        self.mix1 = CGAFusion(dim * 4, reduction=8)
        self.mix2 = CGAFusion(dim * 2, reduction=4)

    def _stack(self, prefix: str, count: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, count + 1):
            x = getattr(self, f"{prefix}{i}")(x)
        return x

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        n1, n2, n3 = self.blocks
        skip1 = self._stack("down_level1_block", n1, self.down1(x))
        skip2 = self.down2(skip1)
        feat2 = self._stack("down_level2_block", n2, self.fe_level_2(skip2))
        skip3 = self.down3(feat2)
        feat3 = self._stack("level3_block", n3, self.fe_level_3(skip3))
        up = self._stack("up_level2_block", n2, self.up1(self.mix1(skip3, feat3)))
        up = self._stack("up_level1_block", n1, self.up2(self.mix2(skip2, up)))
        return self.up3(up)

    def encoder_blocks(self) -> list[str]:
        """Names of the encoder blocks (levels 1-2 down path and all of level 3), in order."""
        n1, n2, n3 = self.blocks
        return ([f"down_level1_block{i}" for i in range(1, n1 + 1)]
                + [f"down_level2_block{i}" for i in range(1, n2 + 1)]
                + [f"level3_block{i}" for i in range(1, n3 + 1)])

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per encoder block (16 in the full net), as in the BiLaLoRA authors' code.

        Deploy form: the block's two 3x3 convs (``conv1``, ``conv2``). Training form: only
        ``conv2``; ``conv1`` is a DEConv whose branch modules hold parameters but are never
        called (their weights are folded), so an adapter wrapping them would be bypassed.
        Adaptation runs on the deploy form (the runner deploys before adapting).
        """
        convs = ("conv1", "conv2") if self.deployed else ("conv2",)
        return {block: [f"{block}.{c}" for c in convs] for block in self.encoder_blocks()}

    def deploy(self) -> DEANet:
        """A copy with every DEConv folded into one Conv2d; same output, 3.65 M params."""
        if self.deployed:
            return self
        folded = copy.deepcopy(self)
        for module in folded.modules():
            if isinstance(module, DEBlock) and isinstance(module.conv1, DEConv):
                module.conv1 = module.conv1.to_conv()
        folded.deployed = True
        return folded


_CONFIGS = {
    "full": {"dim": 32, "blocks": (4, 4, 8)},
    "tiny": {"dim": 8, "blocks": (2, 2, 4)},
}


@register_backbone(
    "dea_net",
    variants={
        "full": Published(3_653_000, 32.2e9, "macs",
                          "DEA-Net paper (deploy form; 7.789 M in training form; thop: 34.04 G MACs)"),
        "tiny": None,
    },
    multiple=4,
    description="DEA-Net: detail-enhanced conv + content-guided attention U-Net (re-parameterisable)",
)
def build_dea_net(variant: str = "full") -> DEANet:
    """DEA-Net in training form; ``full`` = 32/64/128 ch with 4/4/8 blocks, ``tiny`` = 8/16/32
    ch with 2/2/4 blocks. Call ``.deploy()`` for the folded inference form."""
    return DEANet(**variant_config("dea_net", _CONFIGS, variant))
