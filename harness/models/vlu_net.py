"""VLU-Net (Zeng et al., CVPR 2025): vision-language guided deep unfolding on a Restormer U-Net.

Eight unfolding blocks sit where a 4-level Restormer has its transformer stacks (encoder levels
1-3, latent, decoder levels 3-1, refinement). Each block takes one proximal gradient step in
feature space, then denoises with its transformer stack:

    x <- x - r * PhiT(Phi(x, p) - y),      x <- Denoiser(x)

``Phi`` is a cross-attention whose keys come from a prompt ``p``, ``PhiT`` a self-attention, ``r``
a learnable scalar, and ``y`` a second embedding of the degraded input carried through its own
down/up path. The prompt is a learnable bank of ``de_dim`` maps mixed by
``softmax(Linear(CLIP image feature))`` and resized to the feature map: the CLIP feature of the
input picks the degradation's transform.

The CLIP is the recipe's guide (``needs_guide``): it is attached, frozen, and never part of the
state dict. Its unit-norm image embedding is matched to ``clip_dim`` (512, ViT-B/32's width) by a
fixed isometry (the embedding repeated ``clip_dim / width`` times, scaled by its inverse square
root; a guide wider than ``clip_dim`` is refused) and standardised per vector, standing in for the
official frozen adapter MLP whose output ends in a LayerNorm. Training CLIP on degraded image-text
pairs, which the official code does with that adapter, is what the embedded guide does itself.

Facts from xianggkl/VLU-Net (``net/Final.py``, ``net/clip.py``, ``train.py``), code written anew:
width 48, heads [1, 2, 4, 8], [4, 6, 6, 8] blocks per level plus 4 refinement blocks (the decoder
repeats the encoder's counts), FFN expansion 2.66, bias-free convs, layer norms with bias; every
gradient step uses 2 heads; the prompt of a block at level ``s`` has ``dim // 10 * s`` channels
and ``96 // s`` pixels a side; 35.35 M parameters without CLIP at de_dim 7 (34.36 M at de_dim 5).
Trained with L1, AdamW 2e-4, 200 epochs, 128 px patches, CLIP ViT-B-32 (laion2b_s34b_b79k).
The official forward embeds ``y`` at level 2 with ``down1_2`` (the feature path's downsampler), so
its ``down1_2_i`` is built but never used; we keep the official wiring, do not build the dead
module, and drop its keys when loading an official checkpoint. Module names follow the official
code otherwise, so its checkpoints load by key (``harness.models.checkpoints.load_official``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.guide.model import TINY_MODEL
from harness.models.base import DehazeNet, Published, pad_to_multiple, register_backbone, variant_config
from harness.models.checkpoints import register_key_map
from harness.models.restormer_blocks import Attention, Downsample, TransposedAttention, Upsample, transformer_stack


class CrossAttention(TransposedAttention):
    """Transposed attention with queries and values from ``x`` and keys from the prompt (Phi)."""

    def __init__(self, dim: int, heads: int, prompt_dim: int, bias: bool = False):
        super().__init__(dim, heads, bias)
        self.qv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.qv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias)
        self.k = nn.Conv2d(prompt_dim, dim, 1, bias=bias)
        self.k_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        q, v = self.qv_dwconv(self.qv(x)).chunk(2, dim=1)
        return self.attend(q, self.k_dwconv(self.k(prompt)), v)


class GradientStep(nn.Module):
    """The degradation-guided gradient step ``x - r PhiT(Phi(x, p) - y)`` (official ``GDM``)."""

    def __init__(self, dim: int, level: int, de_dim: int, clip_dim: int, prompt_size: int):
        super().__init__()
        prompt_dim = max(1, dim // 10 * level)
        side = max(1, prompt_size // level)
        self.de_dim = de_dim
        self.phi = CrossAttention(dim, 2, prompt_dim)
        self.phit = Attention(dim, 2)
        self.r = nn.Parameter(torch.ones(1))
        self.linear = nn.Linear(clip_dim, de_dim)
        self.prompt_param = nn.Parameter(torch.rand(1, de_dim, prompt_dim, side, side))

    def prompt(self, feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The prompt bank mixed by ``softmax(linear(feature))``, resized to ``size``."""
        mix = F.softmax(self.linear(feature), dim=1)
        prompt = torch.einsum("bd,dchw->bchw", mix, self.prompt_param[0])
        return F.interpolate(prompt, size, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return x - self.r * self.phit(self.phi(x, self.prompt(feature, x.shape[-2:])) - y)


class UnfoldingBlock(nn.Module):
    """One unfolding stage: the gradient step, then a stack of transformer blocks (the proximal map)."""

    def __init__(self, dim: int, level: int, blocks: int, heads: int, expansion: float, de_dim: int,
                 clip_dim: int, prompt_size: int):
        super().__init__()
        self.gradient_descent = GradientStep(dim, level, de_dim, clip_dim, prompt_size)
        self.denoiser = nn.Module()
        self.denoiser.blocks = transformer_stack(blocks, dim, heads, expansion)

    def forward(self, x: torch.Tensor, y: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.denoiser.blocks(self.gradient_descent(x, y, feature))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


# (block name, level, channel multiple, index into blocks/heads); the last two levels of the decoder
# and the refinement run at 2x width at level 1 (Restormer concatenates without reducing there)
_BLOCKS = [
    ("encoder_level1", 1, 1, 0), ("encoder_level2", 2, 2, 1), ("encoder_level3", 3, 4, 2), ("latent", 4, 8, 3),
    ("decoder_level3", 3, 4, 2), ("decoder_level2", 2, 2, 1), ("decoder_level1", 1, 2, 0), ("refinement", 1, 2, 0),
]


class VLUNet(DehazeNet):
    """VLU-Net with ``blocks`` transformer blocks per level (decoder mirrors the encoder) and
    ``refinement`` blocks at the end; needs a guide (``attach_guide``)."""

    multiple = 8
    needs_guide = True
    reference_guide = "ViT-B-32"

    def __init__(self, dim: int = 48, blocks: tuple[int, int, int, int] = (4, 6, 6, 8), refinement: int = 4,
                 heads: tuple[int, int, int, int] = (1, 2, 4, 8), expansion: float = 2.66, de_dim: int = 7,
                 clip_dim: int = 512, prompt_size: int = 96):
        super().__init__()
        self.clip_dim = clip_dim
        self.patch_embed = PatchEmbed(dim)
        self.patch_embed_i = PatchEmbed(dim)
        counts = [*blocks, refinement]
        for name, level, mult, i in _BLOCKS:
            count = counts[4] if name == "refinement" else counts[i]
            self.add_module(name, UnfoldingBlock(dim * mult, level, count, heads[i], expansion, de_dim, clip_dim,
                                                 prompt_size))
        self.down1_2 = Downsample(dim)  # also embeds y at level 2 (official wiring; no down1_2_i)
        for name, width in (("down2_3", 2 * dim), ("down3_4", 4 * dim)):
            self.add_module(name, Downsample(width))
            self.add_module(f"{name}_i", Downsample(width))
        for name, width in (("up4_3", 8 * dim), ("up3_2", 4 * dim), ("up2_1", 2 * dim)):
            self.add_module(name, Upsample(width))
            self.add_module(f"{name}_i", Upsample(width))
        for level, width in ((3, 4 * dim), (2, 2 * dim)):
            self.add_module(f"reduce_chan_level{level}", nn.Conv2d(2 * width, width, 1, bias=False))
            self.add_module(f"reduce_chan_level{level}_img", nn.Conv2d(2 * width, width, 1, bias=False))
        self.output = nn.Conv2d(2 * dim, 3, 3, padding=1, bias=False)

    # ------------------------------------------------------------ guide

    def guide_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B, clip_dim) degradation feature of images ``x`` in [0, 1]; no gradient flows into CLIP."""
        guide = self.guide
        device = next(guide.model.parameters()).device
        with torch.no_grad():
            emb = guide.encode_image(x.to(device)).to(x.device, x.dtype)
        width = emb.shape[1]
        if width > self.clip_dim or self.clip_dim % width:
            raise HarnessError(f"the guide's {width}-d image embedding does not fit vlu_net clip_dim {self.clip_dim}",
                               f"set the backbone's clip_dim to a multiple of {width} (e.g. clip_dim: {width})")
        emb = emb.repeat(1, self.clip_dim // width) / math.sqrt(self.clip_dim // width)
        return F.layer_norm(emb, emb.shape[1:])

    # ------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base forward (pad, restore, crop), with the guide reading the image as given."""
        h, w = x.shape[-2:]
        feature = self.guide_feature(x)
        return self.restore(pad_to_multiple(x, self.multiple, self.min_size), feature)[..., :h, :w]

    def restore(self, x: torch.Tensor, feature: torch.Tensor | None = None) -> torch.Tensor:
        f = self.guide_feature(x) if feature is None else feature
        e1, y1 = self.patch_embed(x), self.patch_embed_i(x)
        e1 = self.encoder_level1(e1, y1, f)
        e2, y2 = self.down1_2(e1), self.down1_2(y1)
        e2 = self.encoder_level2(e2, y2, f)
        e3, y3 = self.down2_3(e2), self.down2_3_i(y2)
        e3 = self.encoder_level3(e3, y3, f)
        lat, y4 = self.down3_4(e3), self.down3_4_i(y3)
        lat = self.latent(lat, y4, f)
        d3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1))
        y3 = self.reduce_chan_level3_img(torch.cat([self.up4_3_i(y4), y3], 1))
        d3 = self.decoder_level3(d3, y3, f)
        d2 = self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1))
        y2 = self.reduce_chan_level2_img(torch.cat([self.up3_2_i(y3), y2], 1))
        d2 = self.decoder_level2(d2, y2, f)
        d1 = torch.cat([self.up2_1(d2), e1], 1)
        y1 = torch.cat([self.up2_1_i(y2), y1], 1)
        d1 = self.decoder_level1(d1, y1, f)
        return self.output(self.refinement(d1, y1, f)) + x

    # ------------------------------------------------------------ LoRA sites

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per transformer block (44 in the full net): its four 1x1 convs."""
        sites = {}
        for name, *_ in _BLOCKS:
            for i, block in enumerate(getattr(self, name).denoiser.blocks):
                prefix = f"{name}.denoiser.blocks.{i}"
                sites[f"{name}.{i}"] = [f"{prefix}.{conv}" for conv in block.dense_convs()]
        return sites


_CONFIGS = {
    "full": {},
    "tiny": {"dim": 12, "blocks": (1, 1, 1, 1), "refinement": 1, "heads": (1, 1, 2, 2), "de_dim": 3,
             "prompt_size": 24},
}


@register_backbone(
    "vlu_net",
    variants={
        "full": Published(35_350_000, None, source="VLU-Net (CVPR 2025), de_dim 7, CLIP excluded (34.36 M at de_dim 5)"),
        "tiny": None,
    },
    multiple=8,
    description="VLU-Net: CLIP-guided deep unfolding (8 gradient-step + transformer stages on a Restormer U-Net)",
    needs_guide=True,
)
def build_vlu_net(variant: str = "full", de_dim: int | None = None, clip_dim: int = 512) -> VLUNet:
    """VLU-Net; ``full`` = width 48, [4, 6, 6, 8] + 4 blocks; ``tiny`` = width 12, one block per stage.

    ``de_dim``: prompts in each bank (official 7 all-in-one, 5 single-task); ``clip_dim``: the width
    the guide's embedding is matched to (a multiple of the guide's width).
    """
    config = dict(variant_config("vlu_net", _CONFIGS, variant))
    if de_dim is not None:
        config["de_dim"] = de_dim
    model = VLUNet(**config, clip_dim=clip_dim)
    if variant == "tiny":
        model.reference_guide = TINY_MODEL  # the embedded guide's architecture
    return model


register_key_map("vlu_net", [(r"^down1_2_i\.", None)])  # built but unused by the official forward
