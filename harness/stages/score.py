"""Scoring stage: a committed adapted model restored over every benchmark, scored, and recorded.

Per-image scores go to ``scores/<cell_id>/<benchmark>.csv``; the record (``cells/<cell_id>.json``)
is written last, atomically: its presence, whole and matching today's benchmark data and the
adaptation it scored, is what makes the cell finished.
"""

from __future__ import annotations

from typing import Any

from harness.plan.graph import Task
from harness.stages import adapt, pretrain
from harness.stages.context import StageContext
from harness.stages.record import build_record
from harness.store import read_json, sidecar
from harness.store.artifacts import commit_id


def _benchmarks(ctx: StageContext) -> dict[str, Any]:
    return {b.name: ctx.dataset(b.spec()) for b in ctx.recipe.benchmarks}


def inputs(task: Task, ctx: StageContext) -> dict[str, Any]:
    return {"benchmarks": {b.name: ctx.fingerprint(b.spec()) for b in ctx.recipe.benchmarks}}


def deps(task: Task, ctx: StageContext) -> dict[str, str | None]:
    return {"adapt": commit_id(ctx.store.adapted_dir(task.spec["adapt"]))}


def exists(task: Task, ctx: StageContext) -> bool:
    return ctx.store.record_path(task.key).exists()


def current(task: Task, ctx: StageContext) -> bool:
    record = ctx.store.read_record(task.key)
    if record is None:
        return False
    prov = record.get("provenance", {})
    return prov.get("inputs") == inputs(task, ctx) and prov.get("deps") == deps(task, ctx)


def run(task: Task, ctx: StageContext) -> dict[str, Any]:
    from harness.metrics.efficiency import efficiency_figures
    from harness.metrics.scoring import score_model
    from harness.provenance import environment, git_state, package_versions

    if task.id not in ctx.forced and current(task, ctx):
        return ctx.store.read_record(task.key)
    cell = ctx.plan.cell(task.spec["cell"])
    model, adapted = adapt.load(task.spec["adapt"], cell.backbone, ctx)
    update, finish = ctx.progress.task(task.label or task.id)
    strategy = ctx.strategy
    ev = ctx.recipe.eval
    scores = score_model(
        model, _benchmarks(ctx), ctx.metrics(), ctx.store.scores_dir(cell.id), ctx.device,
        max_side=ev.max_side, on_corrupt=ctx.recipe.on_corrupt, save_outputs=ev.save_outputs,
        shard=(strategy.rank, strategy.world), batch_size=ev.batch_size, tile=ev.tile, overlap=ev.overlap,
        workers=ev.workers, samples=ev.samples, relative_to=ctx.store.root,
    )
    finish()
    if not strategy.is_main:
        return {}
    pretrained = read_json(sidecar(ctx.store.pretrained_dir(cell.pretrain_id) / pretrain.WEIGHTS)) or {}
    record = build_record(
        cell=cell.model_dump(), recipe_name=ctx.recipe.name, recipe_hash=ctx.plan.recipe_hash, means=scores["means"],
        directions={**{n: None for n in ctx.metrics()}, **scores["directions"]},  # sanity metrics included
        efficiency=efficiency_figures(model, device=ctx.device),
        adapted={**adapted, "target_fingerprint": ctx.fingerprint(cell.target)},
        pretrained=pretrained, inputs=inputs(task, ctx), deps=deps(task, ctx),
        artifacts={
            "pretrained": f"pretrained/{cell.pretrain_id}/model.safetensors",
            "adapted": f"adapted/{cell.adapt_id}/model.safetensors",
            **{k: f"pretrained/{cell.pretrain_id}/{v}" for k, v in pretrained.get("artifacts", {}).items()},
            **{k: f"adapted/{cell.adapt_id}/{v}" for k, v in adapted.get("artifacts", {}).items()},
            "scores": f"scores/{cell.id}",
            "samples": scores["samples"],
        },
        environment={**git_state(), "packages": package_versions(), "environment": environment(),
                     "device": str(ctx.device), "strategy": strategy.describe()},
        notes={"allow_overlap": ctx.recipe.allow_overlap} if ctx.recipe.allow_overlap else None,
    )
    ctx.store.write_record(cell.id, record)
    return record


def commit_of(task: Task, ctx: StageContext) -> str | None:
    record = ctx.store.read_record(task.key)
    return record["provenance"].get("finished_at") if record else None
