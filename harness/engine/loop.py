"""One resumable training loop for every stage: pretraining, full FT, LoRA fine-tuning, the bilevel
search, BILD and the embedded guide.

A stage hands the loop a :class:`Stepper`: the objects whose state must survive a restart (model,
optimisers, schedules, a reweighting network, ...) and a ``step`` function that does one
optimisation step and returns the scalars to log. The loop owns everything else:

- the step counter and the data RNG (a ``torch.Generator`` passed to ``step``), plus torch's
  global CPU/CUDA RNG, all saved with the state, so a resumed run draws what an uninterrupted
  one would have drawn;
- a checkpoint every ``checkpoint_every`` steps, written through the strategy (atomic rename);
- preemption: SIGTERM or SIGUSR1 (what Slurm sends before it kills or requeues a job) sets a
  flag; at the end of the current step the loop saves and raises :class:`Preempted`, so a rerun
  (or a requeued job) resumes at that step, as many times as it takes;
- a non-finite loss stops the run with one line naming the stage, the step and the fix;
- the curve: ``{step, seconds, **scalars}`` every ``log_every`` steps (kept across resumes);
- progress callbacks, and the wall time of the steps themselves (``seconds``).

Peak memory on the CPU is counted by a tracker that follows every op (see
``metrics.efficiency.peak_memory``) and slows the steps it watches. The loop therefore runs it
only on the steps the stepper names as representative (``probe_steps``: by default the first two
steps of this process, which create the optimiser state and hold the largest activations), and
excludes those steps from ``seconds``, counting each at the median time of the unwatched steps.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol

import torch

from harness.errors import HarnessError, Preempted

ProgressFn = Callable[[int, int, dict[str, float]], None]


class Stepper(Protocol):
    """What a stage gives the loop."""

    def stateful(self) -> dict[str, Any]:
        """Name -> object with ``state_dict()``/``load_state_dict()`` to save and restore."""

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        """One optimisation step; returns scalars to log (``loss`` is checked to be finite)."""


@dataclass
class LoopResult:
    steps: int  # the loop's total steps (all done)
    resumed_at: int  # 0 for a fresh start
    seconds: float  # wall time of the steps, over every process life of this loop
    curve: list[dict[str, float]] = field(default_factory=list)
    peak_mem_mb: float | None = None  # CPU tracker's peak over the probed steps (None on CUDA/unprobed)


class _Preemption:
    """SIGTERM/SIGUSR1 -> a flag, installed only in the main thread and only while a loop runs."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s)

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Preemption":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def finite_or_fail(value: float, stage: str, step: int, fix: str) -> None:
    if not math.isfinite(value):
        raise HarnessError(f"{stage} loss is {value} at step {step}", fix)


class TrainLoop:
    """Run ``steps`` steps of a stepper, resumable from ``state_path``."""

    def __init__(self, stage: str, steps: int, state_path: Path, *, seed: int, checkpoint_every: int = 100,
                 log_every: int = 10, progress: ProgressFn | None = None, strategy=None,
                 nan_fix: str = "lower the learning rate",
                 memory_probe: Callable[[], ContextManager[dict]] | None = None):
        from harness.engine.strategy import current_strategy

        if steps < 0:
            raise HarnessError(f"{stage}: step count {steps} is negative", "give a step count >= 0")
        self.stage = stage
        self.steps = steps
        self.state_path = Path(state_path)
        self.seed = seed
        self.checkpoint_every = max(1, checkpoint_every)
        self.log_every = max(1, log_every)
        self.progress = progress
        self.strategy = strategy or current_strategy()
        self.nan_fix = nan_fix
        self.memory_probe = memory_probe

    def run(self, stepper: Stepper) -> LoopResult:
        rng = torch.Generator().manual_seed(self.seed)
        stateful = stepper.stateful()
        meta = self.strategy.load_state(self.state_path, stateful, rng)
        start = int(meta.get("step", 0))
        if start:
            from harness.ui.progress import emit

            emit(f"{self.stage}: resuming at step {start} of {self.steps} from {self.state_path}")
        curve: list[dict[str, float]] = list(meta.get("curve", []))
        seconds = float(meta.get("seconds", 0.0))
        probe = set(getattr(stepper, "probe_steps", lambda s: {s, s + 1})(start)) if self.memory_probe else set()
        watched: list[float] = []
        unwatched: list[float] = []
        peak: float | None = None

        def total() -> float:  # watched steps count at the median unwatched step time
            times = unwatched or watched
            return seconds + (statistics.median(times) if times else 0.0) * len(watched)

        with _Preemption() as preemption:
            for step in range(start, self.steps):
                tracked = step in probe
                with (self.memory_probe() if tracked else nullcontext({})) as mem:
                    began = time.perf_counter()
                    info = stepper.step(step, rng)
                    took = time.perf_counter() - began
                if tracked:
                    watched.append(took)
                    if mem.get("peak_mem_mb") is not None:
                        peak = max(peak or 0.0, mem["peak_mem_mb"])
                else:
                    unwatched.append(took)
                    seconds += took
                if "loss" in info:
                    finite_or_fail(float(info["loss"]), self.stage, step, self.nan_fix)
                done = step + 1
                if done % self.log_every == 0 or done == self.steps:
                    curve.append({"step": done, "seconds": total(), **info})
                if self.progress is not None:
                    self.progress(done, self.steps, info)
                stop = preemption.requested or self.strategy.any_preempted(preemption.requested)
                if (done % self.checkpoint_every == 0 and done < self.steps) or (stop and done < self.steps):
                    self._save(done, curve, total(), rng, stateful)
                    if stop:
                        raise Preempted(self.stage, done, self.state_path)
        return LoopResult(self.steps, start, total(), curve, peak)

    def _save(self, step: int, curve: list, seconds: float, rng: torch.Generator, stateful: dict[str, Any]) -> None:
        self.strategy.save_state(self.state_path, stateful, rng,
                                 {"step": step, "curve": curve, "seconds": seconds, "stage": self.stage})


@contextmanager
def rng_state_kept() -> Iterator[None]:
    """Run a block without disturbing torch's global RNG (e.g. a probe or a validation pass)."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)
