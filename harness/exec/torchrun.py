"""One torchrun launch whose ranks run every task together: each cell trains with DDP over all
processes and scores with its images sharded across them. The parent waits and writes the report.

``--nnodes N`` needs a rendezvous: pass torchrun's own options through ``--launcher-arg`` (e.g.
``--launcher-arg=--rdzv-endpoint=host:29500``) and start the same command on every node, or use
``--launcher slurm``, whose array tasks start torchrun themselves.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.errors import EXIT_PREEMPTED, HarnessError
from harness.plan.graph import Plan, Task


def launch(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    import os

    code = subprocess.run(command, env={**os.environ, **(env or {})}).returncode
    if code == EXIT_PREEMPTED:
        raise HarnessError(f"{what} was stopped by SIGTERM/SIGUSR1; its state is saved", "rerun the same command to resume")
    if code != 0:
        raise HarnessError(f"{what} failed (exit code {code}); finished work is kept",
                           "read the ranks' error lines above, fix the cause and rerun the same command")


def worker_tail(plan: Plan, run_dir: Path) -> list[str]:
    return ["-m", "harness.cli", "worker", str(run_dir), "--plan", plan.recipe_hash, "--all"]


def execute(plan: Plan, ctx, todo: list[Task], nproc_per_node: int = 1, nnodes: int = 1,
            launcher_args: list[str] | None = None, **_) -> list[str]:
    run_dir = Path(ctx.store.root)
    nodes = ["--standalone"] if nnodes == 1 else ["--nnodes", str(nnodes)]
    command = [sys.executable, "-m", "torch.distributed.run", *nodes, "--nproc-per-node", str(nproc_per_node),
               *(launcher_args or []), *worker_tail(plan, run_dir)]
    ctx.progress.line("launching: " + " ".join(command[2:]))
    launch(command, f"torchrun of {len(todo)} task(s) over {nproc_per_node * nnodes} process(es)")
    return [t.id for t in todo]
