"""FADE (Choi, You and Bovik, TIP 2015) in torch: batched, on any device, step for step the reference.

Why our own: the reference, ``fade-python`` (``pyfade``, a port of the authors' MATLAB code), runs
in numpy/numba on one CPU core, and the one public torch port resizes where the reference crops and
changes several steps: no faithful GPU FADE exists. This module follows the reference's steps and
reads the model files ``pyfade`` ships (the fog-free and foggy multivariate Gaussians, and MATLAB's
filter values on windows of one grey level).

Steps, for B images of one size at a time:

1. 8-bit quantisation ``floor(255 x + 0.5)`` and the top-left crop to whole 8x8 patches.
2. Pixel maps: MATLAB's ``rgb2gray`` luma rounded to integers; its local mean and deviation with a
   7x7 Gaussian (sigma 7/6, replicated border; windows of a single grey level take MATLAB's values
   from the table), MSCN coefficients ``(I - mu) / (sigma + 1)`` and ``sigma / mu``; dark channel;
   HSV saturation; opponent channels ``R - G`` and ``(R + G) / 2 - B``; contrast energy of grey,
   yellow-blue and red-green: second-derivative-of-Gaussian filters (sigma 3.25, 20 taps) on the
   image extended by its first and last 10 rows and columns (copied, not mirrored), normalised by
   each image's largest response and thresholded.
3. Per 8x8 patch, 12 features: MSCN variance; variances of the negative and of the positive
   products of vertically adjacent MSCN coefficients (the row above; the first row pairs with the
   last); mean sigma; mean sigma/mu; the three mean contrast energies; entropy of the 8-bit luma;
   mean dark channel; mean saturation; colourfulness. Then ``log(1 + f)``.
4. Per patch, the Mahalanobis distance to each model, whose covariance gets the variance of the
   patch's own 12 features added to every entry (solved in closed form, Sherman-Morrison);
   ``D = mean fog-free distance / (mean foggy distance + 1)``, patches with NaN features left out.

Numerics: float64 throughout, as the reference. The model covariances have condition numbers of
1.0e3 (fog-free) and 1.2e5 (foggy), so float32 would lose about 1e-2 of the distance, and the local
variance ``E[I^2] - mu^2`` of 8-bit values cancels 6.5e4-sized terms. Results match ``pyfade`` to
rounding except where an exact tie is decided by rounding: the sign of an MSCN product that is zero
in exact arithmetic (which of the two variance sets it joins) and a luma exactly halfway between
two integers; see ``tests/test_fade_torch.py`` and ``benchmarks/fade_throughput.py`` for the
measured differences.

Memory: images are processed in strips of whole patch rows with halos; this is exact because every
map is local except the contrast-energy normalisation, a per-image maximum taken in a first pass,
so a 24-megapixel photo needs a few hundred MB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from harness.errors import HarnessError
from harness.metrics.filters import correlate

PATCH = 8
MIN_SIDE = 16  # the contrast-energy border copies 10 rows and columns: the reference fails below 2 patches
_GRAY_WEIGHTS = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # MATLAB rgb2gray
_CE_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_CE_THRESHOLDS = (9.225496406318721e-004 * 255.0, 8.969246659629488e-004 * 255.0,
                  2.069284034165411e-004 * 255.0)  # grey, yellow-blue, red-green
_CE_SEMISATURATION = 0.1
_CE_BORDER = 10
_MSCN_RADIUS = 3


def pyfade_model_dir() -> Path:
    """The folder of model files that ``pyfade`` ships."""
    import pyfade

    return Path(pyfade.__file__).resolve().parent / "models"


@dataclass(frozen=True)
class _Gaussian:
    """One model: mean, (cov / 2)^-1, its row sums and their total (for the closed-form solve)."""

    mu: torch.Tensor
    half_cov_inv: torch.Tensor
    inv_ones: torch.Tensor
    ones_inv_ones: float


@dataclass(frozen=True)
class FadeModels:
    fogfree: _Gaussian
    foggy: _Gaussian
    const_mu_offset: torch.Tensor  # MATLAB's local mean minus the grey level, per grey level
    const_m2_offset: torch.Tensor  # same for the local second moment


def _gaussian(mat: dict, key: str) -> _Gaussian:
    import numpy as np

    cov = np.asarray(mat[f"cov_{key}param"], np.float64)
    half_cov_inv = np.linalg.inv(cov / 2.0)
    half_cov_inv = (half_cov_inv + half_cov_inv.T) / 2  # exactly symmetric
    inv_ones = half_cov_inv.sum(axis=1)
    return _Gaussian(torch.from_numpy(np.asarray(mat[f"mu_{key}param"], np.float64).reshape(-1)),
                     torch.from_numpy(half_cov_inv), torch.from_numpy(inv_ones), float(inv_ones.sum()))


@lru_cache(maxsize=4)
def load_models(model_dir: str | None = None) -> FadeModels:
    """The fog-free and foggy models from ``model_dir`` (default: pyfade's) and MATLAB's table."""
    from scipy.io import loadmat

    folder = Path(model_dir) if model_dir is not None else pyfade_model_dir()
    files = {name: folder / f"natural_{name}_image_features_ps8.mat" for name in ("fogfree", "foggy")}
    table = pyfade_model_dir() / "matlab_constant_window_lookup.mat"
    for path in (*files.values(), table):
        if not path.is_file():
            raise HarnessError(f"fade: model file {path} not found",
                               "reinstall fade-python or set metrics.fade.model_dir")
    lookup = loadmat(table)
    return FadeModels(
        _gaussian(loadmat(files["fogfree"]), "fogfree"), _gaussian(loadmat(files["foggy"]), "foggy"),
        torch.from_numpy(lookup["mu_offsets"].astype("float64").reshape(-1)),
        torch.from_numpy(lookup["m2_offsets"].astype("float64").reshape(-1)),
    )


@lru_cache(maxsize=1)
def _mscn_taps() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Column and row factors of MATLAB's ``fspecial('gaussian', 7, 7/6)`` normalised to sum 1, as the
    reference factors it (rank-1 SVD), so that the filter sums round exactly as the reference's."""
    import numpy as np

    x = np.arange(-_MSCN_RADIUS, _MSCN_RADIUS + 1, dtype=np.float64)
    kernel = np.exp(-(x[None, :] ** 2 + x[:, None] ** 2) / (2.0 * (7.0 / 6.0) ** 2))
    kernel = kernel / kernel.sum()  # fspecial normalises,
    kernel = kernel / kernel.sum()  # and FADE's code normalises again
    u, s, vh = np.linalg.svd(kernel)
    column, row = np.sqrt(s[0]) * u[:, 0], np.sqrt(s[0]) * vh[0]
    if column[_MSCN_RADIUS] < 0:
        column, row = -column, -row
    return tuple(column.tolist()), tuple(row.tolist())


def _symmetric_filter(x: torch.Tensor, taps: tuple[float, ...], dim: int) -> torch.Tensor:
    """Valid correlation with a symmetric odd filter, summed as scipy's ``correlate1d`` sums one:
    the centre, then each mirrored pair from the outside in (separate multiply and add, no FMA)."""
    r = len(taps) // 2
    n = x.shape[dim] - 2 * r
    out = x.narrow(dim, r, n) * taps[r]
    for j in range(r, 0, -1):
        pair = x.narrow(dim, r - j, n) + x.narrow(dim, r + j, n)
        out.add_(pair.mul_(taps[r - j]))
    return out


@lru_cache(maxsize=1)
def _ce_taps() -> tuple[float, ...]:
    """The contrast-energy filter (second derivative of a Gaussian, sigma 3.25, x = -9.75:9.75),
    reversed: ``conv2(..., 'same')`` becomes a correlation over columns ``c - 9 .. c + 10``."""
    sigma, n = 3.25, 20
    x = [-9.75 + i for i in range(n)]
    gauss = [math.exp(v * v / (-2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma) for v in x]
    total = sum(gauss)
    gauss = [g / total for g in gauss]
    gx = [(v * v / sigma ** 4 - 1 / sigma ** 2) * g for v, g in zip(x, gauss)]
    mean = sum(gx) / n
    gx = [g - mean for g in gx]
    norm = sum(0.5 * v * v * g for v, g in zip(x, gx))
    return tuple(g / norm for g in reversed(gx))


def _window_is_flat(gray: torch.Tensor, size: int) -> torch.Tensor:
    """True where the ``size`` x ``size`` window (valid positions) holds one grey level."""
    hi = lo = gray
    for dim in (-2, -1):
        n = gray.shape[dim] - size + 1
        hi = torch.stack([hi.narrow(dim, j, n) for j in range(size)]).amax(0)
        lo = torch.stack([lo.narrow(dim, j, n) for j in range(size)]).amin(0)
    return hi == lo


def _extended(x: torch.Tensor, dim: int, lo: int, hi: int, border: str) -> torch.Tensor:
    """Positions ``lo..hi-1`` of ``x`` along ``dim``; those outside ``0..size-1`` follow ``border``:
    ``"replicate"`` repeats the edge (imfilter's), ``"copy"`` maps -k to 10 - k and size - 1 + k to
    size - 11 + k (FADE's ``border_in``: the first and last 10 rows copied in order, not mirrored)."""
    size = x.shape[dim]

    def edge(start: int, length: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = length
        return x.narrow(dim, start, 1).expand(shape)

    parts = []
    if lo < 0:
        parts.append(edge(0, -lo) if border == "replicate" else x.narrow(dim, _CE_BORDER + lo, -lo))
    parts.append(x.narrow(dim, max(lo, 0), min(hi, size) - max(lo, 0)))
    if hi > size:
        parts.append(edge(size - 1, hi - size) if border == "replicate"
                     else x.narrow(dim, size - _CE_BORDER, hi - size))
    return torch.cat(parts, dim) if len(parts) > 1 else parts[0]


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)


def _gray(q: torch.Tensor) -> torch.Tensor:
    """MATLAB ``rgb2gray`` of integer-valued RGB (B,3,...) -> rounded luma (B,...)."""
    w = _GRAY_WEIGHTS
    return _round_half_up(q[:, 0] * w[0] + q[:, 1] * w[1] + q[:, 2] * w[2])


def _ce_channels(q: torch.Tensor) -> torch.Tensor:
    """Grey, yellow-blue and red-green channels of the contrast energy (B,3,...), not rounded."""
    r, g, b = q[:, 0], q[:, 1], q[:, 2]
    w = _CE_GRAY_WEIGHTS
    return torch.stack([r * w[0] + g * w[1] + b * w[2], 0.5 * r + 0.5 * g - b, r - g], dim=1)


class _Strips:
    """Maps of rows ``a..b-1`` of a batch of 8-bit images ``q8`` (B,3,H,W), computed with their halos."""

    def __init__(self, q8: torch.Tensor, models: FadeModels, dtype: torch.dtype):
        self.q8, self.dtype = q8, dtype
        self.h, self.w = q8.shape[-2:]
        dev = q8.device
        self.ce_taps = torch.tensor(_ce_taps(), dtype=dtype, device=dev)
        self.mu_offset = models.const_mu_offset.to(dev, dtype)
        self.m2_offset = models.const_m2_offset.to(dev, dtype)

    def rows(self, a: int, b: int) -> torch.Tensor:
        """Rows a..b-1 (within the image) as floats (B,3,n,W)."""
        return self.q8[..., a:b, :].to(self.dtype)

    def contrast(self, a: int, b: int) -> torch.Tensor:
        """Gradient magnitude of the three contrast-energy channels, rows a..b-1 (B,3,n,W)."""
        down = _ce_channels(_extended(self.q8, -2, a - (_CE_BORDER - 1), b + _CE_BORDER, "copy").to(self.dtype))
        across = _extended(down[..., _CE_BORDER - 1:_CE_BORDER - 1 + b - a, :], -1, -(_CE_BORDER - 1),
                           self.w + _CE_BORDER, "copy")
        cx, cy = correlate(across, self.ce_taps, -1), correlate(down, self.ce_taps, -2)
        return torch.sqrt(cx * cx + cy * cy)

    def mscn(self, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MSCN, sigma, sigma/mu) of rows a..b-1 (B,n,W each)."""
        r = _MSCN_RADIUS
        q = _extended(_extended(self.q8, -2, a - r, b + r, "replicate"), -1, -r, self.w + r, "replicate")
        gray = _gray(q.to(self.dtype))  # (B, n + 6, W + 6), borders replicated
        column, row = _mscn_taps()
        mu = _symmetric_filter(_symmetric_filter(gray, column, -2), row, -1)
        m2 = _symmetric_filter(_symmetric_filter(gray * gray, column, -2), row, -1)
        center = gray[:, r:-r, r:-r]
        # MATLAB's imfilter leaves rounding residue on windows of one grey level; the table holds it
        flat = _window_is_flat(gray.to(torch.uint8), 2 * r + 1)
        level = center.long()
        mu = torch.where(flat, center + self.mu_offset[level], mu)
        m2 = torch.where(flat, center * center + self.m2_offset[level], m2)
        sigma = torch.sqrt(torch.abs(m2 - mu * mu))
        return (center - mu) / (sigma + 1.0), sigma, sigma / mu


def _cells(x: torch.Tensor) -> torch.Tensor:
    """(..., n, W) -> a (..., n/8, 8, W/8, 8) view: the 8x8 patches, reduced over ``_IN_PATCH``."""
    *lead, n, w = x.shape
    return x.reshape(*lead, n // PATCH, PATCH, w // PATCH, PATCH)


_IN_PATCH = (-3, -1)


def _patch_mean(x: torch.Tensor) -> torch.Tensor:
    return _cells(x).mean(dim=_IN_PATCH)


def nanvar(x: torch.Tensor, dim: int | tuple[int, ...] = -1) -> torch.Tensor:
    """Sample variance (ddof 1) over ``dim`` ignoring NaN, two-pass; 0 for one value, NaN for none."""
    valid = ~torch.isnan(x)
    count = valid.sum(dim)
    mean = torch.where(valid, x, 0).sum(dim, keepdim=True) / valid.sum(dim, keepdim=True)
    dev = torch.where(valid, x - mean, 0)
    var = (dev * dev).sum(dim) / (count - 1)
    return torch.where(count == 1, 0.0, torch.where(count == 0, torch.nan, var))


def _patch_std(x: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (ddof 1) of each patch, two-pass."""
    cells = _cells(x)
    dev = cells - cells.mean(dim=_IN_PATCH, keepdim=True)
    return torch.sqrt((dev * dev).sum(dim=_IN_PATCH) / (PATCH * PATCH - 1))


@lru_cache(maxsize=4)
def _entropy_terms(device: str, dtype: torch.dtype) -> torch.Tensor:
    """``-p log2 p`` for a grey level seen ``count`` times in a patch, by count (0..64)."""
    p = torch.arange(PATCH * PATCH + 1, dtype=torch.float64) / (PATCH * PATCH)
    terms = torch.where(p > 0, -(p * torch.log2(p)), 0.0)
    return terms.to(device=device, dtype=dtype)


def patch_entropy(gray: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of the 8-bit levels in each 8x8 patch of (B, n, W) -> (B, n/8, W/8)."""
    b, n, w = gray.shape
    levels = _cells(gray.to(torch.uint8)).permute(0, 1, 3, 2, 4).reshape(b, n // PATCH, w // PATCH, PATCH * PATCH)
    s = levels.sort(dim=-1).values
    start = torch.ones_like(s, dtype=torch.bool)
    start[..., 1:] = s[..., 1:] != s[..., :-1]
    run = start.cumsum(-1) - 1  # which distinct level each value is
    counts = torch.zeros_like(run).scatter_add_(-1, run, torch.ones_like(run))
    return _entropy_terms(str(gray.device), gray.dtype)[counts].sum(-1)


def _strip_features(maps: _Strips, a: int, b: int, contrast: torch.Tensor,
                    contrast_max: torch.Tensor) -> torch.Tensor:
    """The 12 log features of the patches of rows a..b-1: (B, (b-a)/8, W/8, 12)."""
    mscn, sigma, cv = maps.mscn(a, b)
    above = maps.mscn(a - 1, a)[0] if a > 0 else maps.mscn(maps.h - 1, maps.h)[0]
    pair = mscn * torch.cat([above, mscn[:, :-1]], dim=1)
    pair_neg = torch.where(pair > 0, torch.nan, pair)
    pair_pos = torch.where(pair < 0, torch.nan, pair)

    cmax = contrast_max[:, :, None, None]
    response = contrast * cmax / (contrast + cmax * _CE_SEMISATURATION)  # 0/0 on a flat image: NaN -> 0 below
    thresholds = torch.tensor(_CE_THRESHOLDS, dtype=response.dtype, device=response.device)
    response = response - thresholds[None, :, None, None]
    ce = torch.where(response > 1e-7, response, 0.0)

    q = maps.rows(a, b)
    r, g, bl = q[:, 0], q[:, 1], q[:, 2]
    norm = q / 255.0
    top, dark = norm.amax(1), norm.amin(1)
    saturation = torch.where(top > 0, (top - dark) / torch.where(top > 0, top, 1.0), 0.0)
    rg, yb = r - g, 0.5 * (r + g) - bl
    colourfulness = (torch.sqrt(_patch_std(rg) ** 2 + _patch_std(yb) ** 2)
                     + 0.3 * torch.sqrt(_patch_mean(rg) ** 2 + _patch_mean(yb) ** 2))

    feats = [
        nanvar(_cells(mscn), _IN_PATCH), nanvar(_cells(pair_pos), _IN_PATCH), nanvar(_cells(pair_neg), _IN_PATCH),
        _patch_mean(sigma), _patch_mean(cv), *_patch_mean(ce).unbind(1),
        patch_entropy(_gray(q)), _patch_mean(dark), _patch_mean(saturation), colourfulness,
    ]
    return torch.log1p(torch.stack(feats, dim=-1))


def _distance(feat: torch.Tensor, model: _Gaussian) -> torch.Tensor:
    """Per-patch distance to ``model`` with the patch's feature variance added to the covariance."""
    dev = feat.device
    mu, inv, inv_ones = (t.to(dev, torch.float64) for t in (model.mu, model.half_cov_inv, model.inv_ones))
    diff = mu - feat
    base = (diff * (diff @ inv)).sum(-1)
    alpha = nanvar(feat) / 2.0
    along = diff @ inv_ones
    d2 = base - alpha * along * along / (1.0 + alpha * model.ones_inv_ones)
    d2 = torch.where((d2 < 0) & (d2.abs() < 1e-12), 0.0, d2)
    return torch.sqrt(d2)


def quantize(images: torch.Tensor, chunk_pixels: int = 1 << 20) -> torch.Tensor:
    """Bx3xHxW floats in [0, 1] (or uint8) -> integer levels 0..255 as uint8, as the reference rounds
    (``floor(255 x + 0.5)`` in the input's precision); in row chunks, so temporaries stay small."""
    if images.dtype == torch.uint8:
        return images
    out = torch.empty(images.shape, dtype=torch.uint8, device=images.device)
    step = max(1, chunk_pixels // max(1, images.shape[0] * images.shape[-1]))
    for a in range(0, images.shape[-2], step):
        x = torch.nan_to_num(images[..., a:a + step, :], nan=0.0, posinf=1.0, neginf=0.0)
        out[..., a:a + step, :] = torch.floor((x * 255.0).clamp_(0, 255) + 0.5).clamp_(0, 255)
    return out


def _strip_rows(batch: int, h: int, w: int, strip_pixels: int) -> int:
    rows = max(PATCH, strip_pixels // max(1, batch * w) // PATCH * PATCH)
    return min(rows, h)


def default_strip_pixels(device: torch.device | str) -> int:
    """Pixels per strip (all images of a batch together): ~300 bytes each at float64."""
    return 1 << 23 if torch.device(device).type == "cuda" else 1 << 20


@torch.no_grad()
def fade_maps(images: torch.Tensor, models: FadeModels | None = None, strip_pixels: int | None = None,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """FADE of a batch: ``(scores (B,), density maps (B, H//8, W//8))``, float64, on the input's device.

    ``images``: Bx3xHxW floats in [0, 1] or uint8, one size, at least 16x16. ``dtype`` of the pixel
    maps: float64 is the reference's; float32 only to measure what it loses (the distances stay float64).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise HarnessError(f"fade: expected a Bx3xHxW batch, got shape {tuple(images.shape)}")
    h, w = images.shape[-2] // PATCH * PATCH, images.shape[-1] // PATCH * PATCH
    if min(h, w) < MIN_SIDE:
        raise HarnessError(f"fade: image {tuple(images.shape[-2:])} is smaller than FADE's {MIN_SIDE}x{MIN_SIDE}",
                           "score larger images")
    models = models or load_models()
    q8 = quantize(images)[..., :h, :w]
    maps = _Strips(q8, models, dtype)
    batch = q8.shape[0]
    strip_pixels = strip_pixels or default_strip_pixels(q8.device)
    step = _strip_rows(batch, h, w, strip_pixels)
    starts = list(range(0, h, step))
    keep = len(starts) == 1 or batch * h * w <= 4 * strip_pixels  # else pass 2 recomputes the contrast
    contrasts, contrast_max = [], None
    for a in starts:  # pass 1: each image's largest contrast response per channel
        c = maps.contrast(a, min(a + step, h))
        m = c.amax(dim=(-2, -1))
        contrast_max = m if contrast_max is None else torch.maximum(contrast_max, m)
        if keep:
            contrasts.append(c)
    feats = []
    for i, a in enumerate(starts):
        b = min(a + step, h)
        c = contrasts[i] if keep else maps.contrast(a, b)
        feats.append(_strip_features(maps, a, b, c, contrast_max).to(torch.float64))
    feat = torch.cat(feats, dim=1)  # (B, H/8, W/8, 12)
    fogfree, foggy = _distance(feat, models.fogfree), _distance(feat, models.foggy)
    score = fogfree.flatten(1).nanmean(1) / (foggy.flatten(1).nanmean(1) + 1.0)
    return score, fogfree / (foggy + 1.0)
