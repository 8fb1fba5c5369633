"""The one policy of what invalidates what: the cache key of every stage.

A key hashes everything that can change that stage's output and nothing else:

- pretraining: backbone spec, pretraining data spec (with ``reweight``), the *pretraining*
  budget (steps, lr, batch, patch), numerics (precision, memory format) and the seed;
- adaptation: the pretraining key, target data and split, the method spec (with its ``h2c``
  overrides), the adaptation budget (batch, patch), numerics, the seed, the guide only for
  methods that use a loss, and the key of a ``source`` method's adaptation (grafting);
- scoring (the cell id): the adaptation key, benchmarks, metrics and the settings that change
  scores (``eval.max_side``).

Labels, the run folder, the strategy (single/DDP/DeepSpeed), ZeRO stage, workers and the number of
sample images are not part of any key. The content of the data is not either: it is fingerprinted
when a task runs and checked against what an artifact recorded (``store.artifacts.is_fresh``), so
a changed image makes the artifacts built on it stale rather than giving them new ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.recipe import Recipe


def stable_hash(obj: Any, length: int = 12) -> str:
    """Short sha256 of the canonical JSON form of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def recipe_hash(recipe: "Recipe") -> str:
    """The recipe's identity in a shared run folder (its ``out`` is where it ran, not what it is)."""
    return stable_hash(recipe.model_dump(mode="json", exclude={"out"}))


def pretrain_key(recipe: "Recipe", backbone: dict[str, Any], data: dict[str, Any], seed: int | None) -> str:
    return stable_hash({"backbone": backbone, "data": data, "budget": recipe.budget.pretraining(),
                        "numerics": recipe.engine.numerics(), "seed": seed})


def adapt_key(recipe: "Recipe", pretrain: str, target: dict[str, Any], method: dict[str, Any], seed: int | None,
              uses_loss: bool, source: str | None = None) -> str:
    return stable_hash({
        "pretrain": pretrain, "target": target, "split": recipe.target_split, "method": method,
        "guide": recipe.guide.spec() if uses_loss else None, "budget": recipe.budget.adaptation(),
        "numerics": recipe.engine.numerics(), "seed": seed, "source": source,
    })


def scoring_spec(recipe: "Recipe") -> dict[str, Any]:
    return {"benchmarks": [b.spec() for b in recipe.benchmarks], "metrics": [m.spec() for m in recipe.metrics],
            "max_side": recipe.eval.max_side}


def score_key(recipe: "Recipe", adapt: str) -> str:
    return stable_hash({"adapt": adapt, "scoring": scoring_spec(recipe)})
