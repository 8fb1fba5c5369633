"""``harness worker``: run named tasks of a plan the parent wrote into the run folder.

Every executor ends here (a pool worker, each rank of a torchrun or DeepSpeed launch, a Slurm array
task), so a task behaves the same wherever it runs. A task whose dependencies are not done is an
error (the scheduler ordered them); a task that is already done is skipped, so a requeued job may
run again any number of times.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError


def work(run_dir: Path, recipe_hash: str, task_ids: list[str], all_tasks: bool = False) -> list[str]:
    from harness import runner
    from harness.exec.inline import run_tasks
    from harness.launch.distributed import ensure_process_group, rank_world
    from harness.stages import statuses

    threads = os.environ.get("HARNESS_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if rank_world()[1] > 1:
        ensure_process_group()
    plan = runner.load_stored_plan(Path(run_dir), recipe_hash)
    ctx = runner.context(plan, run_dir)
    with ctx.progress:
        status = statuses(ctx)
        if all_tasks:
            tasks = [plan.tasks[t] for t, s in status.items() if s != "done"]
        else:
            unknown = [t for t in task_ids if t not in plan.tasks]
            if unknown:
                raise HarnessError(f"task {unknown[0]} is not in plan {recipe_hash}", "use a task id from the plan file")
            tasks = [plan.tasks[t] for t in task_ids if status[t] != "done"]
        for task in tasks:
            waiting = [d for d in task.deps if status[d] != "done" and d not in {t.id for t in tasks}]
            if waiting:
                raise HarnessError(f"{task.label}: dependency {plan.tasks[waiting[0]].label} is not done",
                                   "run the tasks in plan order (the executor orders them by level)")
        return run_tasks(ctx, tasks)
