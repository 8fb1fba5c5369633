"""Captioned degraded images: the data a guide learns "clear" versus "hazy" (and what is neither) from.

Each crop of a clean photo or procedural scene gets one class of ``CAPTION_CLASSES`` and the
degradation that class names: haze at three strengths (atmospheric scattering with the crop's
depth), non-uniform coloured haze, night haze, and the failure modes a fooled guide rewards, which
must never read as "clear": strong global colour casts and tinted monochromes, noise, stripes and
blocking. Every crop also gets a mild colour and exposure jitter, so no cast defines a class.
Optionally (``grey``) a share of the crops is made monochrome (R = G = B) before its degradation,
so a monochrome photo can be "clear" and the way out of its haze stays monochrome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.data import synth

# (class, captions) -- the captions include the default H2C prompts and the night prompt.
CAPTION_CLASSES: list[tuple[str, tuple[str, ...]]] = [
    ("clear", ("a clear photo", "a clear photo of a scene", "a sharp photo on a clear day")),
    ("light", ("a photo with light haze", "a slightly hazy photo")),
    ("haze", ("a photo with haze", "a hazy photo", "a foggy photo")),
    ("heavy", ("a photo with heavy haze", "a photo with dense fog")),
    ("uneven", ("a photo with uneven colored haze", "a photo with patchy haze")),
    ("night", ("a photo with nighttime haze", "a hazy photo at night")),
    ("cast", ("a photo with a color cast", "a tinted monochrome photo")),
    ("artifacts", ("a noisy photo with artifacts", "a photo with stripes and noise")),
]
BETA = {"light": (0.3, 0.7), "haze": (0.8, 1.6), "heavy": (1.8, 3.0)}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601


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


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild colour and exposure changes that keep a photo's class (per-channel gain, gamma)."""
    gain = rng.uniform(0.92, 1.08, size=3) * rng.uniform(0.85, 1.1)
    return np.clip(image * gain, 0, 1) ** rng.uniform(0.85, 1.15)


def _cast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong global colour cast, or a tinted monochrome (the collapse a fooled guide rewards)."""
    if rng.random() < 0.5:
        gain = rng.uniform(0.35, 1.3, size=3)
        gain[rng.integers(3)] = rng.uniform(1.1, 1.4)  # one channel clearly dominates
        return np.clip(image * gain, 0, 1)
    luma = image @ LUMA
    tint = rng.uniform(0.2, 1.0, size=3)
    tint /= tint.max()
    return np.clip(luma[..., None] * tint * rng.uniform(1.0, 1.4), 0, 1)


def _artifacts(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strong noise, periodic stripes or blocking (adversarial-looking patterns)."""
    h, w = image.shape[:2]
    pick = rng.integers(3)
    if pick == 0:
        return synth.gaussian_noise(image, rng.uniform(0.06, 0.15), rng)
    if pick == 1:
        rows = rng.random() < 0.5
        phase = np.arange(h if rows else w) * 2 * np.pi / rng.uniform(2, 8)
        wave = rng.uniform(0.06, 0.18) * np.sin(phase)[:, None] * rng.choice([-1.0, 1.0], size=3)[None]
        return np.clip(image + (wave[:, None] if rows else wave[None]), 0, 1).astype(np.float32)
    block = int(rng.integers(4, 9))
    offsets = rng.uniform(-0.12, 0.12, size=(-(-h // block), -(-w // block), 3))
    return np.clip(image + np.kron(offsets, np.ones((block, block, 1)))[:h, :w], 0, 1).astype(np.float32)


def _degrade(clear: np.ndarray, depth: np.ndarray | None, label: str, rng: np.random.Generator) -> np.ndarray:
    if label == "clear":
        return clear
    if label == "cast":
        return _cast(clear, rng)
    if label == "artifacts":
        return _artifacts(clear, rng)
    depth = synth.estimate_depth(clear) if depth is None else depth
    if label in BETA:
        beta, airlight = rng.uniform(*BETA[label]), rng.uniform(0.7, 1.0) + rng.uniform(-0.04, 0.04, size=3)
        return np.clip(synth.scatter(clear, synth.transmission(depth, beta), np.clip(airlight, 0, 1)), 0, 1)
    return synth.synthesize(clear, "nonuniform" if label == "uneven" else "night", rng, depth=depth)


@dataclass
class Captioned:
    """Degraded crops, their classes (indices into ``CAPTION_CLASSES``) and the clean crops they came from."""

    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    labels: torch.Tensor  # (N,)
    clean: torch.Tensor  # (N, 3, S, S): the crop before its degradation (equal to ``images`` for "clear")


def make_pairs(count: int, size: int, seed: int, photo_share: float = 0.6,
               photos: list[tuple[np.ndarray, np.ndarray | None]] | None = None, grey: float = 0.0) -> Captioned:
    """``count`` captioned degraded crops of side ``size``, classes in turn.

    A share ``photo_share`` are crops of ``photos`` (``(image, depth or None)``; default: the
    ``guide`` photo pool), the rest procedural scenes with exact depth. A share ``grey`` of the
    clean crops become their Rec. 601 luma after the jitter (0 draws nothing: the crops of a
    guide trained without it stay the same).
    """
    from harness.data.photos import pool

    rng = np.random.default_rng(seed)
    photos = pool("guide") if photos is None else photos
    images, labels, clean = [], [], []
    for i in range(count):
        if rng.random() < photo_share:
            image, depth = photos[int(rng.integers(len(photos)))]
            clear, depth = _crop(image, depth, size, rng)
        else:
            clear, depth = synth.procedural_scene(size, rng)
        label = i % len(CAPTION_CLASSES)
        clear = _jitter(clear, rng)
        if grey > 0 and rng.random() < grey:
            clear = np.repeat((clear @ LUMA)[..., None], 3, axis=-1)
        out = _degrade(np.ascontiguousarray(clear), depth, CAPTION_CLASSES[label][0], rng)
        images.append(torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float())
        clean.append(torch.from_numpy(np.ascontiguousarray(clear.transpose(2, 0, 1))).float())
        labels.append(label)
    return Captioned(torch.stack(images), torch.tensor(labels), torch.stack(clean))


def folder_photos(folder: Path) -> list[tuple[np.ndarray, None]]:
    """The clean photos of a folder (decoded by content), without depth."""
    from harness.data.io import list_images, read_image

    return [(read_image(p), None) for p in list_images(Path(folder))]
