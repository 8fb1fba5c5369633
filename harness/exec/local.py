"""A pool of worker processes on this machine: one per GPU (or per ``gpus_per_cell`` GPUs), or N on the CPU.

The parent walks the plan: a task starts as soon as its dependencies are done and a slot is free,
as ``harness worker RUN_DIR --plan H --task ID`` in a child process (``torchrun --standalone`` when a
cell takes several GPUs). GPU slots pin their devices with ``CUDA_VISIBLE_DEVICES``; each GPU slot
also has a scoring lane, so a finished cell is scored while the next cell trains on the same GPU.
CPU workers each get their share of the cores (``HARNESS_THREADS``). A failed or killed task stops
the pool from starting new ones; what finished is kept, and a rerun resumes the interrupted task
from its last checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import EXIT_PREEMPTED, HarnessError
from harness.plan.graph import Plan, Task


@dataclass
class Slot:
    name: str
    env: dict[str, str]
    lane: str  # "any", "train" or "score"
    nproc: int = 1
    busy: tuple[subprocess.Popen, Task, Path] | None = None

    def takes(self, task: Task) -> bool:
        return self.lane == "any" or (self.lane == "score") == (task.kind == "score")


def cpu_share(processes: int) -> int:
    from harness.launch.threads import thread_share

    return thread_share(processes).threads


def make_slots(workers: int, gpus_per_cell: int) -> list[Slot]:
    import torch

    gpus = torch.cuda.device_count()
    if gpus and gpus_per_cell:
        if gpus_per_cell > gpus:
            raise HarnessError(f"resources.gpus_per_cell={gpus_per_cell} but this machine has {gpus} GPU(s)",
                               f"set resources.gpus_per_cell to at most {gpus}")
        slots = []
        for i in range(gpus // gpus_per_cell):
            devices = ",".join(str(d) for d in range(i * gpus_per_cell, (i + 1) * gpus_per_cell))
            env = {"CUDA_VISIBLE_DEVICES": devices, "HARNESS_THREADS": str(cpu_share(2 * (gpus // gpus_per_cell)))}
            slots.append(Slot(f"gpu{devices}", env, "train", gpus_per_cell))
            slots.append(Slot(f"gpu{devices}-score", {**env}, "score", 1))
        return slots
    threads = str(cpu_share(workers))
    return [Slot(f"w{i}", {"HARNESS_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                           "CUDA_VISIBLE_DEVICES": ""}, "any") for i in range(workers)]


def worker_command(run_dir: Path, recipe_hash: str, task: Task, nproc: int) -> list[str]:
    tail = ["-m", "harness.cli", "worker", str(run_dir), "--plan", recipe_hash, "--task", task.id]
    if nproc > 1 and task.kind != "score":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *tail]
    return [sys.executable, *tail]


def execute(plan: Plan, ctx, todo: list[Task], workers: int = 1, **_) -> list[str]:
    if workers < 1:
        raise HarnessError(f"--workers {workers}", "give at least 1 worker")
    run_dir = Path(ctx.store.root)
    slots = make_slots(workers, plan.recipe.resources.gpus_per_cell)
    logs = run_dir / "work" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting = {t.id: t for t in todo}
    done: set[str] = {t for t in plan.tasks if t not in waiting}
    ran: list[str] = []
    failures: list[str] = []
    progress = ctx.progress
    progress.line(f"local pool: {len(slots)} slot(s) ({', '.join(s.name for s in slots)}), {len(todo)} task(s)")
    while waiting or any(s.busy for s in slots):
        for slot in slots:  # reap
            if slot.busy is None:
                continue
            proc, task, err_path = slot.busy
            if proc.poll() is None:
                continue
            slot.busy = None
            if proc.returncode == 0:
                done.add(task.id)
                ran.append(task.id)
                progress.line(f"[{slot.name}] {task.label}: finished ({len(ran)}/{len(todo)})")
            else:
                failures.append(_failure(task, proc.returncode, err_path))
                progress.line(f"[{slot.name}] {failures[-1]}")
        if not failures:
            for slot in slots:  # start what is ready
                if slot.busy is not None:
                    continue
                ready = next((t for t in waiting.values() if slot.takes(t) and all(d in done for d in t.deps)), None)
                if ready is None:
                    continue
                del waiting[ready.id]
                err_path = logs / f"{ready.id.replace(':', '-')}.err"
                env = {**os.environ, **slot.env, "HARNESS_PROGRESS": "lines", "HARNESS_LOG_PREFIX": f"[{slot.name}] "}
                with open(err_path, "w") as err:
                    proc = subprocess.Popen(worker_command(run_dir, plan.recipe_hash, ready, slot.nproc),
                                            env=env, stderr=err)
                slot.busy = (proc, ready, err_path)
        elif not any(s.busy for s in slots):
            break
        time.sleep(0.2)
    if failures:
        raise HarnessError(f"{len(failures)} task(s) failed; finished work is kept: {failures[0]}",
                           "fix the cause and rerun the same command (interrupted tasks resume from their checkpoint)")
    return ran


def _failure(task: Task, code: int, err_path: Path) -> str:
    lines = [line for line in err_path.read_text(errors="replace").splitlines() if line.strip()]
    if code == EXIT_PREEMPTED:
        why = "stopped by SIGTERM/SIGUSR1 with its state saved"
    elif code < 0:
        why = f"killed by signal {-code}"
    else:
        why = f"exit code {code}"
    last = next((line for line in reversed(lines) if line.startswith(("error:", "stopped:"))), lines[-1] if lines else "")
    return f"{task.label}: {why}" + (f" ({last})" if last else "") + f"; log {err_path}"
