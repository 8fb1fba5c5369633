"""Guide models (CLIP) for the H2C loss, registered in ``GUIDES``: ``embedded`` and ``open_clip``."""

from __future__ import annotations

from pathlib import Path

from harness.guide.model import Guide, load_open_clip, resolve_weights
from harness.registry import GUIDES, CheckContext


@GUIDES.register("embedded")
def embedded(steps: int = 400, seed: int = 0, cache_dir: Path | None = None) -> Guide:
    """The harness's own degradation-aware tiny CLIP (trained once, then cached)."""
    from harness.guide.embedded import load_embedded

    return load_embedded(steps=steps, seed=seed, cache=cache_dir)


def _weights_resolve(params: dict, context: CheckContext) -> None:
    resolve_weights(params["model"], params["pretrained"], params["cache_dir"])


@GUIDES.register("open_clip", check=_weights_resolve)
def open_clip_guide(model: str = "ViT-B-32", pretrained: str | None = "openai", cache_dir: Path | None = None) -> Guide:
    """An open_clip model with weights from a cached tag or a local file."""
    return load_open_clip(model, pretrained, cache_dir)


def build_guide(type: str, **params) -> Guide:
    """Build a registered guide by name."""
    return GUIDES.build(type, **params)
