"""The guide: a CLIP image/text encoder pair, loaded from a cached tag, a local file or a config.

Loading never downloads. A ``pretrained:`` tag is looked up where open_clip would have cached it
(the Hugging Face hub cache or open_clip's URL cache); when it is not there, or a file path does
not exist, a one-line error names the place and the recipe key ``guide.pretrained``.
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torchvision.transforms.v2.functional import gaussian_blur

from harness.errors import HarnessError
from harness.store import file_sha256

TINY_CONFIG = Path(__file__).with_name("harness-tiny-clip.json")
TINY_MODEL = TINY_CONFIG.stem  # a 4-layer ViT image tower (patch 8, 64 px)
TINY_CONV_MODEL = "harness-tiny-clip-conv"  # the same text tower with a small ResNet image tower
for _config in (TINY_CONFIG, TINY_CONFIG.with_name(f"{TINY_CONV_MODEL}.json")):
    open_clip.add_model_config(_config)


@dataclass
class Guide:
    """A frozen CLIP model with its tokenizer and input convention."""

    model: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    info: dict[str, Any] = field(default_factory=dict)
    views: int = 1  # random views per image in the H2C loss (1: the whole image, as the paper)
    view_scale: float = 0.5  # smallest crop side, as a fraction of the image's shorter side
    # what the pixel gradient passes (an InputFilter's, by its vector-Jacobian product); values unchanged
    gradient_blur: float = 0.0
    gradient_global_chroma: bool = False

    def __post_init__(self) -> None:
        if self.views < 1 or not 0 < self.view_scale <= 1:
            raise HarnessError(f"guide views={self.views}, view_scale={self.view_scale} are out of range",
                               "set guide.views >= 1 and 0 < guide.view_scale <= 1")
        if not 0 <= 3 * self.gradient_blur < self.image_size:
            raise HarnessError(f"guide.gradient_blur {self.gradient_blur:g} is out of range for the guide's "
                               f"{self.image_size} px input", f"set it in [0, {(self.image_size - 1) / 3:.3g}]")
        self._gradient_filter = (InputFilter(self.gradient_blur, self.gradient_global_chroma)
                                 if self.gradient_blur > 0 or self.gradient_global_chroma else None)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
            p.grad = None  # a guide trained in this process keeps no gradients of its last step

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """NCHW images in [0, 1] -> the model's input: resized, then normalised exactly once."""
        x = images
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self._gradient_filter is not None and x.requires_grad:
            x = _FilteredGradient.apply(x, self._gradient_filter)
        return x

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of NCHW images in [0, 1] (gradients flow to ``images``)."""
        return self.model.encode_image(self.preprocess(images), normalize=True)

    @torch.no_grad()
    def encode_constant(self, images: torch.Tensor) -> torch.Tensor:
        """``encode_image`` without a graph (for embeddings that are constants of a loss), through the
        same kernels as the differentiable path: torch's fused attention, which it would pick
        without a graph, gives slightly different numbers, and an output equal to its input would
        then not have an exactly zero image direction."""
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.encode_image(images)
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)

    def views_of(self, *images: torch.Tensor) -> list[torch.Tensor]:
        """The guide's views of same-shaped NCHW batches, the same random views for each batch.

        One view: the batches unchanged. Several: ``views`` random square crops per image (side
        ``view_scale``..1 of the shorter side, anywhere in the image, mirrored half the time) at the
        guide's input size, stacked view-major (``views * N`` images); drawn from torch's global RNG.
        """
        if self.views == 1:
            return list(images)
        # shrink first (antialiased) so that no crop is sampled down by more than 2x: no aliasing
        shrink = min(1.0, 2 * self.image_size / min(images[0].shape[-2:]))
        if shrink < 1:
            size = tuple(max(1, round(d * shrink)) for d in images[0].shape[-2:])
            images = tuple(F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
                           for x in images)
        n, _, h, w = images[0].shape
        short = min(h, w)
        device = images[0].device
        count = self.views * n
        side = torch.empty(count, device=device).uniform_(self.view_scale, 1.0) * short
        sx, sy = side / w, side / h  # half-extent of the crop in normalised coordinates
        tx = (torch.rand(count, device=device) * 2 - 1) * (1 - sx)
        ty = (torch.rand(count, device=device) * 2 - 1) * (1 - sy)
        flip = torch.where(torch.rand(count, device=device) < 0.5, -1.0, 1.0)
        theta = torch.zeros(count, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
        grid = F.affine_grid(theta.to(images[0].dtype), [count, 3, self.image_size, self.image_size],
                             align_corners=False)
        return [F.grid_sample(x.repeat(self.views, 1, 1, 1), grid, mode="bilinear", padding_mode="reflection",
                              align_corners=False) for x in images]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(texts).to(device), normalize=True)

    def describe(self) -> dict[str, Any]:
        return dict(self.info)


class InputFilter(nn.Module):
    """What an image tower sees of its (normalised) input: a Gaussian low-pass whose standard
    deviation is ``blur`` input pixels (0: none) and, with ``global_chroma``, each image's colour
    only as a whole: the input minus its channel mean (chroma) replaced by its spatial mean.

    Why: pixel-space descent on a tower that sees every pixel paints colour speckle at the tower's
    pixel grid, and one that sees regional colour paints colour blotches (measured, docs/guide.md).
    A fixed filter in front of the tower makes its pixel gradient smooth in luma and constant in
    chroma, so what can fool it is left to what training covers (casts are captioned negatives).
    Stateless, so weights files keep open_clip's keys."""

    def __init__(self, blur: float = 0.0, global_chroma: bool = False):
        super().__init__()
        self.blur, self.global_chroma = float(blur), bool(global_chroma)

    def _low_pass(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur <= 0:
            return x
        side = 2 * round(3 * self.blur) + 1
        return gaussian_blur(x, [side, side], [self.blur, self.blur])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_chroma:
            return self._low_pass(x)
        luma = x.mean(1, keepdim=True)
        return self._low_pass(luma) + (x - luma).mean((2, 3), keepdim=True)

    def extra_repr(self) -> str:
        return f"blur={self.blur:g}, global_chroma={self.global_chroma}"


class _FilteredGradient(torch.autograd.Function):
    """The identity whose backward passes the gradient through a linear filter's adjoint: the
    gradient a tower behind ``filter`` would have, for a tower that sees the image unfiltered.
    First order only, and a second derivative is refused (nothing differentiates H2C twice:
    BiLaLoRA's hypergradient is first-order)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, filter: nn.Module) -> torch.Tensor:
        ctx.filter = filter
        return x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        with torch.enable_grad():
            probe = torch.zeros_like(grad, requires_grad=True)
            (passed,) = torch.autograd.grad(ctx.filter(probe), probe, grad)
        return passed, None


def with_input_filter(model: nn.Module, blur: float = 0.0, global_chroma: bool = False) -> nn.Module:
    """``model`` (open_clip) with an :class:`InputFilter` applied to every input of its image tower
    (``model.visual.input_filter``, run by a forward pre-hook); unchanged when the filter does nothing."""
    if blur > 0 or global_chroma:
        model.visual.input_filter = InputFilter(blur, global_chroma)
        model.visual.register_forward_pre_hook(lambda tower, args: (tower.input_filter(args[0]), *args[1:]))
    return model


def create_model(name: str, pretrained: str | None = None, **options) -> nn.Module:
    """``open_clip.create_model`` without its root-logger warning about random initialisation."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, pretrained=pretrained, **options)
    finally:
        root.setLevel(level)


def image_size(model: nn.Module) -> int:
    """The square input side an open_clip model expects."""
    size = open_clip.get_model_preprocess_cfg(model).get("size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def architecture_only(model: str, device: str = "meta") -> Guide:
    """The open_clip ``model`` with random weights (on ``meta``: no memory), for counting FLOPs of a
    guide-driven backbone; never for results."""
    with torch.device(device):
        clip = create_model(model, device=device)
    return _as_guide(clip, model, {"type": "architecture_only", "model": model, "sha256": None})


def _as_guide(clip: nn.Module, model: str, info: dict[str, Any], **use: Any) -> Guide:
    """Wrap an open_clip model with its tokenizer and preprocessing; ``use``: the :class:`Guide`
    fields of how the loss uses it (views, view_scale, gradient_blur, gradient_global_chroma)."""
    pre = open_clip.get_model_preprocess_cfg(clip)
    return Guide(clip, open_clip.get_tokenizer(model), image_size(clip), tuple(pre["mean"]), tuple(pre["std"]),
                 {**info, **use}, **use)


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(value).exists()


def cached_tag_file(model: str, tag: str, cache_dir: Path | None = None) -> tuple[Path | None, list[Path]]:
    """(the cached weights of ``model``/``tag`` or None, the places looked in)."""
    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise HarnessError(f"open_clip has no pretrained tag {tag!r} for model {model!r} (known: {known})",
                           "set guide.pretrained to one of those tags or to a local weights file")
    looked: list[Path] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        hub_cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=str(hub_cache))
            looked.append(hub_cache / f"models--{repo.replace('/', '--')}" / name)
            if isinstance(found, str):
                return Path(found), looked
    url = cfg.get("url", "")
    if url:
        url_cache = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "clip"
        candidate = url_cache / os.path.basename(url)
        looked.append(candidate)
        if candidate.is_file():
            return candidate, looked
    return None, looked


def _weights_format(path: Path) -> str | None:
    """"safetensors", "torch" (a zip archive or a legacy pickle) or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return "torch"
    size = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    return "safetensors" if head[8:9] == b"{" and 0 < size < path.stat().st_size else None


def resolve_weights(model: str, pretrained: str | None, cache_dir: Path | None = None) -> tuple[Path | None, str]:
    """``(weights file or None, description)`` for ``model``/``pretrained``; cheap (nothing is loaded),
    so recipe validation runs it too."""
    if model not in open_clip.list_models():
        raise HarnessError(f"unknown open_clip model {model!r}", "set guide.model to a name from open_clip.list_models()")
    if pretrained is None:
        return None, "random init"
    if _looks_like_path(pretrained):
        weights = Path(pretrained).expanduser()
        if not weights.is_file():
            raise HarnessError(f"guide weights {weights} not found",
                               "set guide.pretrained to an existing open_clip weights file or a cached tag")
        if _weights_format(weights) is None:
            raise HarnessError(f"guide weights {weights} are not a weights file (neither a torch checkpoint nor "
                               "safetensors)", "set guide.pretrained to open_clip weights (.pt, .bin, .safetensors) "
                               "or a cached tag")
        return weights, str(weights)
    weights, looked = cached_tag_file(model, pretrained, cache_dir)
    if weights is None:
        where = " or ".join(str(p) for p in looked)
        raise HarnessError(f"guide weights for {model}/{pretrained} are not cached (looked in {where})",
                           "copy them there, or set guide.pretrained to a local weights file")
    return weights, f"{pretrained} ({weights})"


def load_open_clip(model: str, pretrained: str | None, cache_dir: Path | None = None, **use: Any) -> Guide:
    """An open_clip guide from a cached tag, a local weights file, or (``pretrained=None``) random weights;
    ``use``: how the loss uses it (:func:`_as_guide`)."""
    weights, source = resolve_weights(model, pretrained, cache_dir)
    try:
        clip = create_model(model, pretrained=str(weights) if weights else None)
    except (RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as err:  # weights of another model
        raise HarnessError(f"guide weights {weights} do not load into open_clip {model} ({type(err).__name__})",
                           "set guide.pretrained to weights of that model, or guide.model to theirs") from None
    info = {"type": "open_clip", "model": model, "pretrained": source,
            "sha256": file_sha256(weights) if weights else None}
    return _as_guide(clip, model, info, **use)
