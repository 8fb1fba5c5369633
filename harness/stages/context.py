"""What the tasks of one run share inside one process: the recipe and its plan, the run folder, the
strategy, and resources built once (datasets and their fingerprints, metrics, the guide, H2C losses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine.strategy import Strategy
from harness.errors import HarnessError
from harness.plan.graph import Plan
from harness.hashing import stable_hash
from harness.recipe import Recipe, dataset_spec
from harness.registry import DATASETS
from harness.store import RunStore
from harness.ui.progress import RunProgress


@dataclass
class StageContext:
    plan: Plan
    store: RunStore
    strategy: Strategy
    progress: RunProgress
    forced: set[str] = field(default_factory=set)  # task ids to recompute even if fresh
    _datasets: dict[str, Any] = field(default_factory=dict)
    _fingerprints: dict[str, str] = field(default_factory=dict)
    _metrics: dict | None = None
    _guide: Any = None
    _guide_weights: tuple[str | None] | None = None
    _losses: dict[str, Any] = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return self.plan.recipe

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    def dataset(self, entry: dict[str, Any]):
        entry = dataset_spec(entry)  # a pretraining entry's reweight: is not the dataset's
        key = stable_hash(entry)
        if key not in self._datasets:
            params = {k: v for k, v in entry.items() if k != "type"}
            self._datasets[key] = DATASETS.build(entry["type"], **params)
        return self._datasets[key]

    def fingerprint(self, entry: dict[str, Any]) -> str:
        """Content fingerprint of a dataset (names, sizes and sampled bytes of every file)."""
        key = stable_hash(dataset_spec(entry))
        if key not in self._fingerprints:
            self._fingerprints[key] = self.dataset(entry).fingerprint()
        return self._fingerprints[key]

    def metrics(self) -> dict:
        """Every metric of the recipe, built once; an optional one that cannot be built is None (n/a)."""
        from harness.metrics.base import build_metric

        if self._metrics is None:
            self._metrics = {}
            for entry in self.recipe.metrics:
                try:
                    self._metrics[entry.name] = build_metric(entry.type, **entry.params)
                except HarnessError as err:
                    if not entry.optional:
                        raise
                    self.progress.line(f"metric {entry.name} not available: {err}")
                    self._metrics[entry.name] = None
        return self._metrics

    def h2c_settings(self, method: dict[str, Any]) -> dict[str, str]:
        """The recipe's H2C settings with the method's ``h2c:`` overrides applied."""
        return {**self.recipe.guide.h2c(), **method.get("h2c", {})}

    def guide(self):
        from harness.guide import build_guide

        if self._guide is None:
            g = self.recipe.guide
            self._guide = build_guide(g.type, **g.params)
        return self._guide

    def guide_weights(self) -> str | None:
        """The recipe guide's weights identity (:func:`harness.guide.weights_id`), worked out once."""
        from harness.guide import weights_id

        if self._guide_weights is None:
            g = self.recipe.guide
            self._guide_weights = (weights_id(g.type, **g.params),)
        return self._guide_weights[0]

    def loss(self, method: dict[str, Any]):
        """The H2C loss of ``method`` (one per prompt/mode setting), on this process's device."""
        from harness.guide.h2c import H2CLoss

        settings = self.h2c_settings(method)
        key = stable_hash(settings)
        if key not in self._losses:
            self._losses[key] = H2CLoss(self.guide(), **settings).to(self.device)
        return self._losses[key]

