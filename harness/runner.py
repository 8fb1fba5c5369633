"""Run a recipe: for each unfinished cell, pretrain (cached), adapt (cached), score, record.

Finished cells are skipped by the presence of their record; pretrained and adapted weights are
cached by id, so a killed run resumes from the last finished stage (and inside a stage from the
last saved state). Under ``torchrun`` each rank takes the cells whose index is congruent to its
rank; file locks keep two ranks (or two runs) from training the same checkpoint at once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.adapt.base import AdaptJob
from harness.benchmark import score_model
from harness.data.sequence import ImageSequence
from harness.errors import HarnessError
from harness.launch.distributed import rank_world
from harness.metrics.base import Metric, build_metric
from harness.metrics.efficiency import efficiency_figures, peak_memory
from harness.models.base import build_backbone
from harness.pretrain.supervised import pretrain_supervised
from harness.provenance import environment, git_state, package_versions
from harness.recipe import Cell, Recipe, adapt_key, dataset_spec, expand, stable_hash
from harness.registry import DATASETS, METHODS, REWEIGHTS
from harness.store import (
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    file_sha256,
    load_weights,
    save_weights,
    sidecar,
    weights_ready,
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} requested but CUDA is not available", "set device: auto or cpu")
    return torch.device(name)


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int = 0
    ran: list[str] = field(default_factory=list)
    seconds: float = 0.0


class RecipeRunner:
    """Holds what is shared across the cells of one run: datasets, metrics, guide, progress."""

    def __init__(self, recipe: Recipe, run_dir: Path, console: Console | None = None):
        self.recipe = recipe
        self.store = RunStore(run_dir)
        self.console = console or Console()
        self.device = resolve_device(recipe.device)
        self._datasets: dict[str, Any] = {}
        self._metrics: dict[str, Metric | None] | None = None
        self._guide = None
        self._losses: dict[str, Any] = {}
        self.progress: Progress | None = None

    # ------------------------------------------------------------ shared resources

    def dataset(self, entry: dict[str, Any]):
        key = stable_hash(entry)
        if key not in self._datasets:
            params = {k: v for k, v in entry.items() if k != "type"}
            self._datasets[key] = DATASETS.build(entry["type"], **params)
        return self._datasets[key]

    def metrics(self) -> dict[str, Metric | None]:
        """Build every metric once; an optional one that cannot be built becomes None (n/a)."""
        if self._metrics is None:
            self._metrics = {}
            for entry in self.recipe.metrics:
                try:
                    self._metrics[entry.name] = build_metric(entry.type, **entry.params)
                except HarnessError as err:
                    if not entry.optional:
                        raise
                    self.console.print(f"[yellow]metric {entry.name} not available: {err}[/]")
                    self._metrics[entry.name] = None
        return self._metrics

    def h2c_settings(self, method: dict[str, Any]) -> dict[str, str]:
        """The recipe's prompts and mode, with the method's ``h2c:`` overrides applied."""
        g = self.recipe.guide
        return {"positive": g.positive, "negative": g.negative, "mode": g.mode, **method.get("h2c", {})}

    def _guide_or_build(self):
        from harness.guide import build_guide

        if self._guide is None:
            g = self.recipe.guide
            self._guide = build_guide(g.type, **g.params)
        return self._guide

    def loss(self, method: dict[str, Any]):
        """The H2C loss for ``method`` (guide built once; one loss per prompt/mode setting)."""
        from harness.guide.h2c import H2CLoss

        settings = self.h2c_settings(method)
        key = stable_hash(settings)
        if key not in self._losses:
            self._losses[key] = H2CLoss(self._guide_or_build(), **settings).to(self.device)
        return self._losses[key]

    def _task(self, description: str, total: int):
        assert self.progress is not None
        task = self.progress.add_task(description, total=total)

        def update(done: int, total_: int, info: dict[str, float]) -> None:
            text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
            self.progress.update(task, completed=done, total=total_, description=f"{description} {text}")

        return task, update

    # ------------------------------------------------------------ stages

    def pretrained(self, cell: Cell) -> torch.nn.Module:
        """The deploy-form pretrained model of ``cell``, trained now unless cached."""
        folder = self.store.pretrained_dir(cell.pretrain_id)
        path = folder / "model.safetensors"
        bb = cell.backbone
        extra = {k: v for k, v in bb.items() if k not in ("type", "variant")}
        with file_lock(folder / ".lock"):
            if not weights_ready(path):
                torch.manual_seed(cell.seed)
                model = build_backbone(bb["type"], bb["variant"], **extra)
                data = self.dataset(dataset_spec(cell.pretrain))
                if not data.has_reference:
                    raise HarnessError(f"pretraining set {cell.labels['pretrain']} has no clear images",
                                       "pretrain needs a paired dataset (hazy + clear)")
                budget = self.recipe.budget
                task, update = self._task(f"pretrain {cell.labels['backbone']} on {cell.labels['pretrain']}",
                                          budget.pretrain_steps)
                start = time.perf_counter()
                hazy = ImageSequence([p.hazy for p in data.pairs])
                clear = ImageSequence([p.clear for p in data.pairs])
                common = dict(steps=budget.pretrain_steps, lr=budget.pretrain_lr, batch_size=budget.batch_size,
                              patch_size=budget.patch_size, seed=cell.seed, state_path=folder / "state.pt",
                              checkpoint_every=budget.checkpoint_every, device=self.device, progress=update)
                reweight, extra_meta = cell.pretrain.get("reweight"), {}
                if reweight is None:
                    model, _ = pretrain_supervised(model, hazy, clear, **common)
                else:  # e.g. BILD: the reweighting network is trained alongside and not deployed
                    config = REWEIGHTS.build(reweight["type"], **{k: v for k, v in reweight.items() if k != "type"})
                    model, _, stepper = config.pretrain(model, hazy, clear, artifacts_dir=folder,
                                                        names=[p.name for p in data.pairs], **common)
                    extra_meta = {"reweight": stepper.summary(),
                                  "artifacts": {k: self.store.relative(v) for k, v in stepper.artifacts.items()}}
                self.progress.remove_task(task)
                deployed = model.deploy()
                save_weights(path, deployed, {
                    "backbone": bb["type"], "variant": bb["variant"], "options": extra, "form": "deploy",
                    "pretrain": cell.pretrain, "seed": cell.seed, "train_seconds": time.perf_counter() - start,
                    "data_fingerprint": data.fingerprint(), **extra_meta,
                })
                (folder / "state.pt").unlink(missing_ok=True)
        model = build_backbone(bb["type"], bb["variant"], **extra).deploy()
        load_weights(path, model)
        return model.to(self.device).eval()

    def target_split(self, cell: Cell) -> tuple[ImageSequence, ImageSequence]:
        """Deterministic train/val split of the target images (independent of method and seed)."""
        data = self.dataset(cell.target)
        names = sorted(p.name for p in data.pairs)
        by_name = {p.name: p for p in data.pairs}
        order = sorted(names, key=lambda n: stable_hash(n))
        cut = max(1, min(len(order) - 1, round(len(order) * self.recipe.target_split)))
        if len(order) < 2:
            raise HarnessError(f"target set {cell.labels['target']} has {len(order)} image(s)",
                               "adaptation needs at least 2 target images (train and validation)")
        train = ImageSequence([by_name[n].hazy for n in order[:cut]])
        val = ImageSequence([by_name[n].hazy for n in order[cut:]])
        return train, val

    def adapted(self, cell: Cell, base: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The adapted, merged model of ``cell`` and its metadata, adapted now unless cached."""
        folder = self.store.adapted_dir(cell.adapt_id)
        path = folder / "model.safetensors"
        method = cell.method
        with file_lock(folder / ".lock"):
            if not weights_ready(path):
                adapter = build_method(method)
                guide_info = ({**self._guide_or_build().describe(), **self.h2c_settings(method)}
                              if adapter.needs_loss else None)
                train, val = self.target_split(cell)
                job = AdaptJob(
                    model=base, train_images=train, val_images=val,
                    loss_fn=self.loss(method) if adapter.needs_loss else None,
                    batch_size=self.recipe.budget.batch_size, patch_size=self.recipe.budget.patch_size,
                    workdir=folder / "work", seed=cell.seed, device=self.device,
                )
                if "source" in method:
                    job.source_model = self.source_model(cell)
                task, job.progress = self._task(f"adapt {cell.labels['method']}", 1)
                torch.manual_seed(cell.seed)
                start = time.perf_counter()
                with peak_memory(self.device, model=(base, job.loss_fn, job.source_model)) as mem:
                    result = adapter.run(job)
                seconds = time.perf_counter() - start
                self.progress.remove_task(task)
                self._stamp_adapter(result.artifacts.get("adapter"), cell, guide_info)
                meta = {
                    "backbone": cell.backbone["type"], "variant": cell.backbone["variant"], "form": "deploy",
                    "method": method, "train_seconds": seconds, "peak_mem_mb": mem["peak_mem_mb"],
                    "params_trainable": result.params_trainable, "info": result.info, "guide": guide_info,
                    "artifacts": {k: self.store.relative(v) for k, v in result.artifacts.items()},
                }
                save_weights(path, result.model, meta)
                shutil.rmtree(folder / "work", ignore_errors=True)
        bb = cell.backbone
        extra = {k: v for k, v in bb.items() if k not in ("type", "variant")}
        model = build_backbone(bb["type"], bb["variant"], **extra).deploy()
        meta = load_weights(path, model)
        return model.to(self.device).eval(), meta

    def source_cell(self, cell: Cell) -> Cell:
        """The cell whose adaptation ``cell``'s method builds on (its ``source:`` method spec)."""
        source = cell.method["source"]
        return cell.model_copy(update={
            "method": source, "adapt_id": adapt_key(self.recipe, cell.pretrain_id, cell.target, source, cell.seed),
            "labels": {**cell.labels, "method": source["type"]},
        })

    def source_model(self, cell: Cell) -> torch.nn.Module:
        """The adapted model of ``cell``'s source method, adapted now unless cached."""
        source = self.source_cell(cell)
        model, _ = self.adapted(source, self.pretrained(source))
        return model

    def _stamp_adapter(self, adapter: Path | None, cell: Cell, guide_info: dict[str, Any] | None) -> None:
        """Record in an adapter's sidecar which base checkpoint, backbone and guide it belongs to."""
        if adapter is None or not sidecar(adapter).is_file():
            return
        base = self.store.pretrained_dir(cell.pretrain_id) / "model.safetensors"
        meta = json.loads(sidecar(adapter).read_text())
        bb = cell.backbone
        meta.update({"backbone": bb["type"], "variant": bb["variant"],
                     "options": {k: v for k, v in bb.items() if k not in ("type", "variant")},
                     "base_sha256": file_sha256(base), "guide": guide_info, "method": cell.method})
        atomic_write_json(sidecar(adapter), meta)

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        base = self.pretrained(cell)
        pretrain_meta = sidecar(self.store.pretrained_dir(cell.pretrain_id) / "model.safetensors")
        model, meta = self.adapted(cell, base)
        benchmarks = {b.name: self.dataset(b.spec()) for b in self.recipe.benchmarks}
        means = score_model(
            model, benchmarks, self.metrics(), self.store.scores_dir(cell.id), self.device,
            max_side=self.recipe.eval.max_side, on_corrupt=self.recipe.on_corrupt,
            save_outputs=self.recipe.eval.save_outputs,
        )
        efficiency = {
            "train_seconds": meta["train_seconds"],
            "params_trainable": meta["params_trainable"],
            "peak_mem_mb": meta["peak_mem_mb"],
            **efficiency_figures(model, device=self.device),
        }
        pre_info = load_sidecar(pretrain_meta)
        data_hashes = {"pretrain": pre_info.get("data_fingerprint"),
                       "target": self.dataset(cell.target).fingerprint(),
                       **{f"benchmark:{k}": v.fingerprint() for k, v in benchmarks.items()}}
        return {
            "cell": cell.model_dump(),
            "provenance": {
                **git_state(), "packages": package_versions(), "environment": environment(),
                "device": str(self.device), "data_hashes": data_hashes, "guide": meta.get("guide"),
                "recipe": self.recipe.name, "pretrain_seconds": pre_info.get("train_seconds"),
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            "metrics": means,
            "metric_directions": {n: (m.spec.lower_better if m is not None else None)
                                  for n, m in self.metrics().items()},
            "efficiency": efficiency,
            "method_info": meta.get("info", {}),
            "artifacts": {
                "pretrained": self.store.relative(self.store.pretrained_dir(cell.pretrain_id) / "model.safetensors"),
                "adapted": self.store.relative(self.store.adapted_dir(cell.adapt_id) / "model.safetensors"),
                **pre_info.get("artifacts", {}),  # the pretraining's own files (BILD's patch weights)
                **meta.get("artifacts", {}),
            },
        }

    # ------------------------------------------------------------ the run

    def run(self, force: bool = False) -> RunSummary:
        cells = expand(self.recipe)
        rank, world = rank_world()
        mine = [c for c in cells if c.index % world == rank]
        summary = RunSummary(self.store.root, total=len(cells))
        self._write_run_files(cells)
        todo = []
        for cell in mine:
            if self.store.is_done(cell.id) and not force:
                summary.skipped += 1
            else:
                todo.append(cell)
        self._prepare(todo)
        start = time.perf_counter()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=False) as progress:
            self.progress = progress
            overall = progress.add_task("cells", total=len(todo))
            for cell in todo:
                progress.update(overall, description=f"cell {cell.id} {'/'.join(cell.labels.values())}")
                record = self.run_cell(cell)
                self.store.write_record(cell.id, record)
                summary.ran.append(cell.id)
                progress.advance(overall)
            progress.update(overall, description="cells")
        self.progress = None
        summary.seconds = time.perf_counter() - start
        return summary

    def _prepare(self, todo: list[Cell]) -> None:
        """Fail before any training: check every dataset, metric and (if needed) the guide."""
        for cell in todo:
            self.dataset(dataset_spec(cell.pretrain))
            self.dataset(cell.target)
        if todo:
            for entry in self.recipe.benchmarks:
                self.dataset(entry.spec())
            self.metrics()
        for c in todo:
            pending = [c] + ([self.source_cell(c)] if "source" in c.method else [])
            for p in pending:
                if not weights_ready(self.store.adapted_dir(p.adapt_id) / "model.safetensors") and \
                        build_method(p.method).needs_loss:
                    self.loss(p.method)

    def _write_run_files(self, cells: list[Cell]) -> None:
        root = self.store.root
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(root / "recipe.yaml",
                           yaml.safe_dump(self.recipe.model_dump(mode="json"), sort_keys=False).encode())
        atomic_write_json(root / "manifest.json", {
            "recipe": self.recipe.name, "cells": [c.model_dump() for c in cells], **git_state(),
        })


def build_method(spec: dict[str, Any]):
    """The method object of a cell's method spec (``h2c`` is the runner's, not the method's)."""
    return METHODS.build(spec["type"], **{k: v for k, v in spec.items() if k not in ("type", "h2c")})


def load_sidecar(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
