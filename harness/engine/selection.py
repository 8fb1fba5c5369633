"""The strategy a recipe asks for: one device, DDP or DeepSpeed (kept apart from the strategies so
that they do not import DeepSpeed's, which builds on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.engine.deepspeed import DeepSpeedStrategy
from harness.engine.strategy import DataParallel, Strategy, resolve_device
from harness.launch.distributed import rank_world

if TYPE_CHECKING:
    from harness.recipe import Recipe


def make_strategy(recipe: Recipe) -> Strategy:
    """The strategy a recipe asks for in this process: ``auto`` is DDP under several ranks, else one device."""
    engine = recipe.engine
    name, numerics = engine.strategy, engine.numerics()
    device = resolve_device(recipe.device)
    world = rank_world()[1]
    if name == "deepspeed":
        return DeepSpeedStrategy(device, zero_stage=engine.zero_stage, **numerics)
    if world > 1 and name in ("ddp", "auto"):
        return DataParallel(device, **numerics)
    return Strategy(device, **numerics)  # DDP over one process is the single-device computation
