"""Guide models (CLIP) for the H2C loss and guide-driven backbones, registered in ``GUIDES``:
``embedded`` and ``open_clip``; the identity a guide-driven checkpoint records and its check.

Both guides take how the H2C loss uses them, none of which changes their weights:

- ``views`` and ``view_scale``: how many random crops of each image the loss looks at (see
  :mod:`harness.guide.h2c`); ``views: 1`` is the paper's whole-image loss;
- ``gradient_blur`` (std in guide input pixels) and ``gradient_global_chroma``: what the loss's
  pixel gradient passes, as if the tower sat behind :class:`harness.guide.model.InputFilter`, while
  the loss's value stays the tower's own (see ``docs/guide.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from harness.errors import HarnessError
from harness.registry import GUIDES, CheckContext

if TYPE_CHECKING:
    from harness.guide.model import Guide

NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_LATER_DEFAULTS = {"rank_weight": 0.0, "adversarial_steps": 1, "align_radius": 0.0, "blur": 0.0,
                   "global_chroma": False, "cast_weight": 0.0, "align_batch": 0, "grey": 0.0}  # see _embedded_training


def _embedded_training(tower: str = "vit", pool: int = 2048, noise: float = 0.02, direction_weight: float = 1.0,
                       adversarial: float = 0.25, image_size: int = 32, align_weight: float = 2.0,
                       rank_weight: float = 0.0, adversarial_steps: int = 1, align_radius: float = 0.0,
                       blur: float = 0.0, global_chroma: bool = False, cast_weight: float = 0.0,
                       align_batch: int = 0, grey: float = 0.0) -> dict:
    """The embedded guide's recipe options as its training settings (what its cache hash covers).

    The options of ``_LATER_DEFAULTS`` came later: each enters the settings only when it differs
    from its default, so a guide without them keeps the hash it was cached and recorded under."""
    from harness.guide.model import TINY_CONV_MODEL, TINY_MODEL

    later = {"rank_weight": rank_weight, "adversarial_steps": adversarial_steps, "align_radius": align_radius,
             "blur": blur, "global_chroma": global_chroma, "cast_weight": cast_weight, "align_batch": align_batch,
             "grey": grey}
    return dict(model_name=TINY_MODEL if tower == "vit" else TINY_CONV_MODEL, pool=pool, noise=noise,
                direction_weight=direction_weight, adversarial=adversarial, image_size=image_size,
                align_weight=align_weight, **{k: v for k, v in later.items() if v != _LATER_DEFAULTS[k]})


def _blur_fits(params: dict, context: CheckContext) -> None:
    for key in ("blur", "gradient_blur"):
        if 3 * params[key] >= params["image_size"]:
            raise HarnessError(f"guide.{key} {params[key]:g} is too wide for guide.image_size {params['image_size']} "
                               f"(at most {(params['image_size'] - 1) / 3:.3g})", f"lower guide.{key} or raise guide.image_size")


@GUIDES.register("embedded", check=_blur_fits)
def embedded(steps: Annotated[int, Field(ge=1)] = 400, seed: int = 0, cache_dir: Path | None = None, views: int = 1,
             view_scale: float = 0.5, tower: Literal["vit", "conv"] = "vit", pool: Annotated[int, Field(ge=1)] = 2048,
             noise: NonNegative = 0.02, direction_weight: NonNegative = 1.0, adversarial: NonNegative = 0.25,
             image_size: Annotated[int, Field(ge=8)] = 32, align_weight: NonNegative = 2.0,
             rank_weight: NonNegative = 0.0, adversarial_steps: Annotated[int, Field(ge=1)] = 1,
             align_radius: NonNegative = 0.0, blur: NonNegative = 0.0, global_chroma: bool = False,
             cast_weight: NonNegative = 0.0, align_batch: Annotated[int, Field(ge=0)] = 0,
             grey: Annotated[float, Field(ge=0, le=1)] = 0.0, gradient_blur: NonNegative = 3.0,
             gradient_global_chroma: bool = True):
    """The harness's own degradation-aware tiny CLIP (trained once, then cached): a ``Guide``.
    ``blur`` (in guide input pixels) and ``global_chroma``: what its image tower sees
    (:class:`harness.guide.model.InputFilter`), in training and use; ``gradient_*``: what the
    loss's pixel gradient passes, in use only (on by default since 7 December 2026: pixel descent
    then keeps structure, and adaptation gains as much; ``gradient_blur: 0, gradient_global_chroma:
    false`` gives the earlier gradient and its results' keys; docs/guide.md). ``align_batch``: the
    gradient alignment on at most that many degraded crops of each batch (0: all; fewer is faster,
    and 16 and 32 adapted worse, docs/guide.md). ``grey``: the share of its training crops made
    monochrome (R = G = B) before their degradation."""
    from harness.guide.embedded import load_embedded

    use = dict(views=views, view_scale=view_scale, gradient_blur=gradient_blur, gradient_global_chroma=gradient_global_chroma)
    return load_embedded(steps=steps, seed=seed, cache=cache_dir, use=use,
                         **_embedded_training(tower, pool, noise, direction_weight, adversarial, image_size,
                                              align_weight, rank_weight, adversarial_steps, align_radius,
                                              blur, global_chroma, cast_weight, align_batch, grey))


def _weights_resolve(params: dict, context: CheckContext) -> None:
    from harness.guide.model import resolve_weights

    resolve_weights(params["model"], params["pretrained"], params["cache_dir"])


@GUIDES.register("open_clip", check=_weights_resolve)
def open_clip_guide(model: str = "ViT-B-32", pretrained: str | None = "openai", cache_dir: Path | None = None,
                    views: int = 1, view_scale: float = 0.5, gradient_blur: NonNegative = 0.0,
                    gradient_global_chroma: bool = False):
    """An open_clip model with weights from a cached tag or a local file: a ``Guide``."""
    from harness.guide.model import load_open_clip

    return load_open_clip(model, pretrained, cache_dir, views=views, view_scale=view_scale,
                          gradient_blur=gradient_blur, gradient_global_chroma=gradient_global_chroma)


PLAIN_GRADIENT = {"gradient_blur": 0.0, "gradient_global_chroma": False}


def gradient_filter(type: str, params: dict) -> dict:
    """The gradient-filter settings a guide entry stands for (given, or its type's default) where they
    differ from the plain gradient. Adaptation keys add them to the entry, so a default that changes
    makes results adapted under the old one stale, and results with the plain gradient keep their keys."""
    import inspect

    if type not in GUIDES:
        return {}
    signature = inspect.signature(GUIDES.get(type)).parameters
    chosen = {key: params.get(key, signature[key].default) for key in PLAIN_GRADIENT if key in signature}
    return {key: value for key, value in chosen.items() if value != PLAIN_GRADIENT[key]}


def build_guide(type: str, **params) -> Guide:
    """Build a registered guide by name."""
    return GUIDES.build(type, **params)


def weights_id(type: str, **params) -> str | None:
    """Which weights a guide entry stands for, found without building it: the embedded guide's
    training hash (its code's ``VERSION`` included), the sha256 of an open_clip weights file, or
    None (random open_clip weights, or a guide type that names no weights). Results adapted with a
    guide record this, so a retrained or replaced guide makes them stale."""
    import inspect

    if type not in ("embedded", "open_clip"):
        return None
    bound = inspect.signature(GUIDES.get(type)).bind(**params)
    bound.apply_defaults()
    args = bound.arguments
    if type == "embedded":
        from harness.guide.embedded import config_key

        names = inspect.signature(_embedded_training).parameters
        return config_key(args["steps"], args["seed"], **_embedded_training(**{k: args[k] for k in names}))
    from harness.guide.model import resolve_weights
    from harness.store import file_sha256

    weights, _ = resolve_weights(args["model"], args["pretrained"], args["cache_dir"])
    return file_sha256(weights) if weights is not None else None


def guide_identity(guide: Guide, spec: dict) -> dict:
    """What a checkpoint of a guide-driven backbone records about its guide: the recipe entry that
    rebuilds it (``spec``: type and parameters) and the weights it had (``sha256``)."""
    info = guide.describe()
    return {"spec": dict(spec), "type": info.get("type"), "model": info.get("model"), "sha256": info.get("sha256")}


def check_guide(recorded: dict | None, current: dict, where: str) -> None:
    """Refuse to run a checkpoint with another guide than the one it was trained with."""
    if current.get("sha256") is None:
        raise HarnessError(f"the guide ({current.get('type')} {current.get('model')}) has no weights file, so {where} "
                           "cannot record which guide it needs",
                           "use guide: {type: embedded} or open_clip with pretrained weights")
    if not recorded or recorded.get("sha256") != current["sha256"]:
        had = "no guide" if not recorded else f"guide {recorded.get('model')} sha256 {str(recorded.get('sha256'))[:12]}"
        raise HarnessError(f"{where} was trained with {had}, not the recipe's guide {current.get('model')} "
                           f"sha256 {current['sha256'][:12]}",
                           "restore that guide's weights, or delete the checkpoint's folder to retrain it")


def guide_from_identity(recorded: dict | None, where: str) -> Guide:
    """Rebuild the guide a checkpoint recorded (see :func:`guide_identity`) and check its weights."""
    if not recorded or "spec" not in recorded:
        raise HarnessError(f"{where} records no guide, but its backbone needs one",
                           "use a checkpoint written by `harness run`")
    spec = dict(recorded["spec"])
    guide = build_guide(spec.pop("type"), **spec)
    check_guide(recorded, guide_identity(guide, recorded["spec"]), where)
    return guide
