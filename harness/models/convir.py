"""ConvIR (Cui et al., TPAMI 2024): a three-scale convolutional U-Net with multi-shape dynamic filters.

Each stage is a stack of residual blocks (3x3 conv, GELU, 3x3 conv); the last block of a stage
carries a deep pooling layer: average pools (8, 4, 2) feeding multi-shape kernels, i.e. a square
dynamic filter (1x1 conv + BatchNorm predicting a 3x3 dilated kernel per channel group) plus
horizontal/vertical strip filters. Shallow convolution modules inject the 1/2 and 1/4 input.
Module names follow c-yn/ConvIR ``Dehazing/ITS/models`` so official checkpoints load directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import DehazeNet, Published, register_backbone, sites_under, variant_config

POOL_SIZES = (8, 4, 2)


class BasicConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, relu: bool = True,
                 transpose: bool = False):
        super().__init__()
        if transpose:
            conv = nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding=kernel_size // 2 - 1)
        else:
            conv = nn.Conv2d(cin, cout, kernel_size, stride, padding=kernel_size // 2)
        self.main = nn.Sequential(conv, nn.GELU()) if relu else nn.Sequential(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _filter_and_mix(x: torch.Tensor, taps: torch.Tensor, pad: nn.Module, kernel: tuple[int, int],
                    dilation: int, group: int, pooled: torch.Tensor, inside_all: nn.Parameter,
                    lamb_l: nn.Parameter, lamb_h: nn.Parameter) -> torch.Tensor:
    """Apply per-(sample, group) predicted taps as a dilated filter, then mix low/high frequency.

    ``taps`` is (n, group, k) after tanh; the filtered (low-pass) part is pulled towards the
    ``pooled`` mean by ``inside_all`` and scaled by ``lamb_l``; the input (high) part by ``1+lamb_h``.
    """
    n, c, h, w = x.shape
    k = taps.shape[-1]
    cols = F.unfold(pad(x), kernel_size=kernel, dilation=dilation).reshape(n, group, c // group, k, h * w)
    low = (cols * taps[:, :, None, :, None]).sum(dim=3).reshape(n, c, h, w)
    low = low * (inside_all + 1.0) - inside_all * pooled
    return low * lamb_l[None, :, None, None] + x * (lamb_h[None, :, None, None] + 1.0)


class DynamicFilter(nn.Module):
    """Square (k x k, dilated) dynamic filter predicted from the global average (official
    ``dynamic_filter``)."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: int = 1, group: int = 8):
        super().__init__()
        self.kernel_size, self.dilation, self.group = kernel_size, dilation, group
        self.conv = nn.Conv2d(channels, group * kernel_size**2, 1, bias=False)
        self.bn = nn.BatchNorm2d(group * kernel_size**2)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        self.lamb_l = nn.Parameter(torch.zeros(channels))
        self.lamb_h = nn.Parameter(torch.zeros(channels))
        self.inside_all = nn.Parameter(torch.zeros(channels, 1, 1))
        self.pad = nn.ReflectionPad2d(dilation * (kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        taps = torch.tanh(self.bn(self.conv(pooled))).reshape(x.shape[0], self.group, self.kernel_size**2)
        return _filter_and_mix(x, taps, self.pad, (self.kernel_size,) * 2, self.dilation, self.group,
                               pooled, self.inside_all, self.lamb_l, self.lamb_h)


class StripFilter(nn.Module):
    """1 x k (``horizontal``) or k x 1 dynamic strip filter (official ``spatial_strip_att``)."""

    def __init__(self, channels: int, kernel: int = 3, dilation: int = 1, group: int = 2,
                 horizontal: bool = True):
        super().__init__()
        self.k, self.dilation, self.group, self.horizontal = kernel, dilation, group, horizontal
        self.kernel = (1, kernel) if horizontal else (kernel, 1)
        pad = dilation * (kernel - 1) // 2
        self.pad = nn.ReflectionPad2d((pad, pad, 0, 0) if horizontal else (0, 0, pad, pad))
        self.conv = nn.Conv2d(channels, group * kernel, 1, bias=False)
        self.inside_all = nn.Parameter(torch.zeros(channels, 1, 1))
        self.lamb_l = nn.Parameter(torch.zeros(channels))
        self.lamb_h = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = torch.tanh(self.conv(x.mean(dim=(2, 3), keepdim=True))).reshape(x.shape[0], self.group, self.k)
        # the mean is taken along the filtered direction only
        pooled = x.mean(dim=3, keepdim=True) if self.horizontal else x.mean(dim=2, keepdim=True)
        return _filter_and_mix(x, taps, self.pad, self.kernel, self.dilation, self.group,
                               pooled, self.inside_all, self.lamb_l, self.lamb_h)


class CubicAttention(nn.Module):
    def __init__(self, channels: int, group: int, dilation: int, kernel: int):
        super().__init__()
        self.H_spatial_att = StripFilter(channels, kernel, dilation, group, horizontal=True)
        self.W_spatial_att = StripFilter(channels, kernel, dilation, group, horizontal=False)
        self.gamma = nn.Parameter(torch.zeros(channels, 1, 1))
        self.beta = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gamma * self.W_spatial_att(self.H_spatial_att(x)) + self.beta * x


class MultiShapeKernel(nn.Module):
    def __init__(self, channels: int, dilation: int, kernel_size: int = 3, group: int = 8):
        super().__init__()
        self.square_att = DynamicFilter(channels, kernel_size, dilation, group)
        self.strip_att = CubicAttention(channels, group, dilation, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.strip_att(x) + self.square_att(x)


class DeepPoolLayer(nn.Module):
    """Coarse-to-fine pooled branches (pools 8, 4, 2), each refined by a multi-shape kernel."""

    def __init__(self, channels: int, dilations: tuple[int, int, int]):
        super().__init__()
        self.pools = nn.ModuleList(nn.AvgPool2d(p, p) for p in POOL_SIZES)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, 1, 1, bias=False) for _ in POOL_SIZES)
        self.dynas = nn.ModuleList(MultiShapeKernel(channels, d) for d in dilations)
        self.relu = nn.GELU()
        self.conv_sum = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        carried = None
        for i, (pool, conv, dyna) in enumerate(zip(self.pools, self.convs, self.dynas)):
            pooled = pool(x) if carried is None else pool(x) + carried
            y = dyna(conv(pooled))
            out = out + F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=True)
            if i < len(POOL_SIZES) - 1:
                carried = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv_sum(self.relu(out))


class ResBlock(nn.Module):
    def __init__(self, channels: int, dilations: tuple[int, int, int] | None = None):
        super().__init__()
        self.main = nn.Sequential(
            BasicConv(channels, channels, 3),
            DeepPoolLayer(channels, dilations) if dilations else nn.Identity(),
            BasicConv(channels, channels, 3, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x


class Stage(nn.Module):
    """``num_res`` residual blocks, the last one with the deep pooling layer (EBlock/DBlock)."""

    def __init__(self, channels: int, num_res: int, dilations: tuple[int, int, int]):
        super().__init__()
        blocks = [ResBlock(channels) for _ in range(num_res - 1)] + [ResBlock(channels, dilations)]
        self.layers = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SCM(nn.Module):
    """Shallow convolution module: features straight from a downscaled input."""

    def __init__(self, cout: int):
        super().__init__()
        self.main = nn.Sequential(
            BasicConv(3, cout // 4, 3), BasicConv(cout // 4, cout // 2, 1),
            BasicConv(cout // 2, cout // 2, 3), BasicConv(cout // 2, cout, 1, relu=False),
            nn.InstanceNorm2d(cout, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class FAM(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.merge = BasicConv(2 * channels, channels, 3, relu=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([x1, x2], dim=1))


class ConvIR(DehazeNet):
    """ConvIR with ``width`` channels at full resolution and ``num_res`` blocks per stage."""

    multiple = 32

    def __init__(self, width: int = 32, num_res: int = 8, dilations: tuple[int, int, int] = (7, 9, 11)):
        super().__init__()
        c = (width, 2 * width, 4 * width)
        # the 1/4-scale stage pools by 8 more and reflect-pads by the dilation: that needs
        # H / (4 * pool) > dilation for every branch (256 for the official 7, 9, 11)
        need = max(4 * p * (d + 1) for p, d in zip(POOL_SIZES, dilations))
        self.min_size = -(-need // self.multiple) * self.multiple
        self.Encoder = nn.ModuleList(Stage(ch, num_res, dilations) for ch in c)
        self.feat_extract = nn.ModuleList([
            BasicConv(3, c[0], 3),
            BasicConv(c[0], c[1], 3, stride=2),
            BasicConv(c[1], c[2], 3, stride=2),
            BasicConv(c[2], c[1], 4, stride=2, transpose=True),
            BasicConv(c[1], c[0], 4, stride=2, transpose=True),
            BasicConv(c[0], 3, 3, relu=False),
        ])
        self.Decoder = nn.ModuleList(Stage(ch, num_res, dilations) for ch in reversed(c))
        self.Convs = nn.ModuleList([BasicConv(c[2], c[1], 1), BasicConv(c[1], c[0], 1)])
        self.ConvsOut = nn.ModuleList([BasicConv(c[2], 3, 3, relu=False), BasicConv(c[1], 3, 3, relu=False)])
        self.FAM1 = FAM(c[2])
        self.SCM1 = SCM(c[2])
        self.FAM2 = FAM(c[1])
        self.SCM2 = SCM(c[1])

    def multi_scale(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Restorations at 1/4, 1/2 and full scale (the official training supervises all three)."""
        x_2 = F.interpolate(x, scale_factor=0.5)
        x_4 = F.interpolate(x_2, scale_factor=0.5)
        z2, z4 = self.SCM2(x_2), self.SCM1(x_4)
        x_ = self.feat_extract[0](x)
        res1 = self.Encoder[0](x_)
        res2 = self.Encoder[1](self.FAM2(self.feat_extract[1](res1), z2))
        z = self.Encoder[2](self.FAM1(self.feat_extract[2](res2), z4))
        z = self.Decoder[0](z)
        out4 = self.ConvsOut[0](z) + x_4
        z = self.Decoder[1](self.Convs[0](torch.cat([self.feat_extract[3](z), res2], dim=1)))
        out2 = self.ConvsOut[1](z) + x_2
        z = self.Decoder[2](self.Convs[1](torch.cat([self.feat_extract[4](z), res1], dim=1)))
        return [out4, out2, self.feat_extract[5](z) + x]

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return self.multi_scale(x)[-1]

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per residual block of every encoder/decoder stage (its two 3x3 convs and,
        in a stage's last block, the deep pooling convs), plus one per entry/exit/fusion module.

        ``ConvsOut`` (the 1/4 and 1/2 scale outputs) is left out: it does not reach the
        full-resolution restoration, so a gate there would never receive a gradient.
        """
        groups: dict[str, list[str]] = {}
        for side in ("Encoder", "Decoder"):
            for s, stage in enumerate(getattr(self, side)):
                for b in range(len(stage.layers)):
                    groups[f"{side}.{s}.layers.{b}"] = sites_under(self, f"{side}.{s}.layers.{b}")
        for name in ("feat_extract", "Convs"):
            for i in range(len(getattr(self, name))):
                groups[f"{name}.{i}"] = sites_under(self, f"{name}.{i}")
        for name in ("FAM1", "FAM2", "SCM1", "SCM2"):
            groups[name] = sites_under(self, name)
        return {name: sites for name, sites in groups.items() if sites}  # transposed convs: none


# ConvIR-B is assumed to be the variant the BiLaLoRA paper adapts (not confirmed from its text).
PAPER_VARIANT = "b"
_CONFIGS = {
    "s": {"num_res": 4},
    "b": {"num_res": 8},
    "l": {"num_res": 16},
    "tiny": {"width": 8, "num_res": 1, "dilations": (1, 3, 5)},
}
_CONFIGS["full"] = _CONFIGS[PAPER_VARIANT]
_SOURCE = "Cui et al., TPAMI 2024; c-yn/ConvIR README table (params, FLOPs=MACs at 256x256)"
_PUBLISHED = {
    "s": Published(5_530_000, 42.1e9, "thop", _SOURCE),
    "b": Published(8_630_000, 71.22e9, "thop", _SOURCE),
    "l": Published(14_830_000, 129.34e9, "thop", _SOURCE),
}


@register_backbone(
    "convir",
    variants={"full": _PUBLISHED[PAPER_VARIANT], **_PUBLISHED, "tiny": None},
    multiple=32,
    description="ConvIR: 3-scale conv U-Net, multi-shape dynamic filters (BatchNorm), InstanceNorm, GELU",
)
def build_convir(variant: str = "full") -> ConvIR:
    """ConvIR-S/B/L (4/8/16 blocks per stage at 32/64/128 ch); ``full`` is the paper's variant;
    ``tiny`` has 8/16/32 ch, one block per stage and dilations (1, 3, 5) so it runs from 64 px."""
    return ConvIR(**variant_config("convir", _CONFIGS, variant))
