"""Image-quality metrics, registered in ``harness.registry.METRICS`` on import."""

from harness.metrics import biqme, fade, iqa, musiq, sanity  # noqa: F401  (registration)
from harness.metrics.base import DeviceMetric, Metric, MetricSpec, build_metric  # noqa: F401
