"""The recipe as a graph of tasks: ``expand`` gives the cells, ``build_plan`` the tasks they need.

Pure functions of the recipe. A cell is one backbone x pretraining set x target x method x seed;
it needs three tasks (pretrain -> adapt -> score), and cells that share a pretrained checkpoint
or an adaptation share that task (tasks are deduplicated by key), so a 4-method recipe trains its
backbone once. A graft cell's adaptation also depends on its source method's adaptation. The plan
is written to ``RUN_DIR/plans/<recipe_hash>.json``, so any process (a local worker, a Slurm array
task) can run one task by its id.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from harness.plan import ids
from harness.recipe import Recipe

TaskKind = Literal["pretrain", "adapt", "score"]


class Cell(BaseModel):
    """One backbone x pretrain x target x method x seed combination, with its stable ids."""

    model_config = ConfigDict(frozen=True)
    index: int
    backbone: dict[str, Any]
    pretrain: dict[str, Any]
    target: dict[str, Any]
    method: dict[str, Any]
    seed: int
    labels: dict[str, str]
    pretrain_id: str
    adapt_id: str
    id: str
    group_id: str  # the cell without its seed: records with equal group_id are seeds of one row


@dataclass(frozen=True)
class Task:
    kind: TaskKind
    key: str
    spec: dict[str, Any] = field(default_factory=dict)  # what the stage needs beyond the recipe
    deps: tuple[str, ...] = ()  # task ids
    cells: tuple[str, ...] = ()  # ids of the cells that need this task
    trains: bool = True  # False for score tasks and for adaptations without training (none, graft)
    label: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.key}"


@dataclass
class Plan:
    recipe: Recipe
    recipe_hash: str
    cells: list[Cell]
    tasks: dict[str, Task] = field(default_factory=dict)  # by id, dependencies before dependents

    def levels(self) -> list[list[Task]]:
        """Tasks grouped so that every task's dependencies lie in earlier levels."""
        depth: dict[str, int] = {}
        for task in self.tasks.values():  # insertion order is topological
            depth[task.id] = 1 + max((depth[d] for d in task.deps), default=-1)
        levels: list[list[Task]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
        for task in self.tasks.values():
            levels[depth[task.id]].append(task)
        return levels

    def cell(self, cell_id: str) -> Cell:
        return next(c for c in self.cells if c.id == cell_id)

    def cells_of(self, task: Task) -> list[Cell]:
        wanted = set(task.cells)
        return [c for c in self.cells if c.id in wanted]

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe.name, "recipe_hash": self.recipe_hash,
                "cells": [c.model_dump() for c in self.cells],
                "tasks": [{**asdict(t), "id": t.id} for t in self.tasks.values()]}


def _methods(recipe: Recipe) -> list[tuple[dict[str, Any], str]]:
    """Every method spec after sweeps, with its display label."""
    methods = []
    for m in recipe.methods:
        names = list(m.sweep)
        for combo in itertools.product(*(m.sweep[n] for n in names)) if names else [()]:
            spec = {**m.spec(), **dict(zip(names, combo))}
            suffix = ",".join(f"{n}={v}" for n, v in zip(names, combo))
            methods.append((spec, f"{m.name}[{suffix}]" if suffix else m.name))
    return methods


def uses_loss(method: dict[str, Any]) -> bool:
    from harness.stages.adapt import build_method

    return bool(build_method(method).needs_loss)


def _adapt_keys(recipe: Recipe, pretrain: str, target: dict[str, Any], method: dict[str, Any],
                seed: int | None) -> list[tuple[dict[str, Any], str]]:
    """``(method, key)`` of the adaptation and of every ``source`` it builds on, sources first."""
    chain = []
    if isinstance(method.get("source"), dict):
        chain = _adapt_keys(recipe, pretrain, target, method["source"], seed)
    source = chain[-1][1] if chain else None
    return chain + [(method, ids.adapt_key(recipe, pretrain, target, method, seed, uses_loss(method), source))]


def expand(recipe: Recipe) -> list[Cell]:
    """The recipe's cells in a stable order, with the ids of ``harness.plan.ids``."""
    cells = []
    grid = itertools.product(recipe.backbones, recipe.pretrain, recipe.target, _methods(recipe), recipe.seeds)
    for index, (bb, pre, tgt, (method, method_label), seed) in enumerate(grid):
        def cell_ids(s: int | None) -> tuple[str, str, str]:
            pk = ids.pretrain_key(recipe, bb.spec(), pre.spec(), s)
            ak = _adapt_keys(recipe, pk, tgt.spec(), method, s)[-1][1]
            return pk, ak, ids.score_key(recipe, ak)

        pretrain_id, adapt_id, cell_id = cell_ids(seed)
        cells.append(Cell(
            index=index, backbone=bb.spec(), pretrain=pre.spec(), target=tgt.spec(), method=method, seed=seed,
            labels={"backbone": bb.name, "pretrain": pre.name, "target": tgt.name, "method": method_label},
            pretrain_id=pretrain_id, adapt_id=adapt_id, id=cell_id, group_id=cell_ids(None)[2],
        ))
    return cells


def build_plan(recipe: Recipe) -> Plan:
    """The cells and the deduplicated tasks they need, dependencies first."""
    cells = expand(recipe)
    plan = Plan(recipe, ids.recipe_hash(recipe), cells)

    def add(kind: TaskKind, key: str, spec: dict[str, Any], cell: Cell, deps: tuple[str, ...], trains: bool,
            label: str) -> str:
        task_id = f"{kind}:{key}"
        old = plan.tasks.get(task_id)
        plan.tasks[task_id] = (replace(old, cells=old.cells + (cell.id,)) if old is not None
                               else Task(kind, key, spec, deps, (cell.id,), trains, label))
        return task_id

    for cell in cells:
        base = "/".join(cell.labels[a] for a in ("backbone", "pretrain"))
        pre = add("pretrain", cell.pretrain_id, {"backbone": cell.backbone, "data": cell.pretrain, "seed": cell.seed},
                  cell, (), True, f"pretrain {base} seed {cell.seed}")
        previous, source = pre, None
        for method, key in _adapt_keys(recipe, cell.pretrain_id, cell.target, cell.method, cell.seed):
            spec = {"pretrain": cell.pretrain_id, "backbone": cell.backbone, "target": cell.target,
                    "method": method, "seed": cell.seed, "source": source}
            deps = (pre,) if previous == pre else (pre, previous)
            previous = add("adapt", key, spec, cell, deps, uses_loss(method),
                           f"adapt {base} {method['type']} seed {cell.seed}")
            source = key
        add("score", cell.id, {"cell": cell.id, "adapt": cell.adapt_id}, cell, (previous,), False,
            f"score {base} {cell.labels['method']} seed {cell.seed}")
    return plan
