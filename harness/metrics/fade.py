"""FADE (Choi et al., TIP 2015): perceptual fog density, lower = less fog, via ``pyfade``.

``pyfade.fade`` takes a path, a folder or an array; for a float array in [0, 1] it rounds
``x * 255`` to uint8 before its MATLAB-faithful pipeline. The metric passes our float array
unchanged, so ``Fade().score(a) == pyfade.fade(a)`` exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from harness.metrics.base import MetricSpec
from harness.registry import METRICS


class Fade:
    spec = MetricSpec("fade", lower_better=True, needs_reference=False, score_range=(0.0, float("inf")),
                      description="fog aware density evaluator (pyfade)")

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = model_dir

    def score(self, image: np.ndarray, reference: np.ndarray | None = None) -> float:
        import pyfade

        if image.shape[0] < 8 or image.shape[1] < 8:
            raise HarnessError(f"fade: image {image.shape[:2]} is smaller than FADE's 8x8 patch", "score larger images")
        return float(pyfade.fade(np.asarray(image, np.float32), model_dir=self.model_dir))


@METRICS.register("fade")
def fade(model_dir: Path | None = None) -> Fade:
    """FADE fog density (lower is better); ``model_dir`` overrides pyfade's shipped statistics."""
    if model_dir is not None and not Path(model_dir).is_dir():
        raise HarnessError(f"fade: model_dir {model_dir} does not exist", "point metrics.fade.model_dir at a folder")
    return Fade(model_dir)
