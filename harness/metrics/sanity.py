"""Sanity metrics: how far each restored image moved from its own (hazy) input.

A method that turns every photo into a red-orange monochrome can still win on FADE; these four,
added by the scoring pipeline to every benchmark, expose such a collapse (``needs_input=True``):

- ``lab_shift``: Euclidean distance between the mean CIELAB (a*, b*) of output and input (sRGB,
  D65 white, 2-degree observer; CIELAB units); lower = less colour cast.
- ``colourfulness_delta``: Hasler-Suesstrunk colourfulness (2003) of the output minus the input's:
  ``sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` with ``rg = R - G`` and
  ``yb = (R + G) / 2 - B`` on 0..255 values, population deviations. Dehazing raises it; a collapse
  to grey lowers it, and a strong global cast raises it through the mean term (read with lab_shift).
- ``luma_ssim_input``: SSIM between the luma (Y of YCbCr, BT.601) of output and input, the ``ssim``
  metric's convention (11x11 Gaussian window, 8-bit rounding); near 1 = structure kept, low = detail
  lost or invented;
- ``clipped_delta``: the share of pixels whose 8-bit luma (the ``entropy`` metric's YIQ levels) is 0
  or 255, output minus input, in percentage points; shadows crushed to black or highlights blown to
  white hold no detail, and Entropy falls with them while FADE, which rewards dark, contrasted
  regions, can improve.

The colour conversions are pyiqa's (``rgb2xyz``, ``xyz2lab`` with the D65 white point; its own
``rgb2lab`` assumes D50, so white would not be neutral).
"""

from __future__ import annotations

import torch

from harness.metrics.base import DeviceMetric, MetricSpec, check_companion
from harness.metrics.iqa import Ssim, luma_levels
from harness.registry import METRICS

SANITY_METRICS = ("lab_shift", "colourfulness_delta", "luma_ssim_input", "clipped_delta")


def mean_ab(images: torch.Tensor) -> torch.Tensor:
    """Mean CIELAB (a*, b*) of each image of a Bx3xHxW sRGB batch in [0, 1] -> (B, 2), float64."""
    from pyiqa.utils.color_util import rgb2xyz, xyz2lab

    lab = xyz2lab(rgb2xyz(images.clamp(0, 1).float()), illuminant="D65")  # float32: a mean's precision
    return lab[:, 1:].double().mean(dim=(-2, -1))


def colourfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness of each image of a Bx3xHxW batch in [0, 1] (0..255 scale)."""
    rgb = images.double() * 255.0
    rg = (rgb[:, 0] - rgb[:, 1]).flatten(1)
    yb = (0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]).flatten(1)
    spread = torch.sqrt(rg.var(1, correction=0) + yb.var(1, correction=0))
    return spread + 0.3 * torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)


class LabShift(DeviceMetric):
    spec = MetricSpec("lab_shift", lower_better=True, needs_reference=False, score_range=(0.0, 400.0),
                      needs_input=True, description="distance of mean CIELAB (a*, b*), output vs input")

    @torch.no_grad()
    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        inputs = check_companion(self.spec, images, input_images, "input")
        return torch.linalg.vector_norm(mean_ab(images) - mean_ab(inputs), dim=1)


class ColourfulnessDelta(DeviceMetric):
    # a diagnostic more than a score: removing haze raises colourfulness, but so does a global
    # cast (the mean-chroma term), and a grey collapse lowers it; "higher" only orders the column
    spec = MetricSpec("colourfulness_delta", lower_better=False, needs_reference=False, score_range=None,
                      needs_input=True, description="Hasler-Suesstrunk colourfulness, output minus input")

    @torch.no_grad()
    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        inputs = check_companion(self.spec, images, input_images, "input")
        return colourfulness(images) - colourfulness(inputs)


def clipped_share(images: torch.Tensor) -> torch.Tensor:
    """Share (0..1, float64) of each image's pixels whose 8-bit YIQ luma is 0 or 255 (Bx3xHxW in [0, 1])."""
    levels = luma_levels(images.clamp(0, 1))
    return ((levels == 0) | (levels == 255)).flatten(1).double().mean(1)


class ClippedDelta(DeviceMetric):
    spec = MetricSpec("clipped_delta", lower_better=True, needs_reference=False, score_range=(-100.0, 100.0),
                      needs_input=True, description="pixels with 8-bit luma 0 or 255 (%), output minus input")

    @torch.no_grad()
    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        inputs = check_companion(self.spec, images, input_images, "input")
        return 100.0 * (clipped_share(images) - clipped_share(inputs))


@METRICS.register("lab_shift")
def lab_shift() -> LabShift:
    """Colour cast: distance between mean CIELAB (a*, b*) of output and input (lower = less cast)."""
    return LabShift()


@METRICS.register("colourfulness_delta")
def colourfulness_delta() -> ColourfulnessDelta:
    """Colourfulness of the output minus the input's (Hasler-Suesstrunk)."""
    return ColourfulnessDelta()


@METRICS.register("luma_ssim_input")
def luma_ssim_input() -> Ssim:
    """SSIM between the luma of output and input (near 1 = structure kept)."""
    spec = MetricSpec("luma_ssim_input", lower_better=False, needs_reference=False, score_range=(0.0, 1.0),
                      needs_input=True, description="SSIM of BT.601 luma (Y of YCbCr), output vs input")
    return Ssim(spec, "ycbcr")


@METRICS.register("clipped_delta")
def clipped_delta() -> ClippedDelta:
    """Pixels clipped to black or white (8-bit luma 0 or 255), output minus input, in % (lower = detail kept)."""
    return ClippedDelta()


def sanity_metrics() -> dict[str, DeviceMetric]:
    """The four sanity metrics, by name, as the scoring pipeline adds them."""
    return {name: METRICS.build(name) for name in SANITY_METRICS}
