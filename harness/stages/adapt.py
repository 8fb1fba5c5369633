"""Adaptation stage: a method applied to a committed pretrained model, merged and committed.

The artifact is ``adapted/<key>/model.safetensors`` (merged, deploy form; its sidecar holds the
method's info, curves and efficiency figures) plus the method's files (e.g. ``adapter.safetensors``
with a sidecar naming its base checkpoint); resumable state lives in ``work/adapt/<key>/`` until the
commit. It depends on the pretrained artifact (and, for ``graft``, on the source adaptation).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from harness.adapt.base import AdaptJob, build_method
from harness.data.sequence import ImageSequence
from harness.errors import HarnessError
from harness.plan.graph import Task
from harness.hashing import stable_hash
from harness.stages import pretrain
from harness.stages.context import StageContext
from harness.store import atomic_write_json, file_sha256, load_weights, read_json, save_weights, sidecar
from harness.store.artifacts import artifact_meta, commit, commit_id, is_fresh, staging_dir

WEIGHTS = "model.safetensors"


def deps(task: Task, ctx: StageContext) -> dict[str, str | None]:
    """The commit ids of what this adaptation is built from, as they are now."""
    out = {"pretrain": commit_id(ctx.store.pretrained_dir(task.spec["pretrain"]))}
    if task.spec.get("source"):
        out["source"] = commit_id(ctx.store.adapted_dir(task.spec["source"]))
    return out


def inputs(task: Task, ctx: StageContext) -> dict[str, Any]:
    """The target's content and, for a method trained with the guide, the guide's weights."""
    found = {"target": ctx.fingerprint(task.spec["target"])}
    if build_method(task.spec["method"]).needs_loss:
        found["guide"] = ctx.guide_weights()
    return found


def exists(task: Task, ctx: StageContext) -> bool:
    return artifact_meta(ctx.store.adapted_dir(task.key)) is not None


def current(task: Task, ctx: StageContext) -> bool:
    return is_fresh(artifact_meta(ctx.store.adapted_dir(task.key)), inputs(task, ctx), deps(task, ctx))


def load(key: str, backbone: dict[str, Any], ctx: StageContext) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The committed adapted model (merged) and its sidecar."""
    path = ctx.store.adapted_dir(key) / WEIGHTS
    recorded = (read_json(sidecar(path)) or {}).get("backbone_guide")
    model = pretrain.new_backbone(backbone, ctx, recorded, str(path)).deploy()
    meta = load_weights(path, model)
    return model.to(ctx.device).eval(), meta


def target_split(entry: dict[str, Any], ctx: StageContext) -> tuple[ImageSequence, ImageSequence]:
    """Deterministic train/val split of the target images (independent of method and seed), shrunk to
    the adaptation budget's ``max_side`` when it has one."""
    data = ctx.dataset(entry)
    if len(data.pairs) < 2:
        raise HarnessError(f"target set {entry.get('label') or entry['type']} has {len(data.pairs)} image(s)",
                           "adaptation needs at least 2 target images (train and validation)")
    by_name = {p.name: p for p in data.pairs}
    order = sorted(by_name, key=lambda n: stable_hash(n))
    cut = max(1, min(len(order) - 1, round(len(order) * ctx.recipe.target_split)))
    side = ctx.recipe.budget.adapt.max_side
    return (ImageSequence([by_name[n].hazy for n in order[:cut]], max_side=side),
            ImageSequence([by_name[n].hazy for n in order[cut:]], max_side=side))


def run(task: Task, ctx: StageContext) -> dict[str, Any]:
    folder = ctx.store.adapted_dir(task.key)
    if task.id not in ctx.forced and current(task, ctx):
        return artifact_meta(folder)
    spec = task.spec
    method = build_method(spec["method"])
    loss = ctx.loss(spec["method"]) if method.needs_loss else None
    guide_info = {**ctx.guide().describe(), **ctx.h2c_settings(spec["method"])} if method.needs_loss else None
    base = pretrain.load(spec["pretrain"], spec["backbone"], ctx)
    train, val = target_split(spec["target"], ctx)
    work = ctx.store.work_dir("adapt", task.key)
    budget = ctx.recipe.budget.adaptation()
    update, finish = ctx.progress.task(task.label or task.id)
    job = AdaptJob(model=base, train_images=train, val_images=val, loss_fn=loss, batch_size=budget["batch_size"],
                   patch_size=budget["patch_size"], workdir=work / "state", seed=spec["seed"], device=ctx.device,
                   progress=update, strategy=ctx.strategy, checkpoint_every=ctx.recipe.budget.checkpoint_every,
                   val_loss=method.needs_loss, measure_memory=True)
    if spec.get("source"):
        job.source_model, _ = load(spec["source"], spec["backbone"], ctx)
    torch.manual_seed(spec["seed"])
    result = method.run(job)
    finish()
    meta = None
    if ctx.strategy.is_main:
        staging = staging_dir(folder)
        artifacts = {}
        for name, path in result.artifacts.items():  # method files move into the artifact, sidecars too
            for file in (Path(path), sidecar(Path(path))):
                if file.is_file():
                    shutil.move(str(file), staging / file.name)
            artifacts[name] = Path(path).name
        base_file = ctx.store.pretrained_dir(spec["pretrain"]) / pretrain.WEIGHTS
        if "adapter" in artifacts:
            _stamp_adapter(staging / artifacts["adapter"], spec, file_sha256(base_file), guide_info)
        save_weights(staging / WEIGHTS, result.model, {
            "backbone": spec["backbone"]["type"], "variant": spec["backbone"].get("variant", "full"), "form": "deploy",
            "method": spec["method"], "train_seconds": result.train_seconds,
            "peak_mem_mb": result.peak_mem_mb, "params_trainable": result.params_trainable,
            "params_unmerged": result.params_unmerged, "info": result.info, "guide": guide_info,
            "curves": result.curves, "artifacts": artifacts, "strategy": ctx.strategy.describe(),
            **pretrain.guide_record(result.model, ctx),
        })
        meta = commit(staging, folder, task.key, inputs(task, ctx), deps(task, ctx), replace=True)
        shutil.rmtree(work, ignore_errors=True)
    ctx.strategy.barrier()
    return meta or artifact_meta(folder)


def _stamp_adapter(adapter: Path, spec: dict[str, Any], base_sha256: str, guide_info: dict[str, Any] | None) -> None:
    """Record in an adapter's sidecar which base checkpoint, backbone and guide it belongs to."""
    if not sidecar(adapter).is_file():
        return
    meta = read_json(sidecar(adapter))
    bb = spec["backbone"]
    meta.update({"backbone": bb["type"], "variant": bb.get("variant", "full"),
                 "options": pretrain.backbone_options(bb), "base_sha256": base_sha256, "guide": guide_info,
                 "method": spec["method"]})
    atomic_write_json(sidecar(adapter), meta)


def commit_of(task: Task, ctx: StageContext) -> str | None:
    return commit_id(ctx.store.adapted_dir(task.key))
