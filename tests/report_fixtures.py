"""Hand-made records in the agreed record shape, and a run folder built from them (with sample PNGs),
for the report tests. Nothing here is produced by the harness's own code paths."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from harness.store import RunStore

REPO = Path(__file__).resolve().parents[1]
# records of an example run in an older shape (no group_id, curves or samples): the reports must still read them
EXAMPLE = REPO / "tests" / "fixtures" / "old_records"
DIRECTIONS = {"fade": True, "entropy": False, "musiq": False, "psnr": False, "ssim": False,
              "lab_shift": True, "colourfulness_delta": None, "luma_ssim_input": False}
SANE = {"lab_shift": 4.0, "colourfulness_delta": 6.0, "luma_ssim_input": 0.8}
COLLAPSED = {"lab_shift": 38.0, "colourfulness_delta": 40.0, "luma_ssim_input": 0.35}


def record(method: dict, label: str, metrics: dict, seed: int = 0, backbone: str = "dea_net",
           pretrain: str = "thaze", group_id: str | None = None, **extra) -> dict:
    """A record with the agreed keys; ``group_id`` omitted unless given (older records lack it)."""
    cell = {"backbone": {"type": backbone, "variant": "tiny"}, "pretrain": {"type": pretrain, "root": f"/d/{pretrain}"},
            "target": {"type": "folder", "root": "/d/fade500"}, "method": method, "seed": seed, "index": 0,
            "id": f"{label}-{backbone}-{pretrain}-{seed}", "pretrain_id": "p", "adapt_id": "a",
            "labels": {"backbone": f"{backbone}-tiny", "pretrain": pretrain, "target": "fade500", "method": label}}
    if group_id:
        cell["group_id"] = group_id
    rec = {"cell": cell, "provenance": {"recipe": "demo", "finished_at": f"2026-01-01T00:00:{seed:02d}+00:00"},
           "metrics": metrics, "metric_directions": {k: v for k, v in DIRECTIONS.items() if v is not None},
           "efficiency": {"train_seconds": 100.0, "params_total": 3_653_000, "params_trainable": 0,
                          "macs_256": 34.04e9, "flops_256": 68.08e9, "runtime_ms_256": 3.7, "peak_mem_mb": 900.0},
           "method_info": {}, "artifacts": {}}
    rec.update(extra)
    return rec


def _hazy(image: np.ndarray, beta: float, airlight=(0.85, 0.85, 0.8)) -> np.ndarray:
    h, w = image.shape[:2]
    depth = np.linspace(0.3, 1.0, h)[:, None, None] * np.ones((1, w, 1))
    t = np.exp(-beta * depth)
    return image * t + np.asarray(airlight) * (1 - t)


def _dehazed(image: np.ndarray, strength: float) -> np.ndarray:
    lo = np.percentile(image, 1, axis=(0, 1)) * strength
    hi = 1 - (1 - np.percentile(image, 99, axis=(0, 1))) * strength
    return np.clip((image - lo) / (hi - lo), 0, 1)


def _collapse(image: np.ndarray) -> np.ndarray:
    y = image @ np.array([0.299, 0.587, 0.114])
    y = y * (0.8 + 0.2 * np.sin(np.arange(y.shape[0])[:, None] * 0.8))
    return np.clip(np.stack([y + 0.25, 0.55 * y + 0.05, 0.15 * y], -1), 0, 1)


def _photos(n: int = 2) -> list[np.ndarray]:
    from skimage import data, transform

    photos = [data.astronaut(), data.chelsea(), data.coffee()][:n]
    return [transform.resize(p, (96, 128), anti_aliasing=True).astype(np.float32) for p in photos]


def _png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def demo_records(run_dir: Path | None = None, seeds=(0, 1), backbones=("dea_net", "msbdn"),
                 pretrains=("thaze", "its")) -> list[dict]:
    """Two backbones × two pretraining sets × (pretrained, full_ft, naive_joint, bilalora) × seeds on
    three benchmarks, with curves, gates, sanity metrics and (given ``run_dir``) sample PNGs; full_ft
    on MSBDN collapses (red-orange, striped)."""
    benches = ("RTTS", "URHI", "Fattal")
    photos = _photos()
    records = []
    methods = [({"type": "none"}, "pretrained", 0.0), ({"type": "full_ft", "steps": 330}, "full_ft", 0.3),
               ({"type": "naive_joint", "top_k": 3}, "naive_joint", 0.2),
               ({"type": "bilalora", "top_k": 3}, "bilalora", 0.35)]
    for backbone in backbones:
        for pretrain in pretrains:
            for method, label, gain in methods:
                for seed in seeds:
                    collapsed = backbone == "msbdn" and label == "full_ft"
                    jitter = 0.01 * seed
                    metrics = {}
                    for j, bench in enumerate(benches):
                        fade = 1.4 - gain - 0.3 * j + jitter - (0.9 if collapsed else 0.0)
                        metrics[bench] = {"fade": fade, "entropy": 7.2 + gain / 2 - jitter, "musiq": 53 + 20 * gain + j,
                                          **(COLLAPSED if collapsed else SANE)}
                    rec = record(method, label, metrics, seed, backbone, pretrain)
                    # as the runner records them: the pretraining curve, then each adaptation loop
                    rec["curves"] = {"pretrain": [{"step": s, "seconds": 9.0 * s, "loss": 0.2} for s in range(3)]}
                    if label != "pretrained":
                        loops = {"full_ft": ["full_ft"], "naive_joint": ["search", "finetune"],
                                 "bilalora": ["search", "finetune"]}[label]
                        for k, loop in enumerate(loops):
                            rec["curves"][loop] = [
                                {"step": s, "seconds": 2.0 * s + 1, "loss": 0.9 - 0.3 * gain * s / 10 - 0.05 * k,
                                 **({"val_loss": 0.95 - 0.25 * gain * s / 10} if loop == "search" else {})}
                                for s in range(11)]
                        rec["efficiency"].update(train_seconds=15174.0 if label == "full_ft" else 3384.0,
                                                 params_trainable=3_653_000 if label == "full_ft" else 110_592,
                                                 params_unmerged=3_653_000 if label == "full_ft" else 3_763_592)
                    if label in ("naive_joint", "bilalora"):
                        sites = [f"block{i}" for i in range(1, 9)]
                        gates = {s: round(0.3 + 0.05 * i + (0.1 if label == "bilalora" and i in (2, 5, 7) else 0), 3)
                                 for i, s in enumerate(sites)}
                        kept = sorted(gates, key=gates.get)[-3:]
                        rec["method_info"] = {"gates": gates, "selected": kept, "gate_updates": 55}
                    if run_dir is not None and seed == seeds[0] and pretrain == "thaze":
                        rec["artifacts"]["samples"] = {}
                        for bench in benches[:1]:
                            items = []
                            for k, photo in enumerate(photos):
                                name = f"img{k}.png"
                                folder = Path("scores") / rec["cell"]["id"] / "samples" / bench
                                hazy = _hazy(photo, 1.6)
                                out = hazy if label == "pretrained" else (_collapse(hazy) if collapsed
                                                                          else _dehazed(hazy, gain * 2))
                                _png(run_dir / folder / f"input_{name}", hazy)
                                _png(run_dir / folder / f"output_{name}", out)
                                items.append({"name": name, "input": str(folder / f"input_{name}"),
                                              "output": str(folder / f"output_{name}")})
                            rec["artifacts"]["samples"][bench] = items
                    records.append(rec)
    return records


def demo_run(run_dir: Path, seeds=(0, 1), **axes) -> Path:
    store = RunStore(run_dir)
    for rec in demo_records(run_dir, seeds, **axes):
        store.write_record(rec["cell"]["id"], rec)
    return run_dir


def example_run(run_dir: Path) -> Path:
    """A run folder holding the old-shape example records (no group_id, curves or samples)."""
    shutil.copytree(EXAMPLE / "cells", run_dir / "cells")
    return run_dir


def example_records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((EXAMPLE / "cells").glob("*.json"))]


def clone(rec: dict, **cell_changes) -> dict:
    out = copy.deepcopy(rec)
    out["cell"].update(cell_changes)
    return out
