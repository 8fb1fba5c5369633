"""Entropy, PSNR and SSIM on torch batches on any device, with pyiqa's conventions.

Conventions (pyiqa's, exposed as options): PSNR and SSIM take RGB in [0, 1]; ``y_channel=False``
(the default) scores all three RGB channels, as DEA-Net, FFA-Net and most dehazing papers report;
``y_channel=True`` scores the luma of YIQ (pyiqa's ``psnry``/``ssim``). SSIM uses an 11x11 Gaussian
window (sigma 1.5) at the image's own resolution (no MATLAB-style downsampling) on values rounded
to 8 bits (pyiqa's colour conversion and rounding), valid positions only, negative contrast-structure
terms clipped to 0 as pyiqa does. PSNR is pyiqa's, run on the batch's device.

Ours where pyiqa's does not fit: SSIM filters separably in row strips (pyiqa's dense 11x11 float64
convolution took 10-40 s per 640x480 image on a busy CPU core, and holds every map of a whole photo
at once); entropy histograms in row chunks (pyiqa's one-hot histogram needs H*W*256 int64s,
gigabytes on a 2-megapixel photo), rounding the luma half to even like pyiqa's and numpy's ``round``.
"""

from __future__ import annotations

import torch

from harness.errors import HarnessError
from harness.metrics.base import DeviceMetric, MetricSpec, check_companion
from harness.metrics.filters import gaussian_blur_valid, gaussian_taps
from harness.registry import METRICS

_YIQ_Y = (0.299, 0.587, 0.114)  # the Y row of pyiqa's rgb2yiq
_CHUNK_PIXELS = 1 << 22  # rows of this many pixels at a time bound the histogram's temporaries


class PyiqaMetric(DeviceMetric):
    """A pyiqa metric run on the batch's device, built lazily (cheap to send to workers)."""

    def __init__(self, spec: MetricSpec, pyiqa_name: str, **options):
        self.spec = spec
        self.pyiqa_name = pyiqa_name
        self.options = options
        self._net = None

    def __getstate__(self):
        return {**self.__dict__, "_net": None}

    def net(self, device: torch.device | str = "cpu"):
        """The pyiqa ``InferenceModel`` on ``device``, created on first use and moved when asked."""
        import pyiqa

        if self._net is None:
            self._net = pyiqa.create_metric(self.pyiqa_name, device="cpu", **self.options)
        if self._net.dummy_param.device != torch.device(device):
            self._net = self._net.to(device)
        return self._net

    @torch.no_grad()
    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        net = self.net(images.device)
        if not self.spec.needs_reference:
            return net(images).reshape(-1)
        return net(images, check_companion(self.spec, images, references, "reference")).reshape(-1)


_SSIM_C1, _SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
_SSIM_SIZE, _SSIM_SIGMA = 11, 1.5


def eight_bit(images: torch.Tensor, color_space: str | None) -> torch.Tensor:
    """Bx3xHxW RGB in [0, 1] -> rounded 0..255 float64 planes: RGB, or the Y of ``color_space``
    (``"yiq"`` or ``"ycbcr"``, pyiqa's conversions), as pyiqa's SSIM prepares its inputs."""
    if color_space is None:
        return torch.round(images * 255.0).double()
    from pyiqa.utils.color_util import to_y_channel

    return to_y_channel(images, 255, color_space).double()


@torch.no_grad()
def ssim_8bit(x: torch.Tensor, y: torch.Tensor, strip_pixels: int = 1 << 20) -> torch.Tensor:
    """Mean SSIM over channels and valid 11x11 windows of two BxCxHxW 0..255 batches -> (B,)."""
    b, c, h, w = x.shape
    if min(h, w) < _SSIM_SIZE:
        raise HarnessError(f"ssim: image {(h, w)} is smaller than the {_SSIM_SIZE}x{_SSIM_SIZE} window",
                           "score larger images")
    taps = gaussian_taps(_SSIM_SIZE, _SSIM_SIGMA, x.dtype, x.device)
    rows = h - _SSIM_SIZE + 1
    step = max(1, strip_pixels // max(1, b * c * w))
    total = torch.zeros(b, dtype=torch.float64, device=x.device)
    for a in range(0, rows, step):
        xs, ys = x[..., a:min(a + step, rows) + _SSIM_SIZE - 1, :], y[..., a:min(a + step, rows) + _SSIM_SIZE - 1, :]
        mx, my = gaussian_blur_valid(xs, taps), gaussian_blur_valid(ys, taps)
        vx = gaussian_blur_valid(xs * xs, taps) - mx * mx
        vy = gaussian_blur_valid(ys * ys, taps) - my * my
        cov = gaussian_blur_valid(xs * ys, taps) - mx * my
        cs = torch.relu((2 * cov + _SSIM_C2) / (vx + vy + _SSIM_C2))
        total += (((2 * mx * my + _SSIM_C1) / (mx * mx + my * my + _SSIM_C1)) * cs).sum(dim=(1, 2, 3))
    return total / (c * rows * (w - _SSIM_SIZE + 1))


class Ssim(DeviceMetric):
    def __init__(self, spec: MetricSpec, color_space: str | None):
        self.spec, self.color_space = spec, color_space

    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        other = references if self.spec.needs_reference else input_images
        other = check_companion(self.spec, images, other, "reference" if self.spec.needs_reference else "input")
        space = self.color_space
        return ssim_8bit(eight_bit(images.clamp(0, 1), space), eight_bit(other.clamp(0, 1), space))


def luma_levels(images: torch.Tensor) -> torch.Tensor:
    """Bx3xHxW RGB in [0, 1] -> BxHxW 8-bit YIQ luma levels (int64), rounded half to even."""
    w = _YIQ_Y
    luma = (images[:, 0] * w[0] + images[:, 1] * w[1] + images[:, 2] * w[2]) * 255.0
    return torch.round(luma).clamp_(0, 255).long()


def histogram_entropy(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits, float64) of each row of histogram counts (B, bins)."""
    p = counts.double() / counts.sum(-1, keepdim=True)
    return -torch.where(p > 0, p * torch.log2(p), 0.0).sum(-1) + 0.0  # + 0.0 turns -0.0 into 0.0


class Entropy(DeviceMetric):
    spec = MetricSpec("entropy", lower_better=False, needs_reference=False, score_range=(0.0, 8.0),
                      description="Shannon entropy of the 8-bit YIQ luma histogram (pyiqa convention)")

    @torch.no_grad()
    def score_batch(self, images, references=None, input_images=None) -> torch.Tensor:
        b, _, h, w = images.shape
        counts = torch.zeros(b * 256, dtype=torch.long, device=images.device)
        offsets = (torch.arange(b, device=images.device) * 256)[:, None, None]
        step = max(1, _CHUNK_PIXELS // max(1, b * w))
        for y in range(0, h, step):
            levels = luma_levels(images[:, :, y:y + step]) + offsets
            counts += torch.bincount(levels.reshape(-1), minlength=b * 256)
        return histogram_entropy(counts.view(b, 256))


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
def ssim(y_channel: bool = False) -> Ssim:
    """SSIM with an 11x11 Gaussian window; RGB by default, YIQ luma with ``y_channel``."""
    spec = MetricSpec("ssim", lower_better=False, needs_reference=True, score_range=(0.0, 1.0),
                      description=f"SSIM on {'Y' if y_channel else 'RGB'}, no downsampling (pyiqa convention)")
    return Ssim(spec, "yiq" if y_channel else None)
