"""Does a guide lead towards clear images? Measured on a paired benchmark before any training.

Two measurements per benchmark (``probe``):

- the H2C loss of the ground truth, of the input itself and of simple edits of the input (noise, a
  contrast stretch, a global colour cast, an orange monochrome: the collapse the old embedded guide
  rewarded). A guide worth using scores the ground truth far below 1 and the cast and the
  monochrome above the contrast stretch;
- pixel-space descent: ``steps`` steps on the pixels of the hazy input, minimising H2C, then
  PSNR/SSIM to the ground truth before and after, and how far the colours moved (mean CIELAB a*/b*
  shift), and the cosine between the first descent step and the way to the ground truth. A guide
  whose descent lowers PSNR is being fooled (adversarial changes), not followed. From a model's
  outputs (``start``; ``harness guide probe --checkpoint``) the descent shows where adapting that
  model will be led: H2C's cosine rewards the direction an output moved, so a guide can score a
  partial dehaze clearer than the ground truth and lead away from the truth from there.

The descent is steepest descent by default (``gd``: each step moves each image along its own
gradient, by ``lr`` per pixel in root mean square), which goes where the guide's gradient leads.
``adam`` (what the issue's first measurements used) rescales every pixel and channel separately,
about to the sign of its gradient: pixels the guide hardly cares about take full steps, and a
gradient that shifts colour only as a whole comes out as regional colour blotches
(``tests/test_probe.py::test_adam_turns_a_global_colour_gradient_into_regional_colour``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.engine.loop import rng_state_kept

EDITS = ("ground truth", "input", "noise", "contrast stretch", "colour cast", "orange monochrome")
MODEL_OUTPUT = "model output"  # the descent's start when probing from a model's outputs
_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def edit(name: str, hazy: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
    """One of ``EDITS`` applied to an NCHW batch in [0, 1] (deterministic)."""
    if name == "ground truth":
        return clear
    if name == "input":
        return hazy
    if name == "noise":
        g = torch.Generator().manual_seed(0)
        return (hazy + 0.05 * torch.randn(hazy.shape, generator=g)).clamp(0, 1)
    if name == "contrast stretch":  # per image and channel, 1st..99th percentile to 0..1
        flat = hazy.flatten(2)
        lo, hi = flat.quantile(0.01, dim=2)[..., None, None], flat.quantile(0.99, dim=2)[..., None, None]
        return ((hazy - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1)
    if name == "colour cast":
        return (hazy * torch.tensor([1.15, 0.9, 0.65]).view(1, 3, 1, 1)).clamp(0, 1)
    if name == "orange monochrome":
        luma = (hazy * _LUMA).sum(1, keepdim=True)
        return (luma * torch.tensor([1.3, 0.75, 0.35]).view(1, 3, 1, 1)).clamp(0, 1)
    raise KeyError(name)


def lab_ab(images: torch.Tensor) -> np.ndarray:
    """Mean CIELAB (a*, b*) of each NCHW sRGB image in [0, 1] -> (N, 2)."""
    from skimage.color import rgb2lab

    return np.stack([rgb2lab(x.permute(1, 2, 0).clamp(0, 1).numpy())[..., 1:].reshape(-1, 2).mean(0)
                     for x in images.detach().cpu()])


def gradient_alignment(loss_fn, hazy: torch.Tensor, clear: torch.Tensor, start: torch.Tensor | None = None) -> float:
    """Mean cosine between the loss's descent direction at ``start`` (default: the hazy input) and
    ``clear - start`` (1: the first step heads straight for the ground truth, 0: unrelated, < 0: away)."""
    start = hazy if start is None else start
    x = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x, hazy), x)
    return float(torch.nn.functional.cosine_similarity(-grad.flatten(1), (clear - start).flatten(1), dim=1).mean())


OPTIMISERS = ("gd", "adam")


def descend(loss_fn, hazy: torch.Tensor, steps: int, lr: float, optimiser: str = "gd",
            start: torch.Tensor | None = None, on_step: Callable[[int, torch.Tensor], None] | None = None
            ) -> tuple[torch.Tensor, list[float]]:
    """``steps`` steps of ``loss_fn(x, hazy)`` on the pixels ``x`` (from ``start``, default ``hazy``;
    kept in [0, 1]), by steepest descent (``gd``: ``lr`` root-mean-square per pixel and step) or by
    Adam (``adam``: ``lr``); ``on_step(k, x)`` sees the pixels after each step k (1-based).

    Each step's gradient is scaled to unit norm per image first. H2C's cosine is singular at the
    input (``x == hazy``): its first gradient is about 1e7 times the later ones, and unscaled it would
    fill Adam's moment estimates so that every later step replays the first one's signs (measured:
    50 steps then end where about 5 sign steps along the first gradient do, whatever the loss)."""
    if optimiser not in OPTIMISERS:
        raise ValueError(f"unknown descent optimiser {optimiser!r}")
    x = (hazy if start is None else start).clone().requires_grad_(True)
    per_image = x[0].numel() ** 0.5  # a unit-norm step is 1/sqrt(n) per pixel in root mean square
    opt = torch.optim.Adam([x], lr=lr) if optimiser == "adam" else torch.optim.SGD([x], lr=lr * per_image)
    curve = []
    for k in range(1, steps + 1):
        loss = loss_fn(x, hazy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            x.grad /= x.grad.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *[1] * (x.dim() - 1))
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        curve.append(loss.item())
        if on_step is not None:
            on_step(k, x.detach())
    return x.detach(), curve


@dataclass
class ProbeResult:
    benchmark: str
    images: int
    h2c: dict[str, float]  # edit name -> mean H2C loss
    descent: dict[str, float]  # steps, lr, loss/PSNR/SSIM before and after, colour shift, trajectory
    curve: list[float] = field(default_factory=list)
    # the grid's columns: (title, NCHW batch, its mean PSNR/SSIM or None): the start, the descent at a
    # few steps, the ground truth
    panels: list[tuple[str, torch.Tensor, dict | None]] = field(default_factory=list, repr=False)

    def figures(self) -> dict:
        """Everything but the images (what ``--json`` writes)."""
        return {k: v for k, v in asdict(self).items() if k != "panels"}

    @property
    def psnr_gain(self) -> float:
        return self.descent["psnr_after"] - self.descent["psnr_before"]

    @property
    def ssim_gain(self) -> float:
        return self.descent["ssim_after"] - self.descent["ssim_before"]

    @property
    def start_beats_truth(self) -> bool:
        """The guide scores the descent's start clearer than the ground truth, so from there its
        gradient leads away from the truth (for a model's outputs: adapting that model will)."""
        return self.h2c[self.descent["start"]] < self.h2c["ground truth"]

    def verdict(self) -> str:
        """What the descent says about the guide. PSNR alone is not enough: a descent that darkens the
        haze away under a colour cast and speckle raises PSNR while SSIM falls (measured, docs/guide.md)."""
        if self.psnr_gain <= 0:
            return "is fooled (PSNR falls)"
        if self.ssim_gain < 0:
            return "is fooled in structure (PSNR rises, SSIM falls: look at the descended images, --grid)"
        return "leads towards the ground truth"


def _mean_metric(metric, images: torch.Tensor, clear: torch.Tensor) -> float:
    from harness.data.io import to_array

    return float(np.mean([metric.score(to_array(x), to_array(y)) for x, y in zip(images, clear)]))


def probe(loss_fn, hazy: torch.Tensor, clear: torch.Tensor, benchmark: str = "", steps: int = 50,
          lr: float = 0.01, seed: int = 0, evaluations: int = 4, optimiser: str = "gd",
          start: torch.Tensor | None = None) -> ProbeResult:
    """Probe ``loss_fn`` (an H2C loss) on same-sized NCHW batches ``hazy`` and ``clear``.

    ``start``: where the descent begins (default: the hazy input), e.g. a pretrained model's outputs,
    which is where adaptation begins; its H2C loss is then reported as the edit "model output".
    Losses of the edits average ``evaluations`` draws of the guide's random views (one draw for a
    guide with a single view); everything is seeded by ``seed`` and leaves torch's RNG as it was.
    """
    from harness.metrics import build_metric

    psnr, ssim = build_metric("psnr"), build_metric("ssim")
    repeats = evaluations if getattr(getattr(loss_fn, "guide", None), "views", 1) > 1 else 1
    with rng_state_kept():
        torch.manual_seed(seed)
        with torch.no_grad():
            images = {name: edit(name, hazy, clear) for name in EDITS}
            if start is not None:
                images[MODEL_OUTPUT] = start
            h2c = {name: float(np.mean([loss_fn(x, hazy).item() for _ in range(repeats)]))
                   for name, x in images.items()}
        begin = "input" if start is None else MODEL_OUTPUT
        alignment = gradient_alignment(loss_fn, hazy, clear, start)
        shown = sorted({max(1, steps // 5), max(1, steps // 2), steps}) if steps else []
        kept: dict[int, torch.Tensor] = {}

        def keep(k: int, x: torch.Tensor) -> None:
            if k in shown:
                kept[k] = x.clone()

        out, curve = descend(loss_fn, hazy, steps, lr, optimiser, start, on_step=keep)
    shift = np.linalg.norm(lab_ab(out) - lab_ab(hazy), axis=1).mean()
    truth_shift = np.linalg.norm(lab_ab(clear) - lab_ab(hazy), axis=1).mean()
    at = {0: images[begin], **kept, steps: out}  # the start, the kept steps, the end (the last kept one)
    scores = {k: {"psnr": _mean_metric(psnr, x, clear), "ssim": _mean_metric(ssim, x, clear)} for k, x in at.items()}
    descent = {"start": begin, "steps": steps, "lr": lr, "optimiser": optimiser, "loss_before": h2c[begin],
               "loss_after": curve[-1] if curve else h2c[begin],
               "psnr_before": scores[0]["psnr"], "psnr_after": scores[steps]["psnr"],
               "ssim_before": scores[0]["ssim"], "ssim_after": scores[steps]["ssim"],
               "lab_shift": float(shift), "lab_shift_ground_truth": float(truth_shift),
               "gradient_alignment": alignment,
               "trajectory": [{"step": k, **scores[k]} for k in kept]}
    panels = [(begin, images[begin], scores[0]), *((f"{k} steps", x, scores[k]) for k, x in kept.items()),
              ("ground truth", clear, None)]
    return ProbeResult(benchmark, len(hazy), h2c, descent, curve, panels)


def save_grid(result: ProbeResult, out: Path, rows: int = 4) -> Path:
    """A PNG of the first ``rows`` images (rows) in each of the result's panels (columns: the
    descent's start, a few of its steps, the ground truth), titled with each column's mean PSNR/SSIM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, result.images)
    fig, axes = plt.subplots(n, len(result.panels), figsize=(1.9 * len(result.panels), 1.9 * n + 0.5), squeeze=False)
    for c, (title, batch, score) in enumerate(result.panels):
        axes[0][c].set_title(title + (f"\n{score['psnr']:.2f} dB, SSIM {score['ssim']:.3f}" if score else ""),
                             fontsize="x-small")
        for r in range(n):
            axes[r][c].imshow(batch[r].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
    fig.suptitle(f"H2C pixel descent on {result.benchmark} (means over {result.images} images)", fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def benchmark_batch(dataset, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` pairs of a paired image set as (hazy, clear) batches of ``size``-squares
    (central square, antialiased resize)."""
    import torch.nn.functional as F

    from harness.data.io import to_tensor

    def square(arr: np.ndarray) -> torch.Tensor:
        x = to_tensor(arr)
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]

    hazy, clear = [], []
    for i in range(min(count, len(dataset))):
        h, c = dataset.load(i)
        hazy.append(square(h))
        clear.append(square(c))
    return torch.stack(hazy).clamp(0, 1), torch.stack(clear).clamp(0, 1)


def probe_recipe(recipe, benchmark: str | None = None, steps: int = 50, lr: float = 0.01, images: int = 12,
                 size: int = 128, seed: int = 0, optimiser: str = "gd", checkpoint: Path | None = None
                 ) -> ProbeResult:
    """Probe the recipe's guide and prompts on one of its paired benchmarks (default: the first);
    with ``checkpoint`` (a model file), the descent starts from that model's outputs."""
    from harness.dehaze import load_checkpoint
    from harness.errors import HarnessError
    from harness.guide import build_guide
    from harness.guide.h2c import H2CLoss
    from harness.registry import DATASETS

    entries = [e for e in recipe.benchmarks if benchmark in (None, e.name, e.type)]
    if not entries:
        names = ", ".join(e.name for e in recipe.benchmarks)
        raise HarnessError(f"the recipe has no benchmark named {benchmark!r} (it has: {names})",
                           "pass --benchmark one of those names")
    for entry in entries:
        dataset = DATASETS.build(entry.type, **entry.params)
        if dataset.has_reference:
            break
    else:
        raise HarnessError(f"benchmark {entries[0].name!r} has no ground truth, and probing needs pairs",
                           "pass --benchmark a paired set (e.g. a synthetic one), or add one to the recipe")
    model = None if checkpoint is None else load_checkpoint(checkpoint)[0]  # before the guide: fails fast
    g = recipe.guide
    loss = H2CLoss(build_guide(g.type, **g.params), **g.h2c())
    hazy, clear = benchmark_batch(dataset, images, size)
    with torch.no_grad():
        start = None if model is None else model(hazy).clamp(0, 1)
    return probe(loss, hazy, clear, benchmark=entry.name, steps=steps, lr=lr, seed=seed, optimiser=optimiser,
                 start=start)
