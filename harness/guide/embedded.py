"""The embedded guide: a small CLIP the harness trains itself when no CLIP weights are available.

Why our own: pretrained CLIP weights cannot be assumed on an offline machine, yet H2C needs an
image/text space where "clear" and "hazy" are separable directions. Following degradation-aware
CLIP variants (DA-CLIP, VLU-Net), we train a tiny open_clip model (``harness-tiny-clip.json``) on
image-caption pairs made from scikit-image's shipped photos and procedural scenes, degraded by our
haze synthesizer at known strengths and captioned accordingly. Training is seeded, takes about a
minute on two CPU cores, and is cached as safetensors keyed by a hash of its configuration.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file

from harness.data import synth
from harness.guide.model import TINY_MODEL, Guide, create_model
from harness.store import atomic_write_json, file_lock, file_sha256

# (class, captions, degradation) -- the captions include the default H2C prompts.
CAPTION_CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("clear", ("a clear photo", "a clear photo of a scene", "a sharp photo on a clear day")),
    ("light", ("a photo with light haze", "a slightly hazy photo")),
    ("haze", ("a photo with haze", "a hazy photo", "a foggy photo")),
    ("heavy", ("a photo with heavy haze", "a photo with dense fog")),
    ("uneven", ("a photo with uneven colored haze", "a photo with patchy haze")),
    ("night", ("a photo with nighttime haze", "a hazy photo at night")),
]
BETA = {"light": (0.3, 0.7), "haze": (0.8, 1.6), "heavy": (1.8, 3.0)}
VERSION = 1  # bump when the data recipe changes, to invalidate caches


def cache_dir(root: Path | None = None) -> Path:
    base = Path(root) if root else Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "dehaze-harness"))
    return base / "guides"


def _photos() -> list[tuple[np.ndarray, np.ndarray | None]]:
    from harness.data.datasets import skimage_photos

    return skimage_photos()


def _crop(image: np.ndarray, depth: np.ndarray | None, size: int, rng: np.random.Generator):
    h, w = image.shape[:2]
    side = int(rng.uniform(0.35, 1.0) * min(h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = torch.from_numpy(np.ascontiguousarray(image[top:top + side, left:left + side].transpose(2, 0, 1)))
    crop = F.interpolate(crop[None], size=(size, size), mode="area")[0].numpy().transpose(1, 2, 0)
    if depth is not None:
        d = torch.from_numpy(np.ascontiguousarray(depth[top:top + side, left:left + side]))[None, None]
        depth = F.interpolate(d.float(), size=(size, size), mode="area")[0, 0].numpy()
    return crop, depth


def _degrade(clear: np.ndarray, depth: np.ndarray | None, label: str, rng: np.random.Generator) -> np.ndarray:
    if label == "clear":
        return clear
    depth = synth.estimate_depth(clear) if depth is None else depth
    if label in BETA:
        beta, airlight = rng.uniform(*BETA[label]), rng.uniform(0.7, 1.0)
        return np.clip(synth.scatter(clear, synth.transmission(depth, beta), airlight), 0, 1)
    return synth.synthesize(clear, "nonuniform" if label == "uneven" else "night", rng, depth=depth)


def make_pairs(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` degraded crops (N, 3, size, size) and their class indices into CAPTION_CLASSES."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    images, labels = [], []
    for i in range(count):
        if rng.random() < 0.6:
            image, depth = photos[int(rng.integers(len(photos)))]
            clear, depth = _crop(image, depth, size, rng)
        else:
            clear, depth = synth.procedural_scene(size, rng)
        label = i % len(CAPTION_CLASSES)
        if rng.random() < 0.5:
            clear = clear[:, ::-1]
            depth = depth[:, ::-1] if depth is not None else None
        hazy = _degrade(np.ascontiguousarray(clear), None if depth is None else np.ascontiguousarray(depth),
                        CAPTION_CLASSES[label][0], rng)
        images.append(torch.from_numpy(np.ascontiguousarray(hazy.transpose(2, 0, 1))).float())
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def train_embedded(steps: int, seed: int, batch_size: int = 64, pool: int = 1536, lr: float = 5e-4,
                   progress: bool = True) -> tuple[torch.nn.Module, dict]:
    """Train the tiny CLIP on captioned degraded crops; returns (model, training summary)."""
    torch.manual_seed(seed)
    model = create_model(TINY_MODEL)
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)
    pre = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    images, labels = make_pairs(pool, model.visual.image_size[0], seed)
    images = (images - mean) / std
    tokens = [tokenizer(list(captions)) for _, captions in CAPTION_CLASSES]
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("training the embedded guide", total=steps)
        for _ in range(steps):
            idx = torch.randint(len(images), (batch_size,), generator=generator)
            x = images[idx]
            flip = torch.rand(batch_size, generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            # one caption per class each step, so the text tower learns every paraphrase
            pick = [int(torch.randint(len(t), (1,), generator=generator)) for t in tokens]
            text = torch.cat([t[j:j + 1] for t, j in zip(tokens, pick)])
            img_emb = model.encode_image(x, normalize=True)
            txt_emb = model.encode_text(text, normalize=True)
            logits = model.logit_scale.exp() * img_emb @ txt_emb.T
            loss = F.cross_entropy(logits, labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            loss_value = loss.item()
            bar.update(task, advance=1, description=f"training the embedded guide loss={loss_value:.3f}")
    model.eval()
    return model, {"steps": steps, "seed": seed, "final_loss": loss_value, "seconds": time.perf_counter() - start}


def load_embedded(steps: int = 400, seed: int = 0, cache: Path | None = None, progress: bool = True) -> Guide:
    """The embedded guide, trained on first use and loaded from the cache afterwards."""
    from harness.hashing import stable_hash

    config = {"model": json.loads(Path(__file__).with_name(f"{TINY_MODEL}.json").read_text()),
              "classes": CAPTION_CLASSES, "beta": BETA, "steps": steps, "seed": seed, "version": VERSION}
    key = stable_hash(config)
    path = cache_dir(cache) / f"{key}.safetensors"
    meta_path = path.with_suffix(".json")
    model = create_model(TINY_MODEL)
    with file_lock(path.with_name(f".{key}.lock")):  # torchrun ranks: one trains, the others wait and load
        if path.is_file() and meta_path.is_file():
            model.load_state_dict(load_file(str(path)))
            summary = json.loads(meta_path.read_text())
        else:
            model, summary = train_embedded(steps, seed, progress=progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            os.replace(tmp, path)
            atomic_write_json(meta_path, summary)
    pre = open_clip.get_model_preprocess_cfg(model)
    info = {"type": "embedded", "model": TINY_MODEL, "config_hash": key, "pretrained": str(path),
            "sha256": file_sha256(path), "training": summary}
    return Guide(model, open_clip.get_tokenizer(TINY_MODEL), int(model.visual.image_size[0]),
                 tuple(pre["mean"]), tuple(pre["std"]), info)
