"""The haze-to-clear (H2C) text-directed loss.

``L = 1 - cos(E(out) - E(in), d)`` with unit-norm CLIP image embeddings ``E`` and a text direction
``d``: ``T(pos) - T(neg)`` ("both", the paper's loss), ``T(pos)`` ("positive": only the pull
towards the clear description) or ``-T(neg)`` ("negative": only the push away from the haze
description). The image direction is always ``E(out) - E(in)``. Images are resized and
normalised exactly once (the authors' code normalises twice). At the identity ``out == in`` the
image direction is zero; the cosine's denominator is clamped, so the loss is 1 with a finite
gradient there instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.guide.model import Guide

MODES = ("both", "positive", "negative")


class H2CLoss(nn.Module):
    """Callable as ``loss(restored, hazy_input) -> scalar`` (batch mean); CLIP stays frozen."""

    def __init__(self, guide: Guide, positive: str = "a clear photo", negative: str = "a photo with haze",
                 mode: str = "both"):
        super().__init__()
        if mode not in MODES:
            raise HarnessError(f"unknown H2C mode {mode!r}", f"set guide.mode to one of: {', '.join(MODES)}")
        self.guide = guide
        self.clip = guide.model  # registered so .to(device) moves it
        self.mode = mode
        t_pos, t_neg = guide.encode_text([positive, negative])
        direction = {"both": t_pos - t_neg, "positive": t_pos, "negative": -t_neg}[mode]
        self.register_buffer("direction", F.normalize(direction, dim=-1))

    def forward(self, restored: torch.Tensor, hazy: torch.Tensor) -> torch.Tensor:
        # One batch for both, so identical images take identical kernels (torch's attention fast
        # path is chosen per call) and the identity gives an exactly zero image direction.
        both = self.guide.encode_image(torch.cat([restored, hazy.to(restored.dtype)]))
        e_out, e_in = both[: len(restored)], both[len(restored):].detach()
        delta = e_out - e_in
        cos = (delta @ self.direction) / delta.norm(dim=-1).clamp_min(1e-8)
        return (1.0 - cos).mean()
