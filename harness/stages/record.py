"""The record of a finished cell, built by a pure function from what the stages produced."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def build_record(*, cell: dict[str, Any], recipe_name: str, recipe_hash: str, means: dict[str, Any],
                 directions: dict[str, bool | None], efficiency: dict[str, Any], adapted: dict[str, Any],
                 pretrained: dict[str, Any], inputs: dict[str, Any], deps: dict[str, Any],
                 artifacts: dict[str, Any], environment: dict[str, Any], finished_at: datetime | None = None,
                 notes: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON-able record.

    ``adapted``/``pretrained`` are the sidecars of the committed models; ``inputs`` the data
    fingerprints the scores were computed on and ``deps`` the commit of the adaptation scored
    (both checked before a record is reused); ``environment`` the git state, package versions,
    machine and strategy.
    """
    finished_at = finished_at or datetime.now(timezone.utc)
    data_hashes = {"pretrain": pretrained.get("data_fingerprint"), "target": adapted.get("target_fingerprint"),
                   **{f"benchmark:{k}": v for k, v in inputs.get("benchmarks", {}).items()}}
    return {
        "cell": cell,
        "provenance": {
            **environment, "data_hashes": data_hashes, "guide": adapted.get("guide"), "recipe": recipe_name,
            "recipe_hash": recipe_hash, "pretrain_seconds": pretrained.get("train_seconds"),
            "finished_at": finished_at.isoformat(timespec="seconds"), "inputs": inputs, "deps": deps,
            **(notes or {}),
        },
        "metrics": means,
        "metric_directions": directions,
        "efficiency": {
            "train_seconds": adapted.get("train_seconds"),
            "params_trainable": adapted.get("params_trainable"),
            "params_unmerged": adapted.get("params_unmerged"),
            "peak_mem_mb": adapted.get("peak_mem_mb"),
            **efficiency,
        },
        "method_info": adapted.get("info", {}),
        "curves": {"pretrain": pretrained.get("curve", []), **(adapted.get("curves") or {})},
        "artifacts": artifacts,
    }
