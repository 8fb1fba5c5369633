"""Metrics as data: each declares its name, direction, inputs, range and where it runs.

A metric is registered in ``METRICS`` as ``builder(**options) -> Metric``. Builders never download:
missing weights raise a ``HarnessError`` naming the file.

Two kinds, told apart by ``spec.on_device``:

- device metrics (``DeviceMetric``) score a batch: ``score_batch(images, references, input_images)``
  takes Bx3xHxW float tensors in [0, 1] on any device (the device the model ran on) and returns
  B floats as a 1-D tensor;
- CPU-only metrics (e.g. ``fade`` with ``impl: pyfade``, ``biqme``) score one HxWx3 float32 numpy
  array; the scoring pipeline runs them in ``eval.workers`` processes.

Every metric also has ``score(image, reference=None, input_image=None) -> float`` on one HxWx3
numpy array. ``needs_reference`` metrics compare with the ground truth, ``needs_input`` metrics with
the image the output was restored from (the sanity metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from harness.errors import HarnessError
from harness.registry import METRICS

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MetricSpec:
    name: str
    lower_better: bool
    needs_reference: bool
    score_range: tuple[float, float] | None = None
    description: str = ""
    needs_input: bool = False  # compares the output with its own (hazy) input
    on_device: bool = True  # scores torch batches on any device; False: numpy, in CPU worker processes


class Metric(Protocol):
    spec: MetricSpec

    def score(self, image: np.ndarray, reference: np.ndarray | None = None,
              input_image: np.ndarray | None = None) -> float: ...


class DeviceMetric:
    """Base of the metrics that score torch batches; ``score`` is ``score_batch`` on one CPU image."""

    spec: MetricSpec

    def score_batch(self, images: torch.Tensor, references: torch.Tensor | None = None,
                    input_images: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def score(self, image: np.ndarray, reference: np.ndarray | None = None,
              input_image: np.ndarray | None = None) -> float:
        from harness.data.io import to_tensor

        def batch(a: np.ndarray | None):
            return None if a is None else to_tensor(np.asarray(a, np.float32))[None]

        return float(self.score_batch(batch(image), batch(reference), batch(input_image))[0])


def check_companion(spec: MetricSpec, images: torch.Tensor, other: torch.Tensor | None, what: str):
    """``other`` (the references or the inputs) present and shaped like ``images``, else a HarnessError."""
    if other is None:
        fix = "give the ground-truth folder" if what == "reference" else "pass the restored images' inputs"
        raise HarnessError(f"metric {spec.name} needs the {what} image", fix)
    if tuple(other.shape) != tuple(images.shape):
        raise HarnessError(f"metric {spec.name}: image {tuple(images.shape[-2:])} and {what} "
                           f"{tuple(other.shape[-2:])} differ in size", f"score outputs at the {what}'s size")
    return other.to(images.device)


def build_metric(name: str, **options) -> Metric:
    """Build a registered metric by name."""
    return METRICS.build(name, **options)
