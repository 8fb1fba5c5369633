"""Building blocks shared by several backbones (residual conv pairs, attention maps, dense blocks).

Submodule names are chosen so the official checkpoints of the networks using them load by key:
``conv1``/``conv2`` (FFA-Net and DEA-Net blocks), ``ca.0``/``ca.2`` (their channel attention),
``pa.0``/``pa.2`` (FFA-Net pixel attention), ``residual_dense_layers.<i>.conv``/``conv_1x1``
(GridDehazeNet residual dense blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Squeeze-excitation channel weights: global average -> 1x1 conv -> ReLU -> 1x1 conv.

    ``scale=True`` ends in a sigmoid and multiplies the input by the weights (FFA-Net ``CALayer``);
    ``scale=False`` returns the raw (B, C, 1, 1) logits (DEA-Net ``ChannelAttention``).
    """

    def __init__(self, channels: int, reduction: int = 8, scale: bool = True):
        super().__init__()
        self.scale = scale
        layers = [
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
        ]
        self.ca = nn.Sequential(*layers, nn.Sigmoid()) if scale else nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.ca(F.adaptive_avg_pool2d(x, 1))
        return x * weights if self.scale else weights


class PixelAttention(nn.Module):
    """Per-pixel weights: 1x1 conv -> ReLU -> 1x1 conv to one map -> sigmoid, times the input
    (FFA-Net ``PALayer``)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.pa = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, 1, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pa(x)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution with bias that keeps the size (at stride 1)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ResidualConvBlock(nn.Module):
    """``x + body(x)`` with ``body(x) = conv2(ReLU(conv1(x)) + x)``: the local residual block of
    FFA-Net and DEA-Net. Subclasses re-weight ``body`` (attention) before the outer skip.

    ``conv1`` defaults to a 3x3 conv; pass another size-keeping module (e.g. DEA-Net's DEConv).
    """

    def __init__(self, channels: int, conv1: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1 if conv1 is not None else conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)) + x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class DenseLayer(nn.Module):
    """3x3 conv + ReLU whose output is appended to its input channels."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.conv = conv3x3(channels, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.relu(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """``layers`` dense layers of ``growth`` channels, a 1x1 conv back to ``channels``, plus the input."""

    def __init__(self, channels: int, layers: int = 4, growth: int = 16):
        super().__init__()
        self.residual_dense_layers = nn.Sequential(
            *(DenseLayer(channels + i * growth, growth) for i in range(layers)))
        self.conv_1x1 = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1x1(self.residual_dense_layers(x)) + x
