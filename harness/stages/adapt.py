"""Adaptation stage: a method applied to a committed pretrained model, merged and committed.

The artifact is ``adapted/<key>/model.safetensors`` (merged, deploy form; its sidecar holds the
method's info, curves and efficiency figures) plus the method's files (e.g. ``adapter.safetensors``
with a sidecar naming its base checkpoint); resumable state lives in ``work/adapt/<key>/`` until the
commit. It depends on the pretrained artifact (and, for ``graft``, on the source adaptation).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from harness.adapt.base import AdaptJob
from harness.data.sequence import ImageSequence
from harness.errors import HarnessError
from harness.metrics.efficiency import peak_memory
from harness.plan.graph import Task
from harness.plan.ids import stable_hash
from harness.registry import METHODS
from harness.stages import pretrain
from harness.stages.context import StageContext
from harness.store import atomic_write_json, file_sha256, load_weights, save_weights, sidecar
from harness.store.artifacts import artifact_meta, commit, is_fresh, staging_dir

WEIGHTS = "model.safetensors"


def build_method(spec: dict[str, Any]):
    """The method object of a method spec (``h2c`` is the loss's business, not the method's)."""
    return METHODS.build(spec["type"], **{k: v for k, v in spec.items() if k not in ("type", "h2c")})


def deps(task: Task, ctx: StageContext) -> dict[str, str | None]:
    """The commit ids of what this adaptation is built from, as they are now."""
    meta = artifact_meta(ctx.store.pretrained_dir(task.spec["pretrain"]))
    out = {"pretrain": meta["commit"] if meta else None}
    if task.spec.get("source"):
        meta = artifact_meta(ctx.store.adapted_dir(task.spec["source"]))
        out["source"] = meta["commit"] if meta else None
    return out


def inputs(task: Task, ctx: StageContext) -> dict[str, Any]:
    return {"target": ctx.fingerprint(task.spec["target"])}


def exists(task: Task, ctx: StageContext) -> bool:
    return artifact_meta(ctx.store.adapted_dir(task.key)) is not None


def current(task: Task, ctx: StageContext) -> bool:
    return is_fresh(artifact_meta(ctx.store.adapted_dir(task.key)), inputs(task, ctx), deps(task, ctx))


def load(key: str, backbone: dict[str, Any], ctx: StageContext) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The committed adapted model (merged) and its sidecar."""
    model = pretrain.new_backbone(backbone).deploy()
    meta = load_weights(ctx.store.adapted_dir(key) / WEIGHTS, model)
    return model.to(ctx.device).eval(), meta


def target_split(entry: dict[str, Any], ctx: StageContext) -> tuple[ImageSequence, ImageSequence]:
    """Deterministic train/val split of the target images (independent of method and seed)."""
    data = ctx.dataset(entry)
    if len(data.pairs) < 2:
        raise HarnessError(f"target set {entry.get('label') or entry['type']} has {len(data.pairs)} image(s)",
                           "adaptation needs at least 2 target images (train and validation)")
    by_name = {p.name: p for p in data.pairs}
    order = sorted(by_name, key=lambda n: stable_hash(n))
    cut = max(1, min(len(order) - 1, round(len(order) * ctx.recipe.target_split)))
    return (ImageSequence([by_name[n].hazy for n in order[:cut]]),
            ImageSequence([by_name[n].hazy for n in order[cut:]]))


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
                   progress=update)
    if spec.get("source"):
        job.source_model, _ = load(spec["source"], spec["backbone"], ctx)
    torch.manual_seed(spec["seed"])
    began = time.perf_counter()
    with peak_memory(ctx.device, model=(base, loss, job.source_model)) as mem:
        result = method.run(job)
    seconds = getattr(result, "seconds", None) or time.perf_counter() - began
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
            "method": spec["method"], "train_seconds": seconds,
            "peak_mem_mb": mem["peak_mem_mb"], "params_trainable": result.params_trainable,
            "params_unmerged": getattr(result, "params_unmerged", None), "info": result.info, "guide": guide_info,
            "curves": getattr(result, "curves", {}), "artifacts": artifacts, "strategy": ctx.strategy.describe(),
        })
        meta = commit(staging, folder, task.key, inputs(task, ctx), deps(task, ctx), replace=True)
        shutil.rmtree(work, ignore_errors=True)
    ctx.strategy.barrier()
    return meta or artifact_meta(folder)


def _stamp_adapter(adapter: Path, spec: dict[str, Any], base_sha256: str, guide_info: dict[str, Any] | None) -> None:
    """Record in an adapter's sidecar which base checkpoint, backbone and guide it belongs to."""
    if not sidecar(adapter).is_file():
        return
    meta = json.loads(sidecar(adapter).read_text())
    bb = spec["backbone"]
    meta.update({"backbone": bb["type"], "variant": bb.get("variant", "full"),
                 "options": pretrain.backbone_options(bb), "base_sha256": base_sha256, "guide": guide_info,
                 "method": spec["method"]})
    atomic_write_json(sidecar(adapter), meta)


def commit_of(task: Task, ctx: StageContext) -> str | None:
    meta = artifact_meta(ctx.store.adapted_dir(task.key))
    return meta["commit"] if meta else None
