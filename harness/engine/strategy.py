"""How a training step uses the processes of a run: one device, DDP, or DeepSpeed.

A stage never calls ``loss.backward()`` or ``optimiser.step()`` itself: it asks the strategy to
``prepare`` a model with the parameters to train and an optimiser factory, and gets back a
:class:`Prepared` whose ``module`` runs the forward pass and whose ``backward``/``step`` do the
rest. What the strategies do with it:

- :class:`SingleDevice`: the module itself and a plain torch optimiser.
- :class:`DataParallel`: ``torch.nn.parallel.DistributedDataParallel`` (NCCL on GPU, gloo on
  CPU) and a plain optimiser; every rank draws the same global batch and trains on its slice
  (``shard``), so N ranks compute the gradient one process would on the whole batch.
- DeepSpeed (``harness.engine.deepspeed``): ``deepspeed.initialize`` with ZeRO stage 1 or 2 and
  optional bf16/fp16; ``engine.backward``/``engine.step``, its own checkpoints.

Gradients taken with ``torch.autograd.grad`` (the bilevel hypergradient) bypass DDP's and
DeepSpeed's hooks; such code averages them over ranks with ``all_reduce_mean`` and so computes
its dot products over the global batch.

Training state is saved by rank 0 (all ranks hold the same state: same batches, averaged
gradients) with an atomic rename, and read by every rank on resume.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from harness.errors import HarnessError

OptimiserFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class Prepared:
    """A model ready to train under a strategy: forward with ``module``, then ``backward`` and ``step``."""

    module: nn.Module  # what to call for the forward pass (the model, DDP wrapper or DeepSpeed engine)
    model: nn.Module  # the plain model (its parameters are the trained ones)
    optimiser: Any
    params: list[nn.Parameter]
    clip: float | None = None
    _backward: Callable[[torch.Tensor], None] | None = None
    _step: Callable[[], None] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)

    def backward(self, loss: torch.Tensor) -> None:
        if self._backward is not None:
            self._backward(loss)
        else:
            loss.backward()

    def step(self) -> None:
        """Clip (if asked), step the optimiser, clear gradients."""
        if self._step is not None:
            self._step()
            return
        if self.clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)

    def stateful(self, prefix: str = "") -> dict[str, Any]:
        """Model and optimiser state to checkpoint (DeepSpeed adds its engine here)."""
        if self.extra_state:
            return {f"{prefix}{k}": v for k, v in self.extra_state.items()}
        return {f"{prefix}model": self.model, f"{prefix}optimiser": self.optimiser}


class Strategy:
    """Single-process behaviour; subclasses override what changes with several ranks."""

    name = "single"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rank, self.world = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "world": self.world, "device": str(self.device)}

    # --------------------------------------------------------------- training

    def prepare(self, model: nn.Module, params: list[nn.Parameter], optimiser: OptimiserFactory,
                clip: float | None = None) -> Prepared:
        model.to(self.device)
        return Prepared(model, model, optimiser(params), params, clip)

    def shard(self, batch: torch.Tensor | None) -> torch.Tensor | None:
        """This rank's slice of a global batch (the whole batch on one process)."""
        if batch is None or self.world == 1:
            return batch
        if len(batch) % self.world:
            raise HarnessError(f"global batch of {len(batch)} does not split over {self.world} ranks",
                               f"set the batch size to a multiple of {self.world}")
        return batch.chunk(self.world)[self.rank]

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> None:
        """Average ``tensors`` in place over ranks (nothing to do on one process)."""

    def any_preempted(self, mine: bool) -> bool:
        """True on every rank if any rank was asked to stop (so all stop at the same step)."""
        return mine

    def barrier(self) -> None:
        """Wait for every rank."""

    # --------------------------------------------------------------- state

    def save_state(self, path: Path, stateful: dict[str, Any], rng: torch.Generator, meta: dict[str, Any]) -> None:
        from harness.store import atomic_torch_save

        if self.is_main:
            atomic_torch_save(path, {**meta, "rng": rng.get_state(), "torch_rng": torch.get_rng_state(),
                                     **{name: obj.state_dict() for name, obj in stateful.items()}})
        self.barrier()

    def load_state(self, path: Path, stateful: dict[str, Any], rng: torch.Generator) -> dict[str, Any]:
        """Restore a saved state into ``stateful`` and ``rng``; the saved meta (``{}`` without a file)."""
        path = Path(path)
        if not path.is_file():
            return {}
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as err:  # a truncated or foreign file: say which, never crash with a pickle error
            raise HarnessError(f"training state {path} cannot be read ({type(err).__name__})",
                               "delete it to restart that stage from its beginning") from None
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        return {k: v for k, v in state.items() if k in ("step", "curve", "seconds", "stage")}


class DataParallel(Strategy):
    """DDP across the ranks of a torchrun (or DeepSpeed/Slurm) launch."""

    name = "ddp"

    def __init__(self, device: torch.device | str | None = None):
        from harness.launch.distributed import ensure_process_group

        self.rank, self.world = ensure_process_group()
        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        self.device = torch.device(device)

    def prepare(self, model: nn.Module, params: list[nn.Parameter], optimiser: OptimiserFactory,
                clip: float | None = None) -> Prepared:
        from torch.nn.parallel import DistributedDataParallel

        model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # frozen parameters (LoRA stages) are left out of DDP's buckets by requires_grad=False
        wrapped = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
        return Prepared(wrapped, model, optimiser(params), params, clip)

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n

    def any_preempted(self, mine: bool) -> bool:
        import torch.distributed as dist

        flag = torch.tensor([1.0 if mine else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def make_strategy(recipe) -> Strategy:
    """The strategy a recipe asks for in this process: ``auto`` is DDP under several ranks, else one device."""
    from harness.launch.distributed import rank_world
    from harness.stages.context import resolve_device

    name = recipe.engine.strategy
    device = resolve_device(recipe.device)
    world = rank_world()[1]
    if name == "deepspeed":
        from harness.engine.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy(device, zero_stage=recipe.engine.zero_stage, precision=recipe.engine.precision)
    if name == "ddp" or (name == "auto" and world > 1):
        if world == 1:
            return Strategy(device)  # DDP over one process is the single-device computation
        return DataParallel(device)
    return Strategy(device)


_CURRENT: list[Strategy] = []


def current_strategy() -> Strategy:
    """The strategy of the task being run (single CPU device outside any ``use_strategy`` block)."""
    return _CURRENT[-1] if _CURRENT else Strategy("cpu")


@contextmanager
def use_strategy(strategy: Strategy) -> Iterator[Strategy]:
    _CURRENT.append(strategy)
    try:
        yield strategy
    finally:
        _CURRENT.pop()
