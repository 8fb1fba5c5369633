"""DeepSpeed as a training strategy: ZeRO stage 1 or 2, fp32/bf16/fp16, DeepSpeed's own checkpoints.

``prepare`` hands the model, the parameters to train and our optimiser to ``deepspeed.initialize``
(so the optimiser's hyperparameters stay the stage's), and the step becomes
``engine.backward(loss)``, ``engine.step()``. DeepSpeed averages gradients over the data-parallel
ranks like DDP, so with every rank drawing the same global batch and training on its slice the
result equals one process on the whole batch (fp32; ZeRO partitions optimiser state (1) and
gradients (2), not the arithmetic). Training state: each engine saves its partitioned state with
``save_checkpoint`` into ``<state>.deepspeed/<name>/``, everything else (schedules, RNG, step) goes
into the strategy's usual state file. On a machine without CUDA, DeepSpeed runs on its CPU
accelerator (``DS_ACCELERATOR=cpu``, gloo), which the harness sets before importing it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.engine.strategy import DataParallel, OptimiserFactory, Prepared
from harness.errors import HarnessError


def _import_deepspeed():
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError:
        raise HarnessError("deepspeed is not installed", "pip install -e . (it is a dependency of the harness)") from None
    return deepspeed


class _EngineState:
    """A DeepSpeed engine seen as ``state_dict``-bearing: save/load go through its own checkpoints."""

    def __init__(self, engine, name: str):
        self.engine, self.name = engine, name
        self.folder: Path | None = None  # set by the strategy before each save/load

    def state_dict(self) -> dict[str, Any]:
        assert self.folder is not None
        self.engine.save_checkpoint(str(self.folder), tag=self.name)
        return {"tag": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.folder is not None
        path, _ = self.engine.load_checkpoint(str(self.folder), tag=state["tag"])
        if path is None:
            raise HarnessError(f"DeepSpeed checkpoint {self.folder / state['tag']} is missing",
                               "delete the training state to restart that stage")


class DeepSpeedStrategy(DataParallel):
    name = "deepspeed"

    def __init__(self, device: torch.device | str | None = None, zero_stage: int = 1, precision: str = "fp32"):
        self.deepspeed = _import_deepspeed()
        super().__init__(device)
        # wrap the process group DataParallel started in DeepSpeed's communication layer
        self.deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        self.zero_stage, self.precision = zero_stage, precision
        self._engines: list[_EngineState] = []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "zero_stage": self.zero_stage, "precision": self.precision}

    def config(self, batch_per_rank: int, clip: float | None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": batch_per_rank, "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": self.zero_stage}, "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if clip is not None:
            config["gradient_clipping"] = clip
        if self.precision == "bf16":
            config["bf16"] = {"enabled": True}
        elif self.precision == "fp16":
            config["fp16"] = {"enabled": True}
        return config

    def prepare(self, model: nn.Module, params: list[nn.Parameter], optimiser: OptimiserFactory,
                clip: float | None = None) -> Prepared:
        model.to(self.device)
        client = optimiser(params)  # ZeRO keeps its param_groups, so lr schedules on it still apply
        engine, _, _, _ = self.deepspeed.initialize(model=model, model_parameters=params, optimizer=client,
                                                    config=self.config(1, clip), dist_init_required=False)
        state = _EngineState(engine, f"engine{len(self._engines)}")
        self._engines.append(state)
        return Prepared(engine, model, client, params, clip, _backward=engine.backward, _step=engine.step,
                        extra_state={"engine": state})

    def _point_engines(self, path: Path) -> None:
        for state in self._engines:
            state.folder = Path(str(path) + ".deepspeed")

    def save_state(self, path: Path, stateful: dict[str, Any], rng: torch.Generator, meta: dict[str, Any]) -> None:
        self._point_engines(path)
        engines = {k: v for k, v in stateful.items() if isinstance(v, _EngineState)}
        tags = {k: v.state_dict() for k, v in engines.items()}  # every rank saves its partition
        rest = {k: v for k, v in stateful.items() if k not in engines}
        super().save_state(path, rest, rng, {**meta, "deepspeed": tags})

    def load_state(self, path: Path, stateful: dict[str, Any], rng: torch.Generator) -> dict[str, Any]:
        if not Path(path).is_file():
            return {}
        self._point_engines(path)
        engines = {k: v for k, v in stateful.items() if isinstance(v, _EngineState)}
        rest = {k: v for k, v in stateful.items() if k not in engines}
        meta = super().load_state(path, rest, rng)
        state = torch.load(path, map_location="cpu", weights_only=False)
        for name, engine in engines.items():
            engine.load_state_dict(state["deepspeed"][name])
        return meta
