"""The training engine: resume equals an uninterrupted run, SIGTERM saves and stops, the curve survives."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.engine.loop import TrainLoop
from harness.engine.strategy import Strategy
from harness.errors import HarnessError, Preempted


class LinearStepper:
    """Least squares on random batches: deterministic given the loop's RNG and torch's."""

    def __init__(self, strategy: Strategy, dropout: bool = False):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5 if dropout else 0.0))
        self.trained = strategy.prepare(self.model, list(self.model.parameters()),
                                        lambda p: torch.optim.Adam(p, lr=1e-2))
        self.schedule = torch.optim.lr_scheduler.StepLR(self.trained.optimiser, 3, 0.5)
        self.stop_at: int | None = None

    def stateful(self):
        return {**self.trained.stateful(), "schedule": self.schedule}

    def step(self, step, rng):
        if step == self.stop_at:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step, as Slurm's would
        x = torch.randn(8, 4, generator=rng)
        loss = ((self.trained.module(x) - x.flip(1)) ** 2).mean()
        self.trained.backward(loss)
        self.trained.step()
        self.schedule.step()
        return {"loss": loss.item()}


def run(tmp_path, steps=10, stop_at=None, name="s", dropout=True, checkpoint_every=4):
    stepper = LinearStepper(Strategy("cpu"), dropout)
    stepper.stop_at = stop_at
    loop = TrainLoop("toy", steps, tmp_path / f"{name}.pt", seed=3, checkpoint_every=checkpoint_every, log_every=1)
    return stepper, loop.run(stepper)


def test_sigterm_saves_at_the_step_and_resume_equals_an_uninterrupted_run(tmp_path):
    reference, full = run(tmp_path, name="a")
    with pytest.raises(Preempted) as stopped:
        run(tmp_path, stop_at=6, name="b")
    assert stopped.value.step == 7  # the step that was running finishes, then the state is saved
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 7
    resumed, result = run(tmp_path, name="b")
    assert result.resumed_at == 7
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)  # dropout masks and batches drawn from the saved RNG states
    assert [p["step"] for p in result.curve] == list(range(1, 11))
    assert [p["loss"] for p in result.curve] == [p["loss"] for p in full.curve]


def test_a_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from pathlib import Path
        from test_engine import LinearStepper
        from harness.engine.loop import TrainLoop
        from harness.engine.strategy import Strategy
        stepper = LinearStepper(Strategy("cpu"), True)
        original = stepper.step
        def step(s, rng):
            if s == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(s, rng)
        stepper.step = step
        TrainLoop("toy", 10, Path({str(tmp_path / 'k.pt')!r}), seed=3, checkpoint_every=4).run(stepper)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / "k.pt", weights_only=False)["step"] == 4
    reference, _ = run(tmp_path, name="r")
    resumed, result = run(tmp_path, name="k")
    assert result.resumed_at == 4
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_non_finite_loss_names_the_stage_step_and_fix(tmp_path):
    stepper = LinearStepper(Strategy("cpu"))
    original = stepper.step
    stepper.step = lambda s, rng: {"loss": float("nan")} if s == 2 else original(s, rng)
    loop = TrainLoop("toy stage", 5, tmp_path / "n.pt", seed=0, nan_fix="lower toy.lr")
    with pytest.raises(HarnessError, match="toy stage loss is nan at step 2 -- fix: lower toy.lr"):
        loop.run(stepper)


def test_unreadable_state_is_a_clear_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(HarnessError, match="bad.pt cannot be read.*delete it"):
        TrainLoop("toy", 3, tmp_path / "bad.pt", seed=0).run(LinearStepper(Strategy("cpu")))


def test_probed_steps_are_left_out_of_the_time(tmp_path, monkeypatch):
    """The memory tracker runs on the probed steps only; their time is replaced by the median step."""
    from contextlib import contextmanager

    import harness.engine.loop as loop_module

    clock, probing = [0.0], []
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: clock[0])
    stepper = LinearStepper(Strategy("cpu"))
    original = stepper.step

    def step(s, rng):
        clock[0] += 100.0 if probing else 1.0  # a watched step is slowed by the tracker
        return original(s, rng)

    @contextmanager
    def slow_probe():
        probing.append(True)
        yield {"peak_mem_mb": 1.5}
        probing.clear()

    stepper.step = step
    result = TrainLoop("toy", 6, tmp_path / "p.pt", seed=0, memory_probe=slow_probe).run(stepper)
    assert result.peak_mem_mb == 1.5
    assert result.seconds == 6.0  # 4 unwatched steps of 1 s, and the 2 watched ones counted at the median
