"""Degradation-aware fine-tuning of any open_clip model (VLU-Net refines CLIP on degraded pairs).

``tune_open_clip`` loads an open_clip model from a local weights file, trains it contrastively on
captioned degraded crops (:mod:`harness.guide.pairs`: the ``guide`` photo pool and procedural
scenes, or a folder of the user's clean photos) and writes a weights file that loads as
``guide: {type: open_clip, model: <name>, pretrained: <file>}``, with a JSON sidecar saying what it
was tuned from. The training is resumable (a killed run continues from its state file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def tune_open_clip(model: str, weights: Path, out: Path, *, steps: int = 300, lr: float = 1e-5,
                   batch_size: int = 32, pool: int = 1024, noise: float = 0.02, seed: int = 0,
                   photos: Path | None = None, overwrite: bool = False, progress=None) -> dict[str, Any]:
    """Fine-tune ``model`` from ``weights`` and write ``out``; returns the sidecar's content."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from harness.guide.model import create_model, image_size
    from harness.guide.pairs import CAPTION_CLASSES, folder_photos, make_pairs
    from harness.guide.training import train_guide
    from harness.store import atomic_write_json, file_sha256

    weights, out = Path(weights).expanduser(), Path(out).expanduser()
    if model not in open_clip.list_models():
        raise HarnessError(f"unknown open_clip model {model!r}", "pass --model a name from open_clip.list_models()")
    if not weights.is_file():
        raise HarnessError(f"weights file {weights} not found", "pass --pretrained an existing open_clip weights file")
    if out.suffix not in WEIGHT_SUFFIXES:
        raise HarnessError(f"output {out} has no weights suffix", f"end --out with one of {', '.join(WEIGHT_SUFFIXES)}")
    if out.exists() and not overwrite:
        raise HarnessError(f"{out} already exists", "choose another --out, or pass --overwrite")
    if photos is not None and not Path(photos).is_dir():
        raise HarnessError(f"photo folder {photos} not found", "pass --photos a folder of clean photos, or leave it out")
    if min(steps, batch_size, pool) < 1:
        raise HarnessError(f"steps, batch size and pool must be >= 1 (got {steps}, {batch_size}, {pool})")
    torch.manual_seed(seed)
    clip = create_model(model, pretrained=str(weights))
    data = make_pairs(pool, image_size(clip), seed, photos=folder_photos(photos) if photos else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = out.with_name(f".{out.name}.state.pt")
    result = train_guide(clip, open_clip.get_tokenizer(model), data, steps=steps, lr=lr,
                         batch_size=batch_size, noise=noise, seed=seed, state_path=state,
                         stage="guide tuning", progress=progress)
    tensors = {k: v.detach().cpu().contiguous() for k, v in clip.state_dict().items()}
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        save_file(tensors, str(tmp))
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, out)
    state.unlink(missing_ok=True)  # our own resumable state, no longer needed
    summary = {"model": model, "tuned_from": str(weights), "tuned_from_sha256": file_sha256(weights),
               "sha256": file_sha256(out), "steps": steps, "lr": lr, "batch_size": batch_size, "pool": pool,
               "noise": noise, "seed": seed, "photos": str(photos) if photos else "guide pool + procedural scenes",
               "classes": CAPTION_CLASSES, "seconds": result.seconds, "curve": result.curve}
    atomic_write_json(out.with_name(out.name + ".json"), summary)
    return summary
