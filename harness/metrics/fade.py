"""FADE (Choi et al., TIP 2015): perceptual fog density, lower = less fog.

``impl: torch`` (the default) is ``harness.metrics.fade_torch``: batched, on the model's device,
equal to the reference to rounding. ``impl: pyfade`` is the reference itself (``fade-python``,
numpy/numba, CPU only; the scoring pipeline runs it in ``eval.workers`` processes). Both take float
images in [0, 1] and score their 8-bit rounding ``floor(255 x + 0.5)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from harness.errors import HarnessError
from harness.metrics.base import DeviceMetric, MetricSpec
from harness.metrics.fade_torch import MIN_SIDE, fade_maps, load_models
from harness.registry import METRICS

_RANGE = (0.0, float("inf"))


class TorchFade(DeviceMetric):
    spec = MetricSpec("fade", lower_better=True, needs_reference=False, score_range=_RANGE,
                      description="fog aware density evaluator (torch, float64; equal to pyfade to rounding)")

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = None if model_dir is None else str(model_dir)
        load_models(self.model_dir)  # a missing or bad file fails at build time

    def score_batch(self, images, references=None, input_images=None):
        return fade_maps(images, load_models(self.model_dir))[0]


class PyFade:
    spec = MetricSpec("fade", lower_better=True, needs_reference=False, score_range=_RANGE,
                      description="fog aware density evaluator (pyfade reference, CPU)", on_device=False)

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = model_dir

    def score(self, image: np.ndarray, reference: np.ndarray | None = None,
              input_image: np.ndarray | None = None) -> float:
        import pyfade

        if min(image.shape[:2]) < MIN_SIDE:
            raise HarnessError(f"fade: image {image.shape[:2]} is smaller than FADE's {MIN_SIDE}x{MIN_SIDE}",
                               "score larger images")
        return float(pyfade.fade(np.asarray(image, np.float32), model_dir=self.model_dir))


@METRICS.register("fade")
def fade(impl: Literal["torch", "pyfade"] = "torch", model_dir: Path | None = None) -> TorchFade | PyFade:
    """FADE fog density (lower is better); ``impl: pyfade`` for the reference, ``model_dir`` overrides
    the fog-free/foggy model files that pyfade ships."""
    if model_dir is not None and not Path(model_dir).is_dir():
        raise HarnessError(f"fade: model_dir {model_dir} does not exist", "point metrics.fade.model_dir at a folder")
    return TorchFade(model_dir) if impl == "torch" else PyFade(model_dir)
