"""LoRun (Deep LoRA-Unfolding Networks, TIP 2026): one shared denoiser, one LoRA per unfolding stage.

Proximal gradient descent unrolled into K stages (9 in the paper). Stage k takes a gradient step
on the data term and applies the proximal map, a denoiser:

    z_k = x_{k-1} - rho_k PhiT(Phi x_{k-1} - y),      x_k = z_k + s_k R_k(z_k),      x_0 = y

where ``z + R_k(z)`` is the stage's denoiser D_k: the same base denoiser D plus its own low-rank
adapters (LoRA on each dense conv of D, rank ``ceil(min(in, out) * gamma / 100)``, gamma = 10), so
the network holds one denoiser and K small adapters instead of K denoisers. Pretraining has two
phases (``pretrain_phases``), both with an L2 loss: the denoiser, the degradation heads and the
first step size trained as a single block; then the denoiser and heads frozen and only the stage
parameters (adapters, step sizes rho_k, strengths s_k) trained across all K stages.

The strengths ``s_k`` (1 in LoRun) are ours: a dehazing denoiser trained as one block is not
idempotent (applied to its own output it dehazes again), so phase 2 starting from nine stages of
the bare base denoiser has to undo that first (measured on the tiny recipe with s_k = 1: the single
block scored 19.0 dB, the nine-stage network after its 150 phase-2 steps 17.0 dB, its stage outputs
falling from 18.2 dB after stage 1 to 16.1 dB after stage 6). Phase 2 therefore starts stages 2..K as identities (``s_k = rho_k =
0``, like a zero-initialised residual branch): the K-stage network begins exactly where the
single block ended and each stage learns how much to denoise, the stage-dependent denoising level
LoRun's adapters are there to give.

Phi for dehazing (the paper's tasks, compressive sensing and others, have a known linear Phi;
dehazing has none): the atmospheric scattering model, ``Phi x = t * x + A (1 - t)``, with the
transmission ``t`` (per pixel, in [t_min, 1]) and the airlight ``A`` (per channel) estimated from
``y`` by small heads once per image. Its data-term gradient is ``t * (t * x + A (1 - t) - y)``, a
step towards the scattering model's inversion ``(y - A (1 - t)) / t``, which the denoiser then
regularises. We chose it because it is the physics every dehazing prior is built on, it keeps
each stage a true gradient step on an interpretable energy, it is well conditioned (t in
[t_min, 1] keeps the data term's gradient 1-Lipschitz and the inversion bounded), and its heads cost a few thousand parameters; a learned
convolutional Phi would be an unconstrained extra network per stage, and Phi = I would reduce
the unfolding to a plain residual cascade.

The base denoiser is a two-level Restormer U-Net (transformer blocks on 1x1 convs, which LoRA
adapts most cheaply); the paper's exact denoiser is not public. Its reported counts (compressive
sensing, 9 stages): 5.23 M parameters against 15.96 M for the unshared network.

LoRA candidate sites for adaptation: ``stage1``..``stageK`` (the stage adapters; a branch there
changes that stage only) and ``denoiser.<level>.<i>`` (the shared denoiser's transformer blocks,
whose change reaches every stage).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.models.base import (DehazeNet, PretrainPhase, count_params, parent_of, register_backbone,
                                 variant_config)
from harness.models.restormer_blocks import Downsample, Upsample, transformer_stack


class StageContext:
    """Which unfolding stage is running (None: the bare shared denoiser), read by every adapter."""

    def __init__(self) -> None:
        self.stage: int | None = None


class LowRank(nn.Module):
    """``up(down(x))``: a rank-``rank`` branch with the base conv's geometry; ``up`` starts at zero."""

    def __init__(self, base: nn.Conv2d, rank: int):
        super().__init__()
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                              bias=False, padding_mode=base.padding_mode)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def stage_rank(base: nn.Conv2d, gamma: float) -> int:
    """LoRun's rank rule: ``ceil(min(in, out) * gamma / 100)``."""
    return math.ceil(min(base.in_channels, base.out_channels) * gamma / 100)


class StageAdaptedConv(nn.Module):
    """A shared conv (``base``) plus one low-rank branch per stage (``stages.<k>``)."""

    def __init__(self, base: nn.Conv2d, stages: int, gamma: float, context: StageContext):
        super().__init__()
        rank = stage_rank(base, gamma)
        self.base = base
        self.stages = nn.ModuleList(LowRank(base, rank) for _ in range(stages))
        self.context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        k = self.context.stage
        return y if k is None else y + self.stages[k](x)


class Denoiser(nn.Module):
    """Image-space proximal map ``z + output(U-Net(embed(z)))``: a two-level Restormer U-Net."""

    LEVELS = ("encoder1", "encoder2", "latent", "decoder2", "decoder1")

    def __init__(self, dim: int, blocks: tuple[int, int, int], heads: tuple[int, int, int], expansion: float):
        super().__init__()
        n1, n2, n3 = blocks
        self.embed = nn.Conv2d(3, dim, 3, padding=1, bias=False)
        self.encoder1 = transformer_stack(n1, dim, heads[0], expansion)
        self.down1 = Downsample(dim)
        self.encoder2 = transformer_stack(n2, dim * 2, heads[1], expansion)
        self.down2 = Downsample(dim * 2)
        self.latent = transformer_stack(n3, dim * 4, heads[2], expansion)
        self.up2 = Upsample(dim * 4)
        self.reduce2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.decoder2 = transformer_stack(n2, dim * 2, heads[1], expansion)
        self.up1 = Upsample(dim * 2)
        self.reduce1 = nn.Conv2d(dim * 2, dim, 1, bias=False)
        self.decoder1 = transformer_stack(n1, dim, heads[0], expansion)
        self.output = nn.Conv2d(dim, 3, 3, padding=1, bias=False)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """``D(z) - z``."""
        e1 = self.encoder1(self.embed(z))
        e2 = self.encoder2(self.down1(e1))
        lat = self.latent(self.down2(e2))
        d2 = self.decoder2(self.reduce2(torch.cat([self.up2(lat), e2], 1)))
        d1 = self.decoder1(self.reduce1(torch.cat([self.up1(d2), e1], 1)))
        return self.output(d1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.residual(z)


class HazeEstimator(nn.Module):
    """Transmission ``t`` (B, 1, H, W) in [t_min, 1] and airlight ``A`` (B, 3, 1, 1) in (0, 1) from ``y``."""

    def __init__(self, width: int, t_min: float = 0.05):
        super().__init__()
        self.t_min = t_min
        self.features = nn.Sequential(  # dilations 1, 2, 4: a 15-pixel receptive field at full resolution
            nn.Conv2d(3, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=4, dilation=4), nn.ReLU(inplace=True),
        )
        self.transmission = nn.Conv2d(width, 1, 3, padding=1)
        self.airlight = nn.Linear(width, 3)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(y)
        t = self.t_min + (1 - self.t_min) * torch.sigmoid(self.transmission(f))
        a = torch.sigmoid(self.airlight(f.mean(dim=(2, 3))))[:, :, None, None]
        return t, a


def scattering_step(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, a: torch.Tensor,
                    rho: torch.Tensor) -> torch.Tensor:
    """``x - rho PhiT(Phi x - y)`` for ``Phi x = t x + A (1 - t)`` (PhiT r = t r)."""
    return x - rho * t * (t * x + a * (1 - t) - y)


class LoRun(DehazeNet):
    """K-stage proximal gradient unfolding with a shared denoiser and per-stage LoRA adapters."""

    multiple = 4

    def __init__(self, stages: int = 9, dim: int = 32, blocks: tuple[int, int, int] = (2, 2, 4),
                 heads: tuple[int, int, int] = (1, 2, 4), expansion: float = 2.66, gamma: float = 10.0,
                 estimator_width: int = 16, base_fraction: float = 0.5):
        super().__init__()
        self.num_stages = stages
        self.base_fraction = base_fraction
        self.single_block = False  # phase 1 of pretraining: one stage, no adapters
        self.context = StageContext()
        self.estimator = HazeEstimator(estimator_width)
        self.rho = nn.Parameter(torch.ones(stages))
        self.strength = nn.Parameter(torch.ones(stages))
        self.denoiser = Denoiser(dim, blocks, heads, expansion)
        self.adapted_convs: list[str] = []
        for name, module in list(self.denoiser.named_modules()):
            if isinstance(module, nn.Conv2d) and module.groups == 1:
                parent, attr = parent_of(self.denoiser, name)
                setattr(parent, attr, StageAdaptedConv(module, stages, gamma, self.context))
                self.adapted_convs.append(f"denoiser.{name}")

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        return self.stage_outputs(y)[-1]

    def stage_outputs(self, y: torch.Tensor) -> list[torch.Tensor]:
        """``[x_1, ..., x_K]`` for an input whose sides are multiples of ``multiple`` (one in phase 1)."""
        t, a = self.estimator(y)
        x, outputs = y, []
        try:
            for k in range(1 if self.single_block else self.num_stages):
                z = scattering_step(x, y, t, a, self.rho[k])
                self.context.stage = None if self.single_block else k
                x = z + self.strength[k] * self.denoiser.residual(z)
                outputs.append(x)
        finally:
            self.context.stage = None
        return outputs

    # ------------------------------------------------------------ parameters and training

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if ".stages." in n]

    def base_parameters(self) -> list[nn.Parameter]:
        """The shared denoiser and the degradation heads (not the stage parameters)."""
        return [p for n, p in self.named_parameters() if ".stages." not in n and n not in ("rho", "strength")]

    def pretrain_phases(self, steps: int) -> list[PretrainPhase]:
        """Phase 1 (``base_fraction`` of the steps): the single block, every base weight and rho_1.
        Phase 2: the K-stage network, only the adapters, step sizes and strengths, with stages
        2..K starting as identities (so the network starts as the single block)."""
        base_steps = round(steps * self.base_fraction)

        def single_block() -> None:
            self.single_block = True

        def all_stages() -> None:
            self.single_block = False
            with torch.no_grad():
                self.rho[1:] = 0.0
                self.strength[1:] = 0.0

        stage_params = self.adapter_parameters() + [self.rho, self.strength]
        return [
            PretrainPhase("pretraining_base", base_steps, self.base_parameters() + [self.rho], "l2", single_block),
            PretrainPhase("pretraining_stages", steps - base_steps, stage_params, "l2", all_stages),
        ]

    def unshared_params(self) -> int:
        """The same K-stage network with K separate denoisers and no adapters."""
        denoiser = sum(p.numel() for n, p in self.denoiser.named_parameters() if ".stages." not in n)
        return self.num_stages * denoiser + count_params(self.estimator) + self.rho.numel() + self.strength.numel()

    # ------------------------------------------------------------ LoRA sites

    def lora_sites(self) -> dict[str, list[str]]:
        """``stage<k>``: every low-rank conv of stage k's adapters; ``denoiser.<level>.<i>``: the shared
        1x1 convs of one transformer block of the denoiser."""
        sites = {f"stage{k + 1}": [f"{conv}.stages.{k}.{part}" for conv in self.adapted_convs
                                    for part in ("down", "up")] for k in range(self.num_stages)}
        for level in Denoiser.LEVELS:
            for i, block in enumerate(getattr(self.denoiser, level)):
                sites[f"denoiser.{level}.{i}"] = [f"denoiser.{level}.{i}.{conv}.base" for conv in block.dense_convs()]
        return sites


_CONFIGS = {
    "full": {},
    "tiny": {"dim": 8, "blocks": (1, 1, 1), "heads": (1, 1, 2), "estimator_width": 8},
}


@register_backbone(
    "lorun",
    variants={"full": None, "tiny": None},
    multiple=4,
    description=("LoRun: 9-stage unfolding, shared Restormer denoiser + stage LoRA, scattering-model Phi "
                 "(paper, compressive sensing: 5.23 M vs 15.96 M unshared)"),
)
def build_lorun(variant: str = "full", stages: int = 9, gamma: float = 10.0, base_fraction: float = 0.5) -> LoRun:
    """LoRun; ``full`` = width 32, [2, 2, 4] blocks; ``tiny`` = width 8, one block per level; both 9 stages.

    ``gamma``: adapter rank in percent of min(in, out); ``base_fraction``: share of the pretraining
    steps spent on phase 1 (the single block).
    """
    if not 0 <= base_fraction <= 1:
        from harness.errors import HarnessError

        raise HarnessError(f"lorun base_fraction {base_fraction} is not in [0, 1]", "set base_fraction between 0 and 1")
    return LoRun(stages=stages, gamma=gamma, base_fraction=base_fraction, **variant_config("lorun", _CONFIGS, variant))
