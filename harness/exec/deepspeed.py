"""One DeepSpeed launch (its own launcher, ``deepspeed --module``) whose ranks run every task together
with the DeepSpeed strategy (ZeRO stage and precision from the recipe's ``engine:``). Without CUDA the
launch runs on DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``, gloo)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from harness.exec.torchrun import launch, worker_tail
from harness.plan.graph import Plan, Task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def execute(plan: Plan, ctx, todo: list[Task], nproc_per_node: int = 1, nnodes: int = 1,
            launcher_args: list[str] | None = None, **_) -> list[str]:
    import torch

    run_dir = Path(ctx.store.root)
    tail = worker_tail(plan, run_dir)[1:]  # deepspeed --module takes the module name itself
    command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc_per_node),
               "--num_nodes", str(nnodes), "--master_port", str(free_port()), "--no_local_rank",
               *(launcher_args or []), "--module", *tail]
    env = {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}
    ctx.progress.line("launching: deepspeed " + " ".join(command[3:]))
    launch(command, f"deepspeed launch of {len(todo)} task(s) over {nproc_per_node * nnodes} process(es)", env)
    return [t.id for t in todo]
