"""Adaptation methods, registered in ``harness.registry.METHODS`` on import."""

from harness.adapt.base import AdaptJob, AdaptMethod, AdaptResult  # noqa: F401
