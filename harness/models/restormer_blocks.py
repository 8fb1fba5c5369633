"""Restormer building blocks (Zamir et al., CVPR 2022) shared by VLU-Net and LoRun.

Channel layer norm, multi-Dconv head transposed attention (attention across channels, so its cost
grows linearly with the pixel count), the gated-Dconv feed-forward network, their transformer
block, and pixel-(un)shuffle resampling. Submodule names follow the Restormer family's code
(``norm1.body``, ``attn.qkv``/``qkv_dwconv``/``project_out``, ``ffn.project_in``/``dwconv``/
``project_out``, ``body``) so VLU-Net's official checkpoints load by key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Affine(nn.Module):
    """The learned scale (and shift) of a channel layer norm, held as ``weight``/``bias``."""

    def __init__(self, dim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of each pixel of an NCHW tensor.

    ``bias=True`` is Restormer's "WithBias" norm; ``bias=False`` its "BiasFree" one, which scales
    by the standard deviation without removing the mean.
    """

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.body = _Affine(dim, bias)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        if self.body.bias is not None:
            x = F.layer_norm(x, x.shape[-1:], self.body.weight, self.body.bias, self.eps)
        else:
            x = x * torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + self.eps) * self.body.weight
        return x.permute(0, 3, 1, 2)


def transposed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                         temperature: torch.Tensor) -> torch.Tensor:
    """Channel-to-channel attention per head: softmax(q̂ k̂ᵀ · temperature) v, with q̂, k̂ the rows of
    q and k (one per channel, over all pixels) scaled to unit length. NCHW in and out."""
    b, c, h, w = q.shape

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, heads, t.shape[1] // heads, h * w)

    q, k = F.normalize(rows(q), dim=-1), F.normalize(rows(k), dim=-1)
    attn = (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)
    return (attn @ rows(v)).reshape(b, c, h, w)


class TransposedAttention(nn.Module):
    """What every transposed attention holds: per-head temperatures and the output projection;
    subclasses make q, k and v with their own (1x1 then depthwise) convs."""

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.project_out(transposed_attention(q, k, v, self.heads, self.temperature))


class Attention(TransposedAttention):
    """Multi-Dconv head transposed self-attention (MDTA)."""

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__(dim, heads, bias)
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(*self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1))


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): GELU(dw(W1 x)) ⊙ dw(W2 x), projected back."""

    def __init__(self, dim: int, expansion: float, bias: bool = False):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """``x + MDTA(norm(x))`` then ``x + GDFN(norm(x))``."""

    def __init__(self, dim: int, heads: int, expansion: float, bias: bool = False, norm_bias: bool = True):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, norm_bias)
        self.attn = Attention(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim, norm_bias)
        self.ffn = FeedForward(dim, expansion, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))

    def dense_convs(self) -> list[str]:
        """Relative names of the block's 1x1 convs (its depthwise convs excluded)."""
        return ["attn.qkv", "attn.project_out", "ffn.project_in", "ffn.project_out"]


def transformer_stack(count: int, dim: int, heads: int, expansion: float) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, expansion) for _ in range(count)))


class Downsample(nn.Module):
    """Halve the resolution, double the channels: 3x3 conv to ``dim / 2``, then pixel unshuffle."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution, halve the channels: 3x3 conv to ``2 dim``, then pixel shuffle."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
