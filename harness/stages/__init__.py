"""The three stages of a cell, one module each: ``pretrain``, ``adapt``, ``score`` (with the pure
``record`` builder). Each has ``run(task, ctx)``, which commits its artifact, and ``current(task, ctx)``,
which says whether a committed artifact may be reused: built from today's data and from the
artifacts its dependencies hold now."""

from __future__ import annotations

from typing import Any

from harness.plan.graph import Task
from harness.stages.context import StageContext


def stage_of(task: Task):
    from harness.stages import adapt, pretrain, score

    return {"pretrain": pretrain, "adapt": adapt, "score": score}[task.kind]


def run_task(task: Task, ctx: StageContext) -> dict[str, Any]:
    return stage_of(task).run(task, ctx)


def statuses(ctx: StageContext, tolerant: bool = False) -> dict[str, str]:
    """``done``, ``stale`` (an artifact exists but its inputs changed) or ``todo`` for every task.

    A task whose dependency must run is not done either: it will be rebuilt on the new input.
    ``tolerant`` (``harness plan``): a dataset that cannot be read yet makes its tasks ``todo``
    instead of an error.
    """
    from harness.errors import HarnessError

    status: dict[str, str] = {}
    for task in ctx.plan.tasks.values():
        stage = stage_of(task)
        try:
            fresh = (task.id not in ctx.forced and all(status[d] == "done" for d in task.deps)
                     and stage.current(task, ctx))
        except HarnessError:
            if not tolerant:
                raise
            fresh = False
        status[task.id] = "done" if fresh else ("stale" if stage.exists(task, ctx) else "todo")
    return status
