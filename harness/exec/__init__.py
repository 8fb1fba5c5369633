"""Executors: where the tasks of a plan run. Each module has ``execute(plan, ctx, todo, **options)``:
``inline`` (this process), ``local`` (a pool of worker processes), ``torchrun`` and ``deepspeed``
(one multi-process launch that trains each cell together), ``slurm`` (job arrays)."""
