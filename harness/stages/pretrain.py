"""Pretraining stage: a backbone trained on a paired synthetic set, deployed and committed.

The artifact is ``pretrained/<key>/model.safetensors`` (deploy form) with a sidecar describing it;
resumable state lives in ``work/pretrain/<key>/`` until the commit.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from harness.data.sequence import ImageSequence
from harness.errors import HarnessError
from harness.models.base import build_backbone
from harness.plan.graph import Task
from harness.registry import REWEIGHTS
from harness.stages.context import StageContext
from harness.store import load_weights, read_json, save_weights, sidecar
from harness.store.artifacts import artifact_meta, commit, commit_id, is_fresh, staging_dir

WEIGHTS = "model.safetensors"


def backbone_options(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in ("type", "variant")}


def new_backbone(spec: dict[str, Any], ctx: StageContext, recorded_guide: dict[str, Any] | None = None,
                 where: str = ""):
    """The backbone (training form); one that reads the guide (VLU-Net) gets the recipe's attached, and
    with ``where`` (a checkpoint being loaded) it must be the guide that checkpoint recorded."""
    model = build_backbone(spec["type"], spec.get("variant", "full"), **backbone_options(spec))
    if model.needs_guide:
        from harness.guide import check_guide

        if where:
            check_guide(recorded_guide, guide_identity(ctx), where)
        model.attach_guide(ctx.guide())
    return model


def guide_identity(ctx: StageContext) -> dict[str, Any]:
    """What a guide-reading backbone's checkpoint records about its guide (rebuildable spec, sha256)."""
    from harness.guide import guide_identity as identity

    g = ctx.recipe.guide
    return identity(ctx.guide(), {"type": g.type, **g.params})


def guide_record(model, ctx: StageContext) -> dict[str, Any]:
    return {"backbone_guide": guide_identity(ctx)} if model.needs_guide else {}


def inputs(task: Task, ctx: StageContext) -> dict[str, Any]:
    return {"data": ctx.fingerprint(task.spec["data"])}


def exists(task: Task, ctx: StageContext) -> bool:
    return artifact_meta(ctx.store.pretrained_dir(task.key)) is not None


def current(task: Task, ctx: StageContext) -> bool:
    return is_fresh(artifact_meta(ctx.store.pretrained_dir(task.key)), inputs(task, ctx), {})


def load(key: str, spec: dict[str, Any], ctx: StageContext) -> torch.nn.Module:
    """The committed deploy-form model of pretraining ``key``, on this process's device, in eval mode."""
    path = ctx.store.pretrained_dir(key) / WEIGHTS
    model = new_backbone(spec, ctx, (read_json(sidecar(path)) or {}).get("backbone_guide"), str(path)).deploy()
    load_weights(path, model)
    return model.to(ctx.device).eval()


def run(task: Task, ctx: StageContext) -> dict[str, Any]:
    from harness.pretrain.supervised import pretrain_supervised

    folder = ctx.store.pretrained_dir(task.key)
    if task.id not in ctx.forced and current(task, ctx):
        return artifact_meta(folder)
    spec, budget = task.spec, ctx.recipe.budget.pretraining()
    data = ctx.dataset(spec["data"])
    if not data.has_reference:
        raise HarnessError(f"pretraining set {spec['data'].get('label') or spec['data']['type']} has no clear images",
                           "pretrain needs a paired dataset (hazy + clear)")
    work = ctx.store.work_dir("pretrain", task.key)
    torch.manual_seed(spec["seed"])
    model = new_backbone(spec["backbone"], ctx)
    update, finish = ctx.progress.task(task.label or task.id)
    hazy, clear = ImageSequence([p.hazy for p in data.pairs]), ImageSequence([p.clear for p in data.pairs])
    common = dict(steps=budget["steps"], lr=budget["lr"], batch_size=budget["batch_size"],
                  patch_size=budget["patch_size"], seed=spec["seed"], state_path=work / "state.pt",
                  checkpoint_every=ctx.recipe.budget.checkpoint_every, progress=update, strategy=ctx.strategy)
    reweight, stepper = spec["data"].get("reweight"), None
    if reweight is None:
        model, result = pretrain_supervised(model, hazy, clear, **common)
    else:  # e.g. BILD: its reweighting network trains alongside and is not deployed
        config = REWEIGHTS.build(reweight["type"], **{k: v for k, v in reweight.items() if k != "type"})
        model, result, stepper = config.pretrain(model, hazy, clear, **common)
    finish()
    meta = None
    if ctx.strategy.is_main:
        staging = staging_dir(folder)
        extra = {}
        if stepper is not None:  # the reweighter and its learned patch weights stay beside the checkpoint
            files = stepper.export(staging, hazy, clear, [p.name for p in data.pairs])
            extra = {"reweight": stepper.summary(), "artifacts": {k: Path(v).name for k, v in files.items()}}
        save_weights(staging / WEIGHTS, model.deploy(), {
            "backbone": spec["backbone"]["type"], "variant": spec["backbone"].get("variant", "full"),
            "options": backbone_options(spec["backbone"]), "form": "deploy", "pretrain": spec["data"],
            "seed": spec["seed"], "train_seconds": result.seconds, "resumed_at": result.resumed_at,
            "curve": result.curve, "data_fingerprint": inputs(task, ctx)["data"], "strategy": ctx.strategy.describe(),
            **guide_record(model, ctx), **extra,
        })
        meta = commit(staging, folder, task.key, inputs(task, ctx), {}, replace=True)
        shutil.rmtree(work, ignore_errors=True)
    ctx.strategy.barrier()
    return meta or artifact_meta(folder)


def commit_of(task: Task, ctx: StageContext) -> str | None:
    return commit_id(ctx.store.pretrained_dir(task.key))
