"""The haze-to-clear (H2C) text-directed loss and its ablations (BiLaLoRA paper, Sec. 3.2 and 6.1).

With unit-norm CLIP image embeddings ``E`` and text embeddings ``T``:

- ``both`` (the paper's loss): ``1 - cos(E(out) - E(in), T(pos) - T(neg))``;
- ``positive`` (positive-only): ``1 - cos(E(out), T(pos))``, aligning the output with the clear
  description alone, with no input term;
- ``negative`` (negative-only): ``1 + cos(E(out), T(neg))``, only pushing the output away from the
  haze description.

The cosine rewards the direction an output's embedding moved, not how far: on real hazy photos
(measured, ``docs/guide.md``) the embedded guide scores a half-way dehaze better than a full one, so
adaptation walks the outputs back towards their inputs. ``distance_weight`` (0 by default, the
paper's loss) adds ``-w (E(out) - E(in)) . d`` with ``d`` the unit text direction: how far the
output moved towards "clear", which ranks stronger dehazing above weaker on those photos. Only the
``both`` mode has it.

``E(in)`` is a constant of the loss and is computed without a graph. Images are resized and
normalised exactly once (the authors' code normalises twice). When the guide asks for several views
(``Guide.views``), output and input are seen through the same random crops, flips and scales and
the loss is averaged over the views, which keeps the output from satisfying the loss with
changes that only one view of the image would reward (adversarial patterns). At the identity
``out == in`` the image direction is zero; the cosine's denominator is clamped, so the loss is 1
with a finite gradient there instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.guide.model import Guide

MODES = ("both", "positive", "negative")


class H2CLoss(nn.Module):
    """Callable as ``loss(restored, hazy_input) -> scalar`` (batch and view mean); CLIP stays frozen."""

    def __init__(self, guide: Guide, positive: str = "a clear photo", negative: str = "a photo with haze",
                 mode: str = "both", distance_weight: float = 0.0):
        super().__init__()
        if mode not in MODES:
            raise HarnessError(f"unknown H2C mode {mode!r}", f"set guide.mode to one of: {', '.join(MODES)}")
        if distance_weight and mode != "both":
            raise HarnessError(f"guide.distance_weight {distance_weight:g} needs the mode 'both' (got {mode!r})",
                               "set guide.distance_weight: 0 for the positive-/negative-only ablations")
        self.distance_weight = float(distance_weight)
        self.guide = guide
        self.clip = guide.model  # registered so .to(device) moves it
        self.mode = mode
        t_pos, t_neg = guide.encode_text([positive, negative])
        direction = {"both": t_pos - t_neg, "positive": t_pos, "negative": -t_neg}[mode]
        self.register_buffer("direction", F.normalize(direction, dim=-1))

    def forward(self, restored: torch.Tensor, hazy: torch.Tensor) -> torch.Tensor:
        if self.mode != "both":  # the ablations look at the output alone
            e_out = self.guide.encode_image(self.guide.views_of(restored)[0])
            return (1.0 - e_out @ self.direction).mean()
        view_out, view_in = self.guide.views_of(restored, hazy.to(restored.dtype))
        e_out = self.guide.encode_image(view_out)
        e_in = self.guide.encode_constant(view_in)
        # an output equal to its input has E(out) = E(in) exactly, whatever kernels the two calls took
        same = (view_out == view_in).flatten(1).all(1, keepdim=True)
        e_in = torch.where(same, e_out.detach(), e_in)
        delta = e_out - e_in
        along = delta @ self.direction
        cos = along / delta.norm(dim=-1).clamp_min(1e-8)
        return (1.0 - cos - self.distance_weight * along).mean()
