"""BILD (Jiang et al., ECCV 2022): bi-level patch reweighting for supervised pretraining, on the engine.

No public code exists; the paper (Eqs. 4-7, Algorithm 1) is the specification. Each step of
:class:`BILDStepper`:

1. draws a training batch of ``n`` (hazy, clear) patches and scores each pair with the
   reweighting network f_w (:class:`Reweighter`): one logit per patch;
2. normalises over the (global) batch, ``w = n * softmax(logits)``: the weights are positive,
   average 1 (so uniform weights are exactly plain L1) and ``p = w / n`` is the distribution whose
   entropy ``H(p) = -sum p log p`` the penalty acts on;
3. inner step (Eq. 5): ``theta_t = theta_{t-1} - eta_1 grad (1/n) sum_i w_i l_i(theta)`` (Adam,
   through the strategy), with ``w`` held fixed;
4. outer objective gradient ``g_v = grad J_e(D_v; theta_t)`` (plain loss on a batch of the
   held-out split, ``val_fraction`` of the pairs), averaged over ranks;
5. all ``n`` dot products ``<grad l_i(theta_{t-1}), g_v>`` from ONE forward-mode pass: they are the
   directional derivatives of the per-patch losses along ``g_v``, i.e. ``torch.func.jvp`` of
   ``theta -> [l_1, ..., l_n]`` at ``theta_{t-1}`` with tangent ``g_v`` (no per-patch backward),
   replaying step 3's random draws (drop-path masks) so it differentiates the loss step 3 used;
6. reward (Eq. 6) ``R_i = w_i [<g_v, grad l_i> - alpha dOmega/dp_i]`` and the REINFORCE update
   (Eq. 7) ``phi <- phi + eta_2 (1/n) sum_i R_i grad log w_i`` (Adam on the surrogate
   ``-(1/n) sum_i sg(R_i) log w_i``).

The entropy sign: Eq. 4 minimises ``J_e + alpha Omega``; taking ``Omega = H`` literally would
*reward* concentrated weights, the opposite of the paper's stated intent (max-entropy RL, "prevent
over concentration"). We use ``Omega = -H(p)``, so the penalty term is ``+alpha dH/dp_i =
-alpha (log p_i + H)``: patches above their share lose reward. It is taken per unit of share
``p_i`` (``n dOmega/dw_i``), which keeps ``alpha`` independent of the batch size: at a fixed point
of the expected outer update (f_w free to set each logit) the shares are
``p_i ~ exp(<g_v, grad l_i> / alpha)``, so ``alpha`` is a temperature in units of the dot products. The paper drops the inner learning rate from Eq. 6, and
so do we (``reward: raw``); ``reward: standardised`` divides the dot products by their standard
deviation over the batch (they shrink by orders of magnitude as training converges), which makes
``alpha`` a unit-free temperature.

``objective: training`` is Table 3's ablation: no held-out split (the validation pairs join the
training pool, as the paper does) and ``J_e`` is taken on a second batch drawn from the training
pool. Under several ranks each rank scores the whole global batch with f_w (so ``w`` is normalised
over the global batch), trains on its slice, and ``g_v`` is averaged with ``all_reduce_mean``; the
reweighter's surrogate is a per-rank mean whose DDP average is the global one.

f_w is dropped after training (the deployed model is the backbone alone); its weights and the
learned per-patch weights of the first training images (``export``) are kept beside the checkpoint
for the paper's Fig. 7-style figure.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from harness.data.patches import sample_patches
from harness.engine.loop import LoopResult
from harness.engine.strategy import Strategy
from harness.errors import HarnessError
from harness.pretrain.supervised import SupervisedStepper, pretrain_supervised
from harness.registry import REWEIGHTS

Objective = Literal["validation", "training"]
Reward = Literal["raw", "standardised"]
SPLIT_SEED = 0  # the held-out split depends on the data only, not on the run's seed


class Reweighter(nn.Module):
    """f_w: a small strided conv net on the concatenated (hazy, clear) pair -> one logit per patch.

    The paper gives its architecture only in the supplement (not available); this one sees the pair
    at 1/2, 1/4 and 1/8 resolution and pools globally. Leaky ReLUs: with plain ReLUs a large outer
    step can silence every unit, and a constant f_w means uniform weights (plain L1) without a sign.
    The last layer starts at zero, so training starts from uniform weights (maximum entropy).
    """

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(6, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(2 * hidden, 2 * hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.score = nn.Linear(2 * hidden, 1, bias=False)  # a common shift of the logits changes no weight
        nn.init.zeros_(self.score.weight)

    def forward(self, hazy: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(torch.cat([hazy, clear], dim=1))).squeeze(1)


def batch_weights(logits: torch.Tensor) -> torch.Tensor:
    """``n * softmax(logits)``: positive weights with mean 1 over the batch."""
    return len(logits) * torch.softmax(logits, dim=0)


def weight_entropy(w: torch.Tensor) -> torch.Tensor:
    """``H(p)`` of ``p = w / sum(w)`` (nats; ``log n`` for uniform weights)."""
    p = w / w.sum()
    return -(p * torch.log(p.clamp_min(1e-30))).sum()


def entropy_share_gradient(w: torch.Tensor) -> torch.Tensor:
    """``dH/dp_i = -(log p_i + H)``: the entropy's derivative per unit of patch ``i``'s share
    ``p_i = w_i / sum(w)`` (the quotient rule keeps ``sum p = 1``, so ``sum_i p_i dH/dp_i = 0``)."""
    p = w / w.sum()
    return -(torch.log(p.clamp_min(1e-30)) + weight_entropy(w))


@contextmanager
def batch_norm_frozen_stats(model: nn.Module) -> Iterator[None]:
    """Batch norm in training mode without updating its running statistics (same outputs).

    A function transform may not mutate captured buffers, and the extra pass must not count twice.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def rng_snapshot(device: torch.device) -> dict[str, Any]:
    """torch's CPU (and ``device``'s CUDA) RNG state, to replay a forward's random draws."""
    cuda = {device.index or 0: torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


@contextmanager
def replayed_rng(snapshot: dict[str, Any]) -> Iterator[None]:
    """Run a block from a captured RNG state (same dropout/drop-path masks), then continue the
    stream where it was, so the extra pass leaves the run's random sequence unchanged."""
    with torch.random.fork_rng(devices=list(snapshot["cuda"])):
        torch.set_rng_state(snapshot["cpu"])
        for index, state in snapshot["cuda"].items():
            torch.cuda.set_rng_state(state, index)
        yield


def per_patch_loss(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean L1 (or L2) of each patch of the batch: shape ``[n]``."""
    diff = output - target
    err = diff.abs() if loss == "l1" else diff.square()
    return err.flatten(1).mean(1)


def per_patch_dots(model: nn.Module, params: dict[str, torch.Tensor], direction: dict[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor, loss: str = "l1") -> torch.Tensor:
    """``<grad_theta l_i(params), direction>`` for every patch ``i`` from one ``torch.func.jvp``.

    ``params`` (name -> tensor) replace the model's parameters of those names; the result is the
    forward-mode derivative of the ``n`` per-patch losses along ``direction``.
    """
    names = list(params)

    def losses(*values: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, dict(zip(names, values)), (x,))
        return per_patch_loss(loss, out, y)

    with batch_norm_frozen_stats(model):
        _, dots = torch.func.jvp(losses, tuple(params[n] for n in names), tuple(direction[n] for n in names))
    return dots


class _Rows(Sequence):
    """The items ``index`` of ``items`` (a lazy view of an image sequence)."""

    def __init__(self, items: Sequence, index: list[int]):
        self.items, self.index = items, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        return self.items[self.index[i]]


def split_pairs(count: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of the training and held-out pairs (``round(val_fraction * count)``, at least one)."""
    if count < 2:
        raise HarnessError(f"BILD needs at least 2 pretraining pairs to hold some out, got {count}",
                           "add pairs, or set reweight.objective: training")
    n_val = min(count - 1, max(1, round(val_fraction * count)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


@dataclass(frozen=True)
class BILD:
    """BILD's settings (the ``reweight: {type: bild, ...}`` entry of a pretraining set)."""

    alpha: float = 1.0
    lr: float = 0.01
    val_fraction: float = 0.1
    objective: Objective = "validation"
    val_batch_size: int | None = None
    hidden: int = 16
    reward: Reward = "raw"

    def stepper(self, model: nn.Module, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor], **kw: Any
                ) -> "BILDStepper":
        return BILDStepper(model, hazy, clear, self, **kw)

    def pretrain(self, model: nn.Module, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor], **kw: Any
                 ) -> tuple[nn.Module, LoopResult, "BILDStepper"]:
        """``pretrain_supervised`` with BILD's stepper: the model (f_w is not part of it), the loop's
        result and the finished stepper (its ``reweighter``, ``summary()`` and ``export``)."""
        made: list[BILDStepper] = []

        def make(*args: Any, **options: Any) -> BILDStepper:
            made.append(self.stepper(*args, **options))
            return made[-1]

        model, result = pretrain_supervised(model, hazy, clear, make_stepper=make, **kw)
        return model, result, made[-1]


@REWEIGHTS.register("bild")
def bild(alpha: float = 1.0, lr: float = 0.01, val_fraction: float = 0.1, objective: Objective = "validation",
         val_batch_size: int | None = None, hidden: int = 16, reward: Reward = "raw") -> BILD:
    """BILD patch reweighting: ``alpha`` the entropy term's weight (a temperature, see the module
    docstring), ``lr`` the reweighting network's Adam lr (the paper's 0.1 put all the weight on one
    patch within 10 steps, or froze f_w, on tiny AOD-Net/FFA-Net; 0.01 keeps the weights spread),
    ``val_fraction`` of the pairs held out for the outer objective (paper 0.1), ``objective`` validation (BILD) or training (Table 3's ablation), ``val_batch_size`` (default:
    the training batch size), ``hidden`` f_w's width, ``reward`` raw (the paper's dot products) or
    standardised (divided by their standard deviation over the batch, so ``alpha`` is unit-free)."""
    if alpha < 0 or lr <= 0 or hidden < 1 or (val_batch_size is not None and val_batch_size < 1):
        raise HarnessError(f"reweight bild: alpha must be >= 0, lr > 0, hidden and val_batch_size >= 1 "
                           f"(got alpha={alpha}, lr={lr}, hidden={hidden}, val_batch_size={val_batch_size})")
    if not 0 < val_fraction < 1:
        raise HarnessError(f"reweight bild: val_fraction must be in (0, 1), got {val_fraction}",
                           "hold out a fraction of the pairs, e.g. val_fraction: 0.1")
    return BILD(alpha, lr, val_fraction, objective, val_batch_size, hidden, reward)


class BILDStepper(SupervisedStepper):
    """One BILD step: weighted inner step on theta, then the REINFORCE step on f_w's phi."""

    def __init__(self, model: nn.Module, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor],
                 config: BILD, *, steps: int, lr: float, batch_size: int, patch_size: int, strategy: Strategy,
                 params: list[nn.Parameter] | None = None, loss: str = "l1"):
        self.config = config
        if config.objective == "validation":
            train, held = split_pairs(len(hazy), config.val_fraction)
            self.held_out = held
        else:  # Table 3: the validation pairs join the training pool, which also serves the outer loop
            train = held = list(range(len(hazy)))
            self.held_out = []
        super().__init__(model, _Rows(hazy, train), _Rows(clear, train), steps=steps, lr=lr,
                         batch_size=batch_size, patch_size=patch_size, strategy=strategy, params=params, loss=loss)
        self.loss_name = loss
        self.outer_hazy, self.outer_clear = _Rows(hazy, held), _Rows(clear, held)
        self.val_batch_size = config.val_batch_size or batch_size
        self.reweighter = Reweighter(config.hidden)
        self.weigher = strategy.prepare(self.reweighter, list(self.reweighter.parameters()),
                                        lambda p: torch.optim.Adam(p, lr=config.lr))
        self.named = [(name, p) for name, p in self.trained.model.named_parameters() if p.requires_grad]

    def stateful(self) -> dict[str, Any]:
        return {**super().stateful(), **self.weigher.stateful("reweighter_")}

    def _draw(self, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor], count: int,
              rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = sample_patches(hazy, count, self.patch_size, rng, targets=clear)
        return x.to(self.strategy.device), y.to(self.strategy.device)

    def step(self, step: int, rng: torch.Generator) -> dict[str, float]:
        shard, model = self.strategy.shard, self.trained.model
        x, y = self._draw(self.hazy, self.clear, self.batch_size, rng)
        xv, yv = self._draw(self.outer_hazy, self.outer_clear, self.val_batch_size, rng)
        w = batch_weights(self.weigher.module(x, y))  # global batch on every rank: global normalisation
        w_mine, x_mine, y_mine = shard(w), shard(x), shard(y)
        before = {name: p.detach().clone() for name, p in self.named}
        draws = rng_snapshot(self.strategy.device)  # the jvp replays this forward's random masks

        losses = per_patch_loss(self.loss_name, self.trained.module(x_mine), y_mine)
        weighted = (w_mine.detach() * losses).mean()
        self.trained.backward(weighted)
        self.trained.step()
        self.schedule.step()

        val_loss = per_patch_loss(self.loss_name, model(shard(xv)), shard(yv)).mean()
        params = [p for _, p in self.named]
        g_v = [torch.zeros_like(p) if g is None else g  # parameters no forward uses (DeHamer has some)
               for p, g in zip(params, torch.autograd.grad(val_loss, params, allow_unused=True))]
        self.strategy.all_reduce_mean(g_v)
        with replayed_rng(draws):
            dots = per_patch_dots(model, before, {name: g for (name, _), g in zip(self.named, g_v)},
                                  x_mine, y_mine, self.loss_name)

        with torch.no_grad():
            signal = dots / self._global_std(dots) if self.config.reward == "standardised" else dots
            penalty = self.config.alpha * shard(entropy_share_gradient(w.detach()))  # -alpha dOmega/dp, Omega = -H
            reward = w_mine.detach() * (signal + penalty)
        surrogate = -(reward * torch.log(w_mine.clamp_min(1e-30))).mean()
        self.weigher.backward(surrogate)
        self.weigher.step()
        entropy = float(weight_entropy(w.detach())) / math.log(len(w)) if len(w) > 1 else 1.0
        return {"loss": weighted.item(), "l1": losses.mean().item(), "val_loss": val_loss.item(),
                "entropy": entropy, "w_max": float(w.detach().max()), "dot_mean": float(dots.mean()),
                "dot_std": float(dots.std()) if len(dots) > 1 else 0.0}

    def _global_std(self, values: torch.Tensor) -> torch.Tensor:
        """Standard deviation of ``values`` over the global batch (ranks hold equal slices)."""
        moments = [torch.stack([values.mean(), values.square().mean()])]
        self.strategy.all_reduce_mean(moments)
        mean, square = moments[0]
        return (square - mean.square()).clamp_min(0).sqrt().clamp_min(1e-12)

    # ------------------------------------------------------------ after training

    def export(self, folder: Path, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor], names: list[str],
               limit: int = 8) -> dict[str, Path]:
        """Write f_w (``reweighter.safetensors``), the tile weights of the first ``limit`` images
        (``patch_weights.json``) and their figure (``patch_weights.png``); returns the file paths."""
        from harness.store import atomic_write_json, save_weights

        folder = Path(folder)
        first = list(range(min(limit, len(hazy))))
        maps = patch_weight_maps(self.reweighter, _Rows(hazy, first), _Rows(clear, first), self.patch_size,
                                 self.strategy.device)
        save_weights(folder / "reweighter.safetensors", self.reweighter, {"bild": asdict(self.config)})
        atomic_write_json(folder / "patch_weights.json", {
            "patch_size": self.patch_size, "normalisation": "n * softmax over the image's tiles (mean 1)",
            "images": [{"name": n, "weights": m.tolist()} for n, m in zip(names, maps)],
        })
        patch_weight_figure(_Rows(hazy, first), maps, self.patch_size, folder / "patch_weights.png")
        return {k: folder / f for k, f in (("reweighter", "reweighter.safetensors"),
                                           ("patch_weights", "patch_weights.json"),
                                           ("patch_weights_figure", "patch_weights.png"))}

    def summary(self) -> dict[str, Any]:
        """Settings and split sizes, for the checkpoint's sidecar."""
        return {"type": "bild", **asdict(self.config), "pairs_train": len(self.hazy),
                "pairs_held_out": len(self.held_out)}


def tiles(image: torch.Tensor, size: int) -> tuple[torch.Tensor, int, int]:
    """Non-overlapping ``size`` tiles of a CHW image (the right/bottom remainder dropped): ``[r*c, C, s, s]``."""
    c, h, w = image.shape
    rows, cols = h // size, w // size
    if rows == 0 or cols == 0:
        raise HarnessError(f"image of {h}x{w} is smaller than a {size}-pixel patch", "use a smaller patch_size")
    cut = image[:, :rows * size, :cols * size].reshape(c, rows, size, cols, size)
    return cut.permute(1, 3, 0, 2, 4).reshape(rows * cols, c, size, size), rows, cols


@torch.no_grad()
def patch_weight_maps(reweighter: nn.Module, hazy: Sequence[torch.Tensor], clear: Sequence[torch.Tensor],
                      size: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """f_w's normalised weights of each image's tiles, as a ``rows x cols`` map per image."""
    maps = []
    for h, c in zip(hazy, clear):
        th, rows, cols = tiles(h, size)
        tc, _, _ = tiles(c, size)
        maps.append(batch_weights(reweighter(th.to(device), tc.to(device))).reshape(rows, cols).cpu())
    return maps


def patch_weight_figure(hazy: Sequence[torch.Tensor], maps: list[torch.Tensor], size: int, out: Path) -> Path:
    """Each hazy image beside its tile weights (Fig. 7 style: one number per patch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.colors import TwoSlopeNorm

    fig, axes = plt.subplots(len(maps), 2, figsize=(6, 3 * len(maps)), squeeze=False)
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(low, 0.99), vmax=max(high, 1.01))  # white = the batch average
    for row, (image, weights) in zip(axes, zip(hazy, maps)):
        rows, cols = weights.shape
        row[0].imshow(image[:, :rows * size, :cols * size].permute(1, 2, 0).clamp(0, 1).numpy())
        shown = row[1].imshow(weights.numpy(), cmap="coolwarm", norm=norm)
        for (r, c), v in zip(((r, c) for r in range(rows) for c in range(cols)), weights.flatten().tolist()):
            row[1].text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(shown, ax=row[1], fraction=0.046)
    axes[0][0].set_title("hazy")
    axes[0][1].set_title("BILD weight per patch (mean 1)", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
