"""The embedded guide: a small CLIP the harness trains itself when no CLIP weights are available.

Why our own: pretrained CLIP weights cannot be assumed on an offline machine, yet H2C needs an
image/text space where "clear" and "hazy" are separable directions. Following degradation-aware
CLIP variants (DA-CLIP, VLU-Net), we train a tiny open_clip model on image-caption pairs made from
the ``guide`` photo pool (:mod:`harness.data.photos`, shared with no other pool) and procedural
scenes, degraded by our haze synthesizer at known strengths and captioned accordingly.

What makes its gradient lead towards clear images rather than fool the loss (measured with
``harness guide probe``; see ``docs/guide.md``):

- negatives for the known failure modes: global colour casts and tinted monochromes, noise,
  stripes and blocking are captioned as such, never as "clear";
- colour and exposure jitter on every class, scale jitter (crops of 35-100 % of the photo), flips
  and 90-degree turns (adaptation patches are turned too), and a little Gaussian noise on every
  image, so no single pixel pattern defines a class;
- adversarial training of the image tower (FGSM from a random start, radius ``adversarial``, on
  half of each batch): the largest single gain, monotone in the radius up to the default 0.25;
- gradient alignment (``align_weight``): the pixel gradient of the clear score is trained, by
  double backprop, to point from a degraded crop towards its clean crop;
- optionally, the alignment is also trained off that line (``align_radius``: at points where sign
  steps up the clear score lead, as pixel descent does) and the adversarial crops come from PGD
  (``adversarial_steps``); with random views, descent then ends above the input in PSNR but not in
  SSIM (colour speckle), so both stay off;
- optionally, a fixed input filter in front of the image tower (``blur``, ``global_chroma``, see
  ``model.InputFilter``): descent from the hazy input then raises PSNR without speckle or blotches,
  but adaptation gains less than with the default (docs/guide.md); off by default;
- optionally, the H2C loss looks at each image through several random views (``views``, see
  ``h2c.py``); measured, it does not help this guide;
- optionally (``rank_weight``), the H2C loss itself is trained to rank by closeness to the clean
  crop (points on the line from hazy to clean, and the clean crop against versions of it missed the
  way a dehazer misses it): the cosine ignores how far an output moved, and this makes adaptation
  keep removing haze when the target set grows (docs/guide.md); off by default;
- optionally (``cast_weight``), the H2C loss is trained to score a hazy crop's clean crop above the
  hazy crop recoloured (a strong cast or a tinted monochrome); measured, it does not stop casts
  winning on the dev set (docs/guide.md); off by default.

Training runs on the engine (:class:`harness.engine.loop.TrainLoop`): seeded, resumable, about two
minutes on two CPU cores, then cached as safetensors keyed by a hash of its configuration. Its
optimiser skips the token table's untouched rows (:class:`harness.engine.optim.RowSparseAdamW`:
AdamW's result, bit for bit).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import open_clip
import torch

from harness.engine.strategy import Strategy, current_strategy
from harness.guide.model import TINY_MODEL, Guide, create_model, with_input_filter
from harness.guide.model import image_size as input_size
from harness.guide.pairs import BETA, CAPTION_CLASSES, make_pairs
from harness.guide.training import train_guide
from harness.store import (
    file_lock,
    file_sha256,
    load_weights,
    save_weights,
    weights_ready,
)
from harness.ui.progress import RunProgress, active_progress

VERSION = 2  # bump when the data recipe changes, to invalidate caches


def cache_dir(root: Path | None = None) -> Path:
    base = Path(root) if root else Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "dehaze-harness"))
    return base / "guides"


def tiny_clip(model_name: str = TINY_MODEL, image_size: int = 64, blur: float = 0.0,
              global_chroma: bool = False) -> torch.nn.Module:
    """The embedded guide's untrained model: a tiny open_clip at ``image_size``, its image tower
    behind an input filter when ``blur`` or ``global_chroma`` ask for one."""
    return with_input_filter(create_model(model_name, force_image_size=image_size), blur, global_chroma)


def train_embedded(steps: int, seed: int, state_path: Path, batch_size: int = 64, pool: int = 2048,
                   lr: float = 5e-4, noise: float = 0.02, model_name: str = TINY_MODEL, progress=None,
                   strategy: Strategy | None = None, image_size: int = 64, blur: float = 0.0,
                   global_chroma: bool = False, grey: float = 0.0, **objective) -> tuple[torch.nn.Module, dict]:
    """Train the tiny CLIP from scratch on captioned degraded crops; returns (model, training summary).
    ``blur``, ``global_chroma``: its image tower's input filter (:func:`tiny_clip`); ``grey``: the share
    of monochrome crops (:func:`harness.guide.pairs.make_pairs`); ``objective``: the loss options of
    :class:`harness.guide.training.GuideStepper`.

    One process trains it (the others of a torchrun wait on the cache's lock), so by default on this
    process's device alone, never with the run's DDP/DeepSpeed strategy."""
    strategy = strategy or Strategy(current_strategy().device)
    torch.manual_seed(seed)
    model = tiny_clip(model_name, image_size, blur, global_chroma)
    data = make_pairs(pool, image_size, seed, grey=grey)
    result = train_guide(model, open_clip.get_tokenizer(model_name), data, steps=steps, lr=lr,
                         batch_size=batch_size, noise=noise, seed=seed, state_path=state_path,
                         stage="embedded guide", progress=progress, strategy=strategy, **objective)
    final = result.curve[-1]["loss"] if result.curve else float("nan")
    return model, {"steps": steps, "seed": seed, "final_loss": final, "seconds": result.seconds,
                   "curve": result.curve}


def config_key(steps: int, seed: int, **training) -> str:
    """The hash naming the guide these settings train: its architecture, data recipe and training
    settings (and ``VERSION``); the cache file's name, and what a result adapted with it records."""
    from harness.hashing import stable_hash

    model_name = training.get("model_name", TINY_MODEL)
    return stable_hash({"model": json.loads(Path(__file__).with_name(f"{model_name}.json").read_text()),
                        "classes": CAPTION_CLASSES, "beta": BETA, "steps": steps, "seed": seed, "version": VERSION,
                        **training})


def load_embedded(steps: int = 600, seed: int = 0, cache: Path | None = None, progress: bool = True,
                  use: dict | None = None, **training) -> Guide:
    """The embedded guide, trained on first use and loaded from the cache afterwards; ``use``: how the
    loss uses it (the :class:`Guide` fields views, view_scale, gradient_blur, gradient_global_chroma)."""
    model_name = training.get("model_name", TINY_MODEL)
    key = config_key(steps, seed, **training)
    path = cache_dir(cache) / f"{key}.safetensors"
    with file_lock(path.with_name(f".{key}.lock")):  # torchrun ranks: one trains, the others wait and load
        if weights_ready(path):
            model = tiny_clip(model_name, **{k: training[k] for k in ("image_size", "blur", "global_chroma")
                                             if k in training})
            summary = load_weights(path, model)
        else:
            state = path.with_name(f".{key}.state.pt")
            with ExitStack() as stack:
                # inside `harness run` a task of the run's progress; alone, our own (bars on a terminal, lines otherwise)
                run = active_progress() or (stack.enter_context(RunProgress(stream=sys.stderr)) if progress else None)
                update, finish = run.task("embedded guide training") if run else (None, lambda: None)
                model, summary = train_embedded(steps, seed, state, progress=update, **training)
                finish()
            path.parent.mkdir(parents=True, exist_ok=True)
            save_weights(path, model, summary)
            state.unlink(missing_ok=True)  # our own resumable state, no longer needed
    pre = open_clip.get_model_preprocess_cfg(model)
    info = {"type": "embedded", "model": model_name, "config_hash": key, "pretrained": str(path),
            "sha256": file_sha256(path), **(use or {}),
            "training": {k: v for k, v in summary.items() if k != "curve"}}
    return Guide(model, open_clip.get_tokenizer(model_name), input_size(model),
                 tuple(pre["mean"]), tuple(pre["std"]), info, **(use or {}))
