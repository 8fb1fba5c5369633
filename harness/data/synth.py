"""Haze synthesis on HxWx3 float arrays in [0, 1]: pure functions driven by an explicit Generator.

Atmospheric scattering model (ASM): ``I = J t + A (1 - t)``, ``t = exp(-beta d)``, depth ``d`` in
[0, 1] (0 = nearest). Degradations (``KINDS``):

- ``asm``: uniform haze, ITS ranges (A in [0.7, 1], beta in [0.6, 1.8]).
- ``light``: uniform light haze (A in [0.7, 1], beta in [0.2, 0.6], so t >= 0.55): a source domain
  lighter than real haze, the gap adaptation exists to close (the quickstart pretrains on it).
- ``ridcp``: RIDCP's realistic pipeline in its published order: darkening gamma, Gaussian noise, haze
  with a per-channel colour shift and the depth map read as disparity, JPEG; each with its probability.
- ``nonuniform``: a smooth random field modulates beta, coloured airlight, Gaussian noise, JPEG.
- ``night``: low light, light sources with glow, dim coloured airlight.

When no depth is given, :func:`estimate_depth` supplies one (see its docstring for the heuristic).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image
from scipy import ndimage

from harness.errors import HarnessError


@dataclass(frozen=True)
class HazeRanges:
    """Airlight and scattering-coefficient ranges: an interval ``(lo, hi)`` or a tuple of choices."""

    airlight: tuple[float, ...]
    beta: tuple[float, ...]
    discrete: bool = False

    def sample(self, rng: np.random.Generator) -> tuple[float, float]:
        """Draw ``(A, beta)``."""
        if self.discrete:
            return float(rng.choice(self.airlight)), float(rng.choice(self.beta))
        return float(rng.uniform(*self.airlight)), float(rng.uniform(*self.beta))


ITS = HazeRanges(airlight=(0.7, 1.0), beta=(0.6, 1.8))
OTS = HazeRanges(airlight=(0.8, 0.85, 0.9, 0.95, 1.0),
                 beta=(0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2), discrete=True)
HAZE4K = HazeRanges(airlight=(0.5, 1.0), beta=(0.5, 2.0))
LIGHT = HazeRanges(airlight=(0.7, 1.0), beta=(0.2, 0.6))
RANGES = {"its": ITS, "ots": OTS, "haze4k": HAZE4K}

# RIDCP (Wu et al., CVPR 2023) realistic haze: parameters and probabilities in the published order.
RIDCP_GAMMA, RIDCP_P_GAMMA = (1.5, 3.0), 0.5
RIDCP_SIGMA, RIDCP_P_NOISE = (2 / 255, 25 / 255), 0.5
RIDCP_BETA, RIDCP_AIRLIGHT, RIDCP_SHIFT = (0.3, 1.5), (0.25, 1.0), 0.025
RIDCP_QUALITY, RIDCP_P_JPEG = (30, 95), 0.5


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3:
        raise HarnessError(f"haze synthesis needs an HxWx3 image, got shape {image.shape}",
                           "pass an RGB array (harness.data.io.read_image returns one)")
    return image


def transmission(depth: np.ndarray, beta: float | np.ndarray) -> np.ndarray:
    """``t = exp(-beta * depth)`` (``beta`` a scalar or a map broadcastable to ``depth``)."""
    return np.exp(-np.asarray(beta, dtype=np.float32) * np.asarray(depth, dtype=np.float32)).astype(np.float32)


def scatter(clear: np.ndarray, t: np.ndarray, airlight: float | np.ndarray) -> np.ndarray:
    """The ASM: ``I = J t + A (1 - t)``; ``airlight`` is a scalar, an RGB triple or an HxWx3 map."""
    clear = _check_image(clear)
    t = np.asarray(t, dtype=np.float32)
    if t.ndim == 2:
        t = t[..., None]
    a = np.asarray(airlight, dtype=np.float32)
    return (clear * t + a * (1.0 - t)).astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x, dtype=np.float32) if hi - lo < 1e-8 else ((x - lo) / (hi - lo)).astype(np.float32)


def estimate_depth(image: np.ndarray) -> np.ndarray:
    """Relative depth in [0, 1] (1 = far) from a clear image, by a documented heuristic.

    Blend of two cues, then smoothed: the colour attenuation prior of Zhu et al. (TIP 2015),
    ``d = 0.121779 + 0.959710 v - 0.780245 s`` (v = value, s = saturation: far scene points look
    brighter and less saturated), weight 0.5; and image position (rows nearer the top are farther,
    as in most outdoor photos), weight 0.5.
    """
    image = _check_image(image)
    v = image.max(axis=2)
    s = np.where(v > 1e-6, (v - image.min(axis=2)) / np.maximum(v, 1e-6), 0.0)
    cap = _normalise(0.121779 + 0.959710 * v - 0.780245 * s)
    rows = np.linspace(1.0, 0.0, image.shape[0], dtype=np.float32)[:, None]
    depth = 0.5 * cap + 0.5 * np.broadcast_to(rows, cap.shape)
    sigma = max(1.0, min(image.shape[:2]) / 32)
    return _normalise(ndimage.gaussian_filter(depth, sigma))


def random_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field in [0, 1]: ``cells`` x ``cells`` uniform noise, cubic-upsampled."""
    h, w = shape
    coarse = rng.uniform(0.0, 1.0, size=(cells + 3, cells + 3)).astype(np.float32)
    field = ndimage.zoom(coarse, ((h + 2 * h / cells) / coarse.shape[0], (w + 2 * w / cells) / coarse.shape[1]),
                         order=3, mode="nearest")
    oy, ox = int(h / cells), int(w / cells)
    return _normalise(field[oy:oy + h, ox:ox + w])


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at ``quality`` (1..95)."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` and clip to [0, 1]."""
    return np.clip(image + rng.normal(0.0, sigma, size=image.shape), 0, 1).astype(np.float32)


def asm_haze(clear: np.ndarray, rng: np.random.Generator, depth: np.ndarray | None = None,
             ranges: HazeRanges = ITS) -> np.ndarray:
    """Uniform haze with ``(A, beta)`` drawn from ``ranges`` (ITS by default)."""
    clear = _check_image(clear)
    depth = estimate_depth(clear) if depth is None else depth
    a, beta = ranges.sample(rng)
    return np.clip(scatter(clear, transmission(depth, beta), a), 0, 1)


def ridcp_haze(clear: np.ndarray, rng: np.random.Generator, depth: np.ndarray | None = None) -> np.ndarray:
    """RIDCP-style realistic haze (darken, noise, haze, JPEG, in that order, each with its probability).

    As in the published pipeline, the depth cue is used as disparity: ``depth`` (1 = far) becomes
    ``1 - depth`` before ``t = exp(-beta * map)``, so haze density follows the disparity map.
    """
    clear = _check_image(clear)
    depth = estimate_depth(clear) if depth is None else depth
    disparity = 1.0 - np.clip(depth, 0.0, 1.0)
    out = clear
    if rng.uniform() < RIDCP_P_GAMMA:
        out = out ** rng.uniform(*RIDCP_GAMMA)
    if rng.uniform() < RIDCP_P_NOISE:
        out = gaussian_noise(out, rng.uniform(*RIDCP_SIGMA), rng)
    beta = rng.uniform(*RIDCP_BETA)
    a = rng.uniform(*RIDCP_AIRLIGHT) + rng.uniform(-RIDCP_SHIFT, RIDCP_SHIFT, size=3)
    out = np.clip(scatter(out, transmission(disparity, beta), a), 0, 1)
    if rng.uniform() < RIDCP_P_JPEG:
        out = jpeg(out, rng.integers(RIDCP_QUALITY[0], RIDCP_QUALITY[1] + 1))
    return out.astype(np.float32)


def nonuniform_haze(clear: np.ndarray, rng: np.random.Generator, depth: np.ndarray | None = None) -> np.ndarray:
    """Non-uniform density (beta modulated 0.3x..1.7x by a smooth field), coloured airlight, noise, JPEG."""
    clear = _check_image(clear)
    depth = estimate_depth(clear) if depth is None else depth
    field = random_field(clear.shape[:2], rng, cells=int(rng.integers(2, 6)))
    beta = rng.uniform(0.8, 2.0) * (0.3 + 1.4 * field)
    base = rng.uniform(0.6, 0.95)
    tint = rng.uniform(-0.12, 0.12, size=3)  # yellowish/bluish airlight, as in smog and dusk haze
    out = np.clip(scatter(clear, transmission(depth, beta), np.clip(base + tint, 0.3, 1.0)), 0, 1)
    out = gaussian_noise(out, rng.uniform(1 / 255, 8 / 255), rng)
    return jpeg(out, rng.integers(40, 91))


def night_haze(clear: np.ndarray, rng: np.random.Generator, depth: np.ndarray | None = None,
               lights: int | None = None) -> np.ndarray:
    """Nighttime haze: low light (gain and gamma), 1-4 coloured light sources whose glow falls off
    as a Gaussian core plus a long power-law tail, and dim airlight lit by those sources."""
    clear = _check_image(clear)
    depth = estimate_depth(clear) if depth is None else depth
    h, w = clear.shape[:2]
    dark = rng.uniform(0.15, 0.4) * clear ** rng.uniform(1.5, 2.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    glow = np.zeros((h, w, 3), np.float32)
    for _ in range(int(rng.integers(1, 5)) if lights is None else lights):
        cy, cx = rng.uniform(0, 0.7 * h), rng.uniform(0, w)
        size = rng.uniform(0.01, 0.05) * max(h, w)
        colour = np.array([1.0, rng.uniform(0.6, 0.95), rng.uniform(0.3, 0.8)], np.float32)  # sodium to white
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / size ** 2
        glow += (np.exp(-r2 / 2) + 0.3 / (1 + r2) ** 0.75)[..., None] * colour * rng.uniform(0.5, 1.0)
    beta = rng.uniform(0.5, 1.5)
    t = transmission(depth, beta)
    ambient = rng.uniform(0.03, 0.15) * np.array([0.8, 0.9, 1.0], np.float32)
    airlight = ambient + 0.5 * glow
    out = scatter(dark, t, airlight) + glow * t[..., None]
    return np.clip(gaussian_noise(np.clip(out, 0, 1), rng.uniform(1 / 255, 6 / 255), rng), 0, 1)


KINDS: dict[str, Callable[..., np.ndarray]] = {
    "asm": asm_haze,
    "ridcp": ridcp_haze,
    "nonuniform": nonuniform_haze,
    "night": night_haze,
    "light": partial(asm_haze, ranges=LIGHT),
}


def synthesize(clear: np.ndarray, kind: str, rng: np.random.Generator,
               depth: np.ndarray | None = None) -> np.ndarray:
    """Apply the degradation ``kind`` (one of ``KINDS``) to ``clear``."""
    if kind not in KINDS:
        raise HarnessError(f"unknown haze kind {kind!r}", f"use one of: {', '.join(KINDS)}")
    return KINDS[kind](clear, rng, depth=depth)


def procedural_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random outdoor-like scene and its depth (1 = far): sky, a ground plane receding to the
    horizon, and textured box/ellipse objects standing on it at random distances."""
    h = w = size
    horizon = int(rng.uniform(0.3, 0.55) * h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = np.array([0.45, 0.65, 0.95], np.float32) + rng.uniform(-0.1, 0.1, 3)
    ground = np.array([0.35, 0.45, 0.2], np.float32) + rng.uniform(-0.1, 0.1, 3)
    image = np.empty((h, w, 3), np.float32)
    depth = np.empty((h, w), np.float32)
    image[:horizon] = sky * (0.8 + 0.2 * (yy[:horizon, :, None] / max(horizon, 1)))
    depth[:horizon] = 1.0
    below = (yy[horizon:] - horizon + 1) / (h - horizon)
    depth[horizon:] = 0.95 * (1 - below) ** 2
    image[horizon:] = ground * (0.7 + 0.3 * random_field((h - horizon, w), rng, 8))[..., None]
    for _ in range(int(rng.integers(3, 8))):
        d = rng.uniform(0.05, 0.9)
        base_y = horizon + (1 - np.sqrt(d / 0.95)) * (h - horizon)  # where the ground has depth d
        oh, ow = rng.uniform(0.1, 0.5) * h * (1.1 - d), rng.uniform(0.05, 0.3) * w * (1.1 - d)
        cx = rng.uniform(0, w)
        if rng.uniform() < 0.5:
            mask = (np.abs(xx - cx) < ow / 2) & (yy > base_y - oh) & (yy <= base_y)
        else:
            mask = ((xx - cx) / (ow / 2)) ** 2 + ((yy - base_y + oh / 2) / (oh / 2)) ** 2 <= 1
        mask &= depth > d
        colour = rng.uniform(0.05, 0.9, 3).astype(np.float32)
        texture = 0.75 + 0.25 * random_field((h, w), rng, 16)
        image[mask] = (colour * texture[..., None])[mask]
        depth[mask] = d
    return np.clip(image, 0, 1), depth
