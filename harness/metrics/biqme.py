"""BIQME (Gu, Tao, Qiao, Lin, TNNLS 2017): blind quality of enhanced images from 17 features.

Features, in five groups as in the paper (our implementation; constants noted inline):
contrast (4): entropy of the 8-bit luma; contrast energy (Groen et al.) of the gray, yellow-blue and
red-green opponent channels. Sharpness (3): log-energy of Haar wavelet detail bands at 3 scales,
``(1 - 0.8) (LE_LH + LE_HL) / 2 + 0.8 LE_HH`` (as in FISH). Brightness (6): entropy of the luma
shifted by -60, -40, -20, +20, +40, +60 grey levels (how much detail brightening or darkening
would reveal or lose). Colourfulness (2): Hasler-Suesstrunk colourfulness; mean HSV saturation.
Naturalness (2): mean dark channel (15x15); standard deviation of MSCN coefficients.

The paper maps features to quality with a regression learned on big data; no library ships it, so
the user supplies it as a JSON file (``model:``). Accepted format::

    {"kind": "linear", "feature_mean": [17 floats], "feature_scale": [17 floats],
     "weights": [17 floats], "bias": float}
    {"kind": "svr_rbf", "feature_mean": [...], "feature_scale": [...],
     "support_vectors": [[17 floats], ...], "dual_coef": [floats], "gamma": float, "intercept": float}

Score = regression((features - feature_mean) / feature_scale); higher is better. Without a file
the builder raises a HarnessError (the runner reports the metric as n/a).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from harness.errors import HarnessError
from harness.metrics.base import MetricSpec
from harness.metrics.iqa import histogram_entropy as _counts_entropy
from harness.metrics.sanity import colourfulness
from harness.registry import METRICS

N_FEATURES = 17
FEATURE_NAMES = (
    "entropy", "ce_gray", "ce_yb", "ce_rg",
    "sharp_1", "sharp_2", "sharp_3",
    "bright_-60", "bright_-40", "bright_-20", "bright_+20", "bright_+40", "bright_+60",
    "colourfulness", "saturation",
    "dark_channel", "mscn_std",
)
_SHIFTS = (-60, -40, -20, 20, 40, 60)
_CE_SIGMA, _CE_KAPPA = 3.25, 0.1
_CE_TAU = {"gray": 0.2353, "yb": 0.2287, "rg": 0.0528}  # noise thresholds of Groen et al. (2013)


def histogram_entropy(levels: np.ndarray) -> float:
    """Shannon entropy (bits) of the histogram of grey levels, rounded and clipped to 0..255."""
    import torch

    counts = np.bincount(np.clip(np.round(levels), 0, 255).astype(np.int64).ravel(), minlength=256)
    return float(_counts_entropy(torch.from_numpy(counts)[None])[0])


def _contrast_energy(channel: np.ndarray, tau: float) -> float:
    gx = ndimage.gaussian_filter(channel, _CE_SIGMA, order=(0, 2), mode="nearest")
    gy = ndimage.gaussian_filter(channel, _CE_SIGMA, order=(2, 0), mode="nearest")
    z = np.sqrt(gx ** 2 + gy ** 2)
    alpha = float(z.max())
    if alpha <= 0:
        return -tau
    return float(np.mean(alpha * z / (z + alpha * _CE_KAPPA) - tau))


def _haar(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    a, b, c, d = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def _log_energy(band: np.ndarray) -> float:
    return float(np.log10(1.0 + np.mean(band ** 2)))


def features(image: np.ndarray) -> np.ndarray:
    """The 17 BIQME features of an HxWx3 float image in [0, 1] (order: ``FEATURE_NAMES``)."""
    image = np.asarray(image, np.float64)
    rgb = image * 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    yb, rg = 0.5 * (r + g) - b, r - g
    out = [histogram_entropy(gray)]
    out += [_contrast_energy(ch, _CE_TAU[k]) for k, ch in (("gray", gray), ("yb", yb), ("rg", rg))]
    ll = gray
    for _ in range(3):
        if min(ll.shape) < 2:
            out.append(0.0)
            continue
        ll, lh, hl, hh = _haar(ll)
        out.append(0.2 * (_log_energy(lh) + _log_energy(hl)) / 2 + 0.8 * _log_energy(hh))
    out += [histogram_entropy(gray + s) for s in _SHIFTS]
    out.append(float(colourfulness(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])[0]))
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    out.append(float(np.mean(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0))))
    out.append(float(ndimage.minimum_filter(mn / 255.0, size=15, mode="nearest").mean()))
    mu = ndimage.gaussian_filter(gray, 7 / 6, mode="nearest")
    sigma = np.sqrt(np.abs(ndimage.gaussian_filter(gray ** 2, 7 / 6, mode="nearest") - mu ** 2))
    out.append(float(((gray - mu) / (sigma + 1.0)).std()))
    return np.asarray(out, np.float64)


class Regression:
    """A feature -> quality regression read from the JSON format in the module docstring."""

    def __init__(self, path: Path):
        try:
            data = json.loads(Path(path).read_text())
            self.kind = data["kind"]
            self.mean = np.asarray(data["feature_mean"], np.float64)
            self.scale = np.asarray(data["feature_scale"], np.float64)
            if self.kind == "linear":
                self.weights = np.asarray(data["weights"], np.float64)
                self.bias = float(data["bias"])
                shapes = [self.weights.shape]
            elif self.kind == "svr_rbf":
                self.sv = np.asarray(data["support_vectors"], np.float64)
                self.coef = np.asarray(data["dual_coef"], np.float64).reshape(-1)
                self.gamma, self.bias = float(data["gamma"]), float(data["intercept"])
                shapes = [self.sv.shape[1:]]
                if len(self.coef) != len(self.sv):
                    raise ValueError("dual_coef and support_vectors differ in length")
            else:
                raise ValueError(f"unknown kind {self.kind!r} (use linear or svr_rbf)")
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise HarnessError(f"biqme: cannot read regression model {path}: {err}",
                               "give a JSON file in the format of docs/datasets.md (BIQME section)") from None
        if any(s != (N_FEATURES,) for s in shapes + [self.mean.shape, self.scale.shape]):
            raise HarnessError(f"biqme: regression model {path} does not have {N_FEATURES} features per vector",
                               "give one weight, mean and scale per BIQME feature")

    def __call__(self, feats: np.ndarray) -> float:
        x = (feats - self.mean) / self.scale
        if self.kind == "linear":
            return float(x @ self.weights + self.bias)
        k = np.exp(-self.gamma * ((self.sv - x) ** 2).sum(axis=1))
        return float(k @ self.coef + self.bias)


class Biqme:
    spec = MetricSpec("biqme", lower_better=False, needs_reference=False, score_range=None,
                      description="BIQME (Gu et al., TNNLS 2017) with a user-supplied regression model",
                      on_device=False)

    def __init__(self, model: Path):
        self.regression = Regression(model)

    def score(self, image: np.ndarray, reference: np.ndarray | None = None,
              input_image: np.ndarray | None = None) -> float:
        return self.regression(features(image))


@METRICS.register("biqme")
def biqme(model: Path | None = None) -> Biqme:
    """BIQME quality (higher is better) from the regression JSON ``model``; missing -> HarnessError."""
    if model is None or not Path(model).expanduser().is_file():
        where = "no file given" if model is None else f"{model} not found"
        raise HarnessError(f"biqme: regression model not available ({where})",
                           "set metrics.biqme.model to a BIQME regression JSON (format: docs/datasets.md)")
    return Biqme(Path(model).expanduser())
