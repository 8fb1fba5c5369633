"""Guide models (CLIP) for the H2C loss, registered in ``GUIDES``: ``embedded`` and ``open_clip``.

Both take ``views`` and ``view_scale``: how many random crops of each image the H2C loss looks at
(see :mod:`harness.guide.h2c`); ``views: 1`` is the paper's whole-image loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.registry import GUIDES

if TYPE_CHECKING:
    from harness.guide.model import Guide


@GUIDES.register("embedded")
def embedded(steps: int = 400, seed: int = 0, cache_dir: Path | None = None, views: int = 1,
             view_scale: float = 0.5, tower: Literal["vit", "conv"] = "vit", pool: int = 2048,
             noise: float = 0.02, direction_weight: float = 1.0, adversarial: float = 0.25, image_size: int = 32,
             align_weight: float = 2.0):
    """The harness's own degradation-aware tiny CLIP (trained once, then cached): a ``Guide``."""
    from harness.guide.embedded import load_embedded
    from harness.guide.model import TINY_CONV_MODEL, TINY_MODEL

    return load_embedded(steps=steps, seed=seed, cache=cache_dir, views=views, view_scale=view_scale,
                         model_name=TINY_MODEL if tower == "vit" else TINY_CONV_MODEL, pool=pool, noise=noise,
                         direction_weight=direction_weight, adversarial=adversarial, image_size=image_size,
                         align_weight=align_weight)


@GUIDES.register("open_clip")
def open_clip_guide(model: str = "ViT-B-32", pretrained: str | None = "openai", cache_dir: Path | None = None,
                    views: int = 1, view_scale: float = 0.5):
    """An open_clip model with weights from a cached tag or a local file: a ``Guide``."""
    from harness.guide.model import load_open_clip

    return load_open_clip(model, pretrained, cache_dir, views=views, view_scale=view_scale)


def build_guide(type: str, **params) -> Guide:
    """Build a registered guide by name."""
    return GUIDES.build(type, **params)
