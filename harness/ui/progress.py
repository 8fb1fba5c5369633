"""Progress of a run: rich bars on a terminal, timestamped lines in a batch job, and ``run.log``.

When stdout is a terminal the user sees live bars. When it is not (a Slurm job, ``> log.txt``),
each running task prints a plain line when it starts, every ``interval`` seconds while it runs,
and when it ends; under several ranks each line starts with the rank. Every line also goes to
``RUN_DIR/run.log`` (appended, one per run process), so a run's history survives its terminal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressFn = Callable[[int, int, dict[str, float]], None]


_SINKS: list[Callable[[str], None]] = []
_ACTIVE: list["RunProgress"] = []


def active_progress() -> "RunProgress | None":
    """The run's progress while one is entered (so code deep in a task, e.g. training the embedded
    guide, reports like a stage does: bars on a terminal, lines in a batch log)."""
    return _ACTIVE[-1] if _ACTIVE else None


def emit(text: str) -> None:
    """An event line from code that has no progress object (e.g. the engine's "resuming at step N")."""
    if _SINKS:
        _SINKS[-1](text)
    else:
        print(f"{_stamp()} {text}", file=sys.stderr, flush=True)


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _info(info: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in info.items() if isinstance(v, (int, float)))


class RunProgress:
    """One per process of a run; ``task(...)`` gives a progress callback for a training loop."""

    def __init__(self, log_path: Path | None = None, interval: float | None = None, stream: TextIO | None = None,
                 live: bool | None = None):
        self.stream = stream or sys.stdout
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        self.prefix = os.environ.get("HARNESS_LOG_PREFIX", "") + (f"[rank {rank}] " if world > 1 else "")
        if live is None:  # workers of a pool print lines even on a terminal: several bars would garble it
            live = self.stream.isatty() and os.environ.get("HARNESS_PROGRESS", "auto") != "lines"
        self.live = live
        self.interval = float(os.environ.get("HARNESS_LOG_INTERVAL", "30")) if interval is None else interval
        self._log = None
        if log_path is not None:
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(log_path, "a", buffering=1)
            except OSError:
                self._log = None  # a read-only run folder fails later with its own clear message
        self._lock = threading.Lock()
        self._bars: Progress | None = None
        if self.live:
            self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=Console(file=self.stream), transient=True)

    def __enter__(self) -> "RunProgress":
        if self._bars is not None:
            self._bars.start()
        _SINKS.append(self.line)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.line in _SINKS:
            _SINKS.remove(self.line)
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def line(self, text: str) -> None:
        """A timestamped event line: printed (above the bars on a terminal) and logged."""
        message = f"{_stamp()} {self.prefix}{text}"
        with self._lock:
            if self._bars is not None:
                self._bars.console.print(message, markup=False, highlight=False, soft_wrap=True)
            else:
                print(message, file=self.stream, flush=True)
            if self._log is not None:
                self._log.write(message + "\n")

    def task(self, description: str) -> tuple[ProgressFn, Callable[[], None]]:
        """``(update, finish)`` for one loop: ``update(done, total, info)`` as the engine calls it."""
        started = time.monotonic()
        state = {"last": started, "done": 0, "total": 0}
        bar = self._bars.add_task(description, total=None) if self._bars is not None else None
        self.line(f"{description}: started")

        def update(done: int, total: int, info: dict[str, float]) -> None:
            state.update(done=done, total=total)
            if self._bars is not None and bar is not None:
                self._bars.update(bar, completed=done, total=total, description=f"{description} {_info(info)}")
            now = time.monotonic()
            if now - state["last"] >= self.interval:
                state["last"] = now
                rate = done / max(now - started, 1e-9)
                left = (total - done) / rate if rate > 0 else float("nan")
                self.line(f"{description}: step {done}/{total} {_info(info)} ({rate:.2f} steps/s, ~{left:.0f}s left)")

        def finish() -> None:
            if self._bars is not None and bar is not None:
                self._bars.remove_task(bar)
            steps = f" {state['done']}/{state['total']} steps" if state["total"] else ""
            self.line(f"{description}: done{steps} in {time.monotonic() - started:.1f}s")

        return update, finish
