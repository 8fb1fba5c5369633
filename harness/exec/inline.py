"""Run tasks in this process, in dependency order (every rank of a torchrun runs them together).

On a GPU with one rank, the scoring of a finished cell runs in a background thread while the next
training task runs, so the GPU does not idle while images are decoded and CPU metrics computed.
(With several ranks, scoring uses collectives, which must not interleave with training's.)
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from harness.engine.strategy import use_strategy
from harness.plan.graph import Plan, Task


def run_tasks(ctx, todo: list[Task]) -> list[str]:
    from harness.stages import run_task

    overlap = ctx.device.type == "cuda" and ctx.strategy.world == 1
    pending: list[Future] = []
    ran: list[str] = []
    with use_strategy(ctx.strategy), ThreadPoolExecutor(max_workers=1) as background:
        for task in todo:
            if overlap and task.kind == "score":  # nothing depends on a score task
                pending.append(background.submit(run_task, task, ctx))
            else:
                run_task(task, ctx)
            ran.append(task.id)
        for future in pending:
            future.result()
    return ran


def execute(plan: Plan, ctx, todo: list[Task], **options) -> list[str]:
    return run_tasks(ctx, todo)
