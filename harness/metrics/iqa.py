"""Entropy, PSNR and SSIM with pyiqa's weight-free implementations and conventions.

Conventions (pyiqa's, exposed as options): PSNR and SSIM take RGB in [0, 1]; ``y_channel=False``
(the default) scores all three RGB channels, as DEA-Net, FFA-Net and most dehazing papers report;
``y_channel=True`` scores the luma of YIQ (pyiqa's ``psnry``/``ssim``). SSIM uses an 11x11 Gaussian
window (sigma 1.5) at the image's own resolution (no MATLAB-style downsampling). Entropy is the
Shannon entropy (bits) of the 256-bin histogram of the rounded 8-bit YIQ luma, as pyiqa computes it.
"""

from __future__ import annotations

import numpy as np

from harness.data.io import to_tensor
from harness.errors import HarnessError
from harness.metrics.base import MetricSpec
from harness.registry import METRICS


class PyiqaMetric:
    """A pyiqa metric that needs no downloaded weights, built lazily (cheap to send to workers)."""

    def __init__(self, spec: MetricSpec, pyiqa_name: str, **options):
        self.spec = spec
        self.pyiqa_name = pyiqa_name
        self.options = options
        self._net = None

    def __getstate__(self):
        return {**self.__dict__, "_net": None}

    def net(self):
        """The pyiqa ``InferenceModel`` (on CPU), created on first use."""
        if self._net is None:
            import pyiqa

            self._net = pyiqa.create_metric(self.pyiqa_name, device="cpu", **self.options)
        return self._net

    def score(self, image: np.ndarray, reference: np.ndarray | None = None) -> float:
        x = to_tensor(np.asarray(image, np.float32))[None]
        if not self.spec.needs_reference:
            return float(self.net()(x).reshape(-1)[0])
        if reference is None:
            raise HarnessError(f"metric {self.spec.name} needs a reference image", "give the ground-truth folder")
        if reference.shape != image.shape:
            raise HarnessError(f"metric {self.spec.name}: image {image.shape} and reference {reference.shape} differ",
                               "score outputs at the ground truth's size")
        y = to_tensor(np.asarray(reference, np.float32))[None]
        return float(self.net()(x, y).reshape(-1)[0])


_YIQ_Y = np.array([0.299, 0.587, 0.114], np.float32)  # the Y row of pyiqa's rgb2yiq


def histogram_entropy(levels: np.ndarray) -> float:
    """Shannon entropy (bits) of the histogram of grey levels, rounded and clipped to 0..255."""
    hist = np.bincount(np.clip(np.round(levels), 0, 255).astype(np.int64).ravel(), minlength=256)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


class Entropy:
    """pyiqa's entropy convention (YIQ luma x 255, rounded) computed with numpy: pyiqa's one-hot
    histogram needs H*W*256 int64s (gigabytes on a 2-megapixel photo), and importing pyiqa costs
    each evaluation worker seconds."""

    spec = MetricSpec("entropy", lower_better=False, needs_reference=False, score_range=(0.0, 8.0),
                      description="Shannon entropy of the 8-bit YIQ luma histogram (pyiqa convention)")

    def score(self, image: np.ndarray, reference: np.ndarray | None = None) -> float:
        luma = np.asarray(image, np.float32) @ _YIQ_Y
        return histogram_entropy(luma * np.float32(255.0))


@METRICS.register("entropy")
def entropy() -> Entropy:
    """Shannon entropy of the 8-bit luma histogram (bits, higher = more detail)."""
    return Entropy()


@METRICS.register("psnr")
def psnr(y_channel: bool = False) -> PyiqaMetric:
    """PSNR in dB on [0, 1] images; RGB by default, YIQ luma with ``y_channel``."""
    spec = MetricSpec("psnr", lower_better=False, needs_reference=True, score_range=(0.0, 80.0),
                      description=f"PSNR (dB) on {'Y' if y_channel else 'RGB'}, data range 1 (pyiqa)")
    return PyiqaMetric(spec, "psnry" if y_channel else "psnr")


@METRICS.register("ssim")
def ssim(y_channel: bool = False) -> PyiqaMetric:
    """SSIM with an 11x11 Gaussian window; RGB by default, YIQ luma with ``y_channel``."""
    spec = MetricSpec("ssim", lower_better=False, needs_reference=True, score_range=(0.0, 1.0),
                      description=f"SSIM on {'Y' if y_channel else 'RGB'}, no downsampling (pyiqa)")
    return PyiqaMetric(spec, "ssim" if y_channel else "ssimc")
