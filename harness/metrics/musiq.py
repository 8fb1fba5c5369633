"""MUSIQ (Ke et al., ICCV 2021) via pyiqa on the batch's device, from a local checkpoint only (never downloads)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError
from harness.metrics.base import MetricSpec
from harness.metrics.iqa import PyiqaMetric
from harness.registry import METRICS

# pyiqa's checkpoint file name for each training set, as stored in its cache.
CHECKPOINTS = {
    "koniq10k": "musiq_koniq_ckpt-e95806b9.pth",
    "spaq": "musiq_spaq_ckpt-358bb6af.pth",
    "paq2piq": "musiq_paq2piq_ckpt-364c0c84.pth",
    "ava": "musiq_ava_ckpt-e8d3f067.pth",
}
_PYIQA_NAMES = {"koniq10k": "musiq", "spaq": "musiq-spaq", "paq2piq": "musiq-paq2piq", "ava": "musiq-ava"}


def pyiqa_cache() -> Path:
    """pyiqa's weight cache: ``$TORCH_HOME/hub/pyiqa`` (torch's hub dir)."""
    import torch

    return Path(torch.hub.get_dir()) / "pyiqa"


@METRICS.register("musiq")
def musiq(weights: Path | None = None, trained_on: str = "koniq10k") -> PyiqaMetric:
    """MUSIQ quality (higher is better) from ``weights`` or pyiqa's cache; missing -> HarnessError."""
    if trained_on not in CHECKPOINTS:
        raise HarnessError(f"musiq: unknown trained_on {trained_on!r}", f"use one of: {', '.join(CHECKPOINTS)}")
    path = Path(weights).expanduser() if weights is not None else pyiqa_cache() / CHECKPOINTS[trained_on]
    if not path.is_file():
        raise HarnessError(f"musiq: weights file {path} not found (no downloads)",
                           f"download {CHECKPOINTS[trained_on]} and set metrics.musiq.weights to its path "
                           f"(or put it in {pyiqa_cache()})")
    hi = 10.0 if trained_on == "ava" else 100.0
    spec = MetricSpec("musiq", lower_better=False, needs_reference=False, score_range=(0.0, hi),
                      description=f"MUSIQ trained on {trained_on} (pyiqa), weights {path.name}")
    options = {"pretrained_model_path": os.fspath(path)}
    if trained_on == "ava":
        options["num_class"] = 10
    metric = PyiqaMetric(spec, _PYIQA_NAMES[trained_on], **options)
    try:
        metric.net()  # load now, so a bad file fails at build time, not mid-evaluation
    except Exception as err:  # torch/pickle raise many types for a wrong file
        raise HarnessError(f"musiq: cannot load weights {path}: {err.__class__.__name__}: {err}",
                           "set metrics.musiq.weights to a pyiqa MUSIQ checkpoint") from None
    return metric
