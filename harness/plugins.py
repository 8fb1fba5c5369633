"""Import every module that registers a backbone, method, dataset, metric or guide."""

from __future__ import annotations

import importlib

PLUGIN_MODULES = (
    "harness.models",
    "harness.adapt.methods",
    "harness.adapt.graft",
    "harness.data.datasets",
    "harness.metrics",
    "harness.guide",
    "harness.pretrain.bild",
)


def load_plugins() -> None:
    for name in PLUGIN_MODULES:
        importlib.import_module(name)
