"""The one policy of what invalidates what: the cache key of every stage.

A key hashes everything that can change that stage's output and nothing else:

- pretraining: backbone spec, pretraining data spec (with ``reweight``), the *pretraining*
  budget (steps, lr, batch, patch), numerics (precision, memory format; and the backbone's own
  channels-last restore on the CPU, ``register_backbone``), the seed, and the guide for backbones
  whose forward reads it (VLU-Net);
- adaptation: the pretraining key, target data and split, the method spec (with its ``h2c``
  overrides), the adaptation budget (batch, patch), numerics, the seed, the guide only for
  methods that use a loss, and the key of a ``source`` method's adaptation (grafting);
- scoring (the cell id): the adaptation key, benchmarks, metrics, the sanity metrics every score
  adds, and the settings that change scores (``eval.max_side``, and ``eval.tile``/``eval.overlap``
  when tiling is on).

Labels, the run folder, the strategy (single/DDP/DeepSpeed), ZeRO stage, workers, the scoring batch
size and the number of sample images are not part of any key. The content of the data is not
either: it is fingerprinted when a task runs and checked against what an artifact recorded
(``store.artifacts.is_fresh``), so a changed image makes the artifacts built on it stale rather
than giving them new ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.hashing import stable_hash

if TYPE_CHECKING:
    from harness.recipe import Recipe


def recipe_hash(recipe: "Recipe") -> str:
    """The recipe's identity in a shared run folder (its ``out`` is where it ran, not what it is)."""
    return stable_hash(recipe.model_dump(mode="json", exclude={"out"}))


def _card(backbone: str):
    from harness.models import BACKBONE_CARDS  # importing the package registers every built-in backbone

    return BACKBONE_CARDS.get(backbone)


def reads_guide(backbone: str) -> bool:
    """Whether a registered backbone's forward reads the recipe's guide (VLU-Net's image prompts)."""
    card = _card(backbone)
    return bool(card and card.needs_guide)


def restores_channels_last(backbone: str) -> bool:
    """Whether a registered backbone restores in channels-last on the CPU (``register_backbone``)."""
    card = _card(backbone)
    return bool(card and card.channels_last)


def pretrain_key(recipe: "Recipe", backbone: dict[str, Any], data: dict[str, Any], seed: int | None) -> str:
    key = {"backbone": backbone, "data": data, "budget": recipe.budget.pretraining(),
           "numerics": recipe.engine.numerics(), "seed": seed}
    if restores_channels_last(backbone["type"]):  # another summation order than the NCHW checkpoints before it
        key["cpu_layout"] = "channels_last"
    if reads_guide(backbone["type"]):  # the guide shapes such a backbone's weights (its prompts do not)
        key["guide"] = {"type": recipe.guide.type, **recipe.guide.params}
    return stable_hash(key)


def adapt_key(recipe: "Recipe", pretrain: str, target: dict[str, Any], method: dict[str, Any], seed: int | None,
              uses_loss: bool, source: str | None = None) -> str:
    return stable_hash({
        "pretrain": pretrain, "target": target, "split": recipe.target_split, "method": method,
        "guide": recipe.guide.spec() if uses_loss else None, "budget": recipe.budget.adaptation(),
        "numerics": recipe.engine.numerics(), "seed": seed, "source": source,
    })


def scoring_spec(recipe: "Recipe") -> dict[str, Any]:
    ev = recipe.eval
    # tiling changes what is scored; keyed only when on, so untiled cells keep their ids
    tiles = {"tile": ev.tile, "overlap": ev.overlap} if ev.tile is not None else {}
    from harness.metrics.sanity import SANITY_METRICS  # every score adds them: a record from before one lacks it

    return {"benchmarks": [b.spec() for b in recipe.benchmarks], "metrics": [m.spec() for m in recipe.metrics],
            "max_side": ev.max_side, "sanity": list(SANITY_METRICS), **tiles}


def score_key(recipe: "Recipe", adapt: str) -> str:
    return stable_hash({"adapt": adapt, "scoring": scoring_spec(recipe)})
