"""Separable filtering on torch tensors of any device and dtype (valid positions only).

torch has no 1-D correlation along an image axis for float64 that is fast on a CPU (``conv2d``
falls back to a slow path for doubles, 5-10x slower than the matrix-vector product used here).
"""

from __future__ import annotations

import torch


def correlate(x: torch.Tensor, taps: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid correlation of ``x`` with the 1-D ``taps`` along ``dim`` (-1 or -2)."""
    if dim == -1:  # contiguous windows: one matrix-vector product
        return x.unfold(-1, len(taps), 1) @ taps
    return correlate(x.transpose(-1, -2).contiguous(), taps, -1).transpose(-1, -2)


def gaussian_taps(size: int, sigma: float, dtype=torch.float64, device=None) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``size`` taps; its outer product is ``fspecial('gaussian')``."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_blur_valid(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """``x`` filtered by the separable window ``taps`` x ``taps``, valid positions."""
    return correlate(correlate(x, taps, -2), taps, -1)
