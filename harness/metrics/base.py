"""Metrics as data: each declares its name, direction, whether it needs a reference, and range.

A metric is registered in ``METRICS`` as ``builder(**options) -> Metric``. ``Metric.score`` takes
an HxWx3 float32 RGB array in [0, 1] (and the ground truth for full-reference metrics) and
returns a float. Builders never download: missing weights raise a ``HarnessError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.registry import METRICS


@dataclass(frozen=True)
class MetricSpec:
    name: str
    lower_better: bool
    needs_reference: bool
    score_range: tuple[float, float] | None = None
    description: str = ""


class Metric(Protocol):
    spec: MetricSpec

    def score(self, image: np.ndarray, reference: np.ndarray | None = None) -> float: ...


def build_metric(name: str, **options) -> Metric:
    """Build a registered metric by name."""
    return METRICS.build(name, **options)
