"""The checks a recipe passes before any work: one function for ``run``, ``run --dry-run`` and ``plan``.

Beyond the schema (:mod:`harness.recipe`): every entry's parameters against its builder's signature
and ``check`` hook, with the recipe's backbones built on the ``meta`` device (unknown variants;
``top_k`` and ``sites`` against the candidate groups), every sweep combination, labels and entries
given twice, the device, ``HARNESS_CACHE``, dataset folders and baselines files, and a cheap look at
the data: each dataset read from a folder is listed and its files' headers read (layout, counts,
images under ``MIN_SIDE`` px, a patch size larger than the training images, ``eval.max_side``
shrinking an image below ``MIN_SIDE``). No training, no weights, no full decode: a file truncated
after its header is found when the run screens the data by decoding it (before any training).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pydantic
import yaml
from rich.console import Console
from rich.markup import escape

from harness.errors import HarnessError
from harness.hashing import stable_hash
from harness.recipe import Entry, H2COverride, MethodEntry, Recipe, _line_of, missing_paths, parse_recipe
from harness.registry import BACKBONES, DATASETS, GUIDES, METHODS, METRICS, REWEIGHTS, CheckContext

DATA_KEYS = ("pretrain", "target", "benchmarks")


class _At:
    """``path:line`` of a key of the recipe file."""

    def __init__(self, path: Path, root: yaml.Node | None):
        self.path, self.root = path, root

    def __call__(self, *keys: Any) -> str:
        line = _line_of(self.root, keys)
        return f"{self.path}:{line}" if line else str(self.path)

    def line(self, *keys: Any) -> int | None:
        return _line_of(self.root, keys)


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe; every problem is a one-line error with key and line.

    This is the one validation of ``harness run``, ``run --dry-run`` and ``harness plan``;
    ``check_paths=False`` (plan) lets dataset folders that do not exist yet through, unchecked.
    """
    from harness.plugins import load_plugins

    load_plugins()
    recipe, root = parse_recipe(path, overrides)
    validate_recipe(recipe, Path(path), root, check_paths=check_paths)
    return recipe


def validate_recipe(recipe: Recipe, path: Path, root: yaml.Node | None, check_paths: bool = True) -> None:
    """Raise a one-line ``HarnessError`` for the first problem; warn (stderr) about doubtful data.

    Fills typed values into the entries (YAML reads ``1e-4`` as a string) and makes the top-level
    ``on_corrupt`` the default of every dataset entry. ``check_paths=False`` (``harness plan``)
    skips dataset folders that do not exist yet and only warns about the guide's weights.
    """
    at = _At(path, root)
    _check_device(recipe, at)
    _check_cache()
    _validate_group(recipe, at, "backbones", BACKBONES, CheckContext())
    context = CheckContext(backbones=_meta_backbones(recipe, at))
    for key, registry in (("pretrain", DATASETS), ("target", DATASETS), ("benchmarks", DATASETS),
                          ("methods", METHODS), ("metrics", METRICS)):
        _validate_group(recipe, at, key, registry, context)
    _validate_reweights(recipe, at)
    _validate_guide(recipe, at, context, warn_only=not check_paths)
    _check_unique(recipe, at)
    _default_on_corrupt(recipe)
    _check_paths(recipe, at, check_roots=check_paths)
    _probe_data(recipe, at)


# ---------------------------------------------------------------- entries


def _as_typed(given: dict[str, Any], coerced: dict[str, Any]) -> dict[str, Any]:
    """The keys a recipe entry gave, with the values its builder's signature coerced them to (YAML
    reads ``1e-4`` as a string and ``1`` as an int), so that ids hash the typed values."""
    return {k: coerced[k] for k in given if k in coerced}


def _validate_group(recipe: Recipe, at: _At, key: str, registry, context: CheckContext) -> None:
    for i, entry in enumerate(getattr(recipe, key)):
        where = at(key, i)
        if entry.type not in registry:
            raise HarnessError(f"{where}: unknown {registry.kind} {entry.type!r} in {key}[{i}]",
                               f"use one of: {', '.join(registry.names())}")
        params = entry.spec() if key == "backbones" else entry.params
        params.pop("type", None)
        swept = entry.sweep if isinstance(entry, MethodEntry) else {}
        try:
            empty = [name for name, values in swept.items() if not values]
            if empty:
                raise HarnessError(f"sweep {empty[0]!r} of {key}[{i}] lists no values", "give at least one value")
            first = {**params, **{name: values[0] for name, values in swept.items()}}
            coerced = registry.validate(entry.type, first, where=f"{key}[{i}]", context=context)
            if key == "methods" and isinstance(coerced.get("source"), dict):
                coerced["source"] = _validated_source(coerced["source"], f"{key}[{i}].source", context)
            # keep the typed values (YAML reads 1e-4 as a string) for the keys the recipe gave
            entry.__pydantic_extra__.update(_as_typed(entry.params, coerced))
            for name, values in swept.items():
                swept[name] = [registry.validate(entry.type, {**first, name: v}, where=f"{key}[{i}].sweep")[name]
                               for v in values]
            names = list(swept)
            for combo in itertools.product(*swept.values()) if names else []:  # every cell's setting
                setting = ", ".join(f"{n}={v}" for n, v in zip(names, combo))
                registry.validate(entry.type, {**first, **dict(zip(names, combo))},
                                  where=f"{key}[{i}].sweep ({setting})", context=context)
        except HarnessError as err:
            raise HarnessError(f"{where}: {err}") from None


def _validated_source(source: dict[str, Any], where: str, context: CheckContext) -> dict[str, Any]:
    """A nested method spec (e.g. graft's ``source``) checked like a top-level method, typed."""
    params = {k: v for k, v in source.items() if k not in ("type", "h2c")}
    if source.get("type") not in METHODS:
        raise HarnessError(f"unknown method {source.get('type')!r} in {where}",
                           f"use one of: {', '.join(METHODS.names())}")
    coerced = METHODS.validate(source["type"], params, where=where, context=context)
    spec = {"type": source["type"], **_as_typed(params, coerced)}  # as given, like a top-level entry
    if "h2c" in source:
        try:
            spec["h2c"] = H2COverride.model_validate(source["h2c"]).model_dump(exclude_none=True)
        except pydantic.ValidationError as err:
            raise HarnessError(f"bad value for {where}.h2c: {err.errors()[0]['msg']}") from None
    return spec


def _validate_reweights(recipe: Recipe, at: _At) -> None:
    """Each pretraining entry's ``reweight:`` (a ``REWEIGHTS`` entry) checked by its builder; values typed."""
    for i, entry in enumerate(recipe.pretrain):
        reweight, key = entry.reweight, f"pretrain[{i}].reweight"
        if reweight is None:
            continue
        where = at("pretrain", i, "reweight")
        if not isinstance(reweight, dict) or "type" not in reweight:
            raise HarnessError(f"{where}: {key} must be a mapping with a type", "write e.g. reweight: {type: bild}")
        if reweight["type"] not in REWEIGHTS:
            raise HarnessError(f"{where}: unknown {REWEIGHTS.kind} {reweight['type']!r} in {key}",
                               f"use one of: {', '.join(REWEIGHTS.names())}")
        params = {k: v for k, v in reweight.items() if k != "type"}
        try:
            coerced = REWEIGHTS.validate(reweight["type"], params, where=key)
            REWEIGHTS.build(reweight["type"], **coerced)  # its range checks
        except HarnessError as err:
            raise HarnessError(f"{where}: {err}") from None
        reweight.update(_as_typed(params, coerced))


def _meta_backbones(recipe: Recipe, at: _At) -> dict[str, Any]:
    """Each backbone in deploy form on the ``meta`` device (no memory): unknown variants fail here."""
    models = {}
    for i, bb in enumerate(recipe.backbones):
        try:
            models[bb.name] = _deploy_form(bb.type, bb.variant, bb.params)
        except HarnessError as err:
            raise HarnessError(f"{at('backbones', i)}: backbones[{i}]: {err}") from None
    return models


def _deploy_form(name: str, variant: str, options: dict[str, Any]):
    import torch

    from harness.models.base import build_backbone

    try:
        with torch.device("meta"):
            return build_backbone(name, variant, **options).deploy()
    except HarnessError:
        raise
    except Exception:  # a builder that needs real tensors (e.g. a plugin's): build it on the CPU instead
        return build_backbone(name, variant, **options).deploy()


def _validate_guide(recipe: Recipe, at: _At, context: CheckContext, warn_only: bool) -> None:
    """The guide's parameters and (hook) its weights file; ``warn_only`` (plan): weights may come later."""
    guide = recipe.guide
    if guide.type not in GUIDES:
        raise HarnessError(f"{at('guide')}: unknown guide {guide.type!r}", f"use one of: {', '.join(GUIDES.names())}")
    try:
        coerced = GUIDES.validate(guide.type, dict(guide.params), where="guide", context=context)
        # `cast_weight: 1` and `1.0` are one guide: one cache file, one weights id
        guide.__pydantic_extra__.update(_as_typed(guide.params, coerced))
    except HarnessError as err:
        if not warn_only:
            raise HarnessError(f"{at('guide')}: {err}") from None
        _warn(f"{at('guide')}: {err}; `harness run` will stop there")


def _check_unique(recipe: Recipe, at: _At) -> None:
    """No entry given twice, no label shared by two differently configured entries, no seed twice,
    and no two cells alike (e.g. a sweep value repeated)."""
    for key in ("backbones", *DATA_KEYS, "methods", "metrics"):
        by_spec: dict[str, int] = {}
        by_name: dict[str, int] = {}
        for j, entry in enumerate(getattr(recipe, key)):
            spec = _full_spec(entry)
            i = by_spec.setdefault(stable_hash(spec), j)
            if i != j:
                raise HarnessError(f"{at(key, j)}: {key}[{j}] repeats {key}[{i}] (line {at.line(key, i)}): "
                                   "same type and parameters", "remove one of them")
            i = by_name.setdefault(entry.name, j)
            if i != j:
                other = _full_spec(getattr(recipe, key)[i])
                differ = sorted(k for k in set(spec) | set(other) if spec.get(k) != other.get(k))
                raise HarnessError(
                    f"{at(key, j)}: {key}[{j}] and {key}[{i}] (line {at.line(key, i)}) share the label "
                    f"{entry.name!r} but differ in {', '.join(differ)}; their results would be merged under one name",
                    f"give each its own label: (e.g. label: {entry.name}-{j})")
    seen: set[int] = set()
    for i, seed in enumerate(recipe.seeds):
        if seed in seen:
            raise HarnessError(f"{at('seeds', i)}: seed {seed} is listed twice", "list each seed once")
        seen.add(seed)
    cells: dict[str, Any] = {}
    from harness.plan.graph import expand

    for cell in expand(recipe):
        twin = cells.setdefault(cell.id, cell)
        if twin is not cell:
            raise HarnessError(f"{at('methods')}: methods {twin.labels['method']!r} and {cell.labels['method']!r} "
                               "give the same cell (same method and parameters)",
                               "remove the repeated method entry or sweep value")


def _full_spec(entry: Entry) -> dict[str, Any]:
    spec = entry.spec()
    if isinstance(entry, MethodEntry) and entry.sweep:
        spec["sweep"] = entry.sweep
    return spec


def _default_on_corrupt(recipe: Recipe) -> None:
    """The top-level ``on_corrupt`` is the default of every dataset entry that does not set its own,
    so skipping happens (with its warning) where the data is screened."""
    if recipe.on_corrupt == "fail":  # the builders' own default: nothing to fill in
        return
    for key in DATA_KEYS:
        for entry in getattr(recipe, key):
            if "on_corrupt" not in entry.params and "on_corrupt" in DATASETS.params_model(entry.type).model_fields:
                entry.__pydantic_extra__["on_corrupt"] = recipe.on_corrupt


# ---------------------------------------------------------------- environment and files


def _check_device(recipe: Recipe, at: _At) -> None:
    try:
        check_device(recipe.device)
    except HarnessError as err:
        raise HarnessError(f"{at('device')}: {err}") from None


def check_device(name: str):
    """The torch device ``name`` resolves to on this machine, or a one-line error (``tpu``, a
    missing GPU, ``cuda:3`` on a one-GPU machine)."""
    import torch

    from harness.engine.strategy import resolve_device

    try:
        device = resolve_device(name)
    except (RuntimeError, ValueError):
        raise HarnessError(f"device {name!r} is not a torch device", "use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise HarnessError(f"device {name!r} is not supported by the harness", "use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise HarnessError(f"device {name!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)",
                           "use auto, or cuda:N with a valid N")
    return device


def _check_cache() -> None:
    """``HARNESS_CACHE`` (synthetic data, the embedded guide) must be a folder or creatable as one."""
    from harness.data.datasets import cache_root

    cache = cache_root().parent
    blocker = next((p for p in (cache, *cache.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise HarnessError(f"HARNESS_CACHE {cache} is not a folder ({blocker} is a file)",
                           "point HARNESS_CACHE at a folder, or unset it to use ~/.cache/dehaze-harness")


def _check_paths(recipe: Recipe, at: _At, check_roots: bool) -> None:
    """Every dataset ``root:`` (unless ``check_roots`` is off) and every baselines file must exist."""
    for key, folder in missing_paths(recipe)[:1] if check_roots else []:
        name, index = key[:-1].split("[")
        entry_type = getattr(recipe, name)[int(index)].type
        raise HarnessError(f"{at(name, int(index), 'root')}: {key}.root folder {folder} does not exist",
                           f"point {key}.root at the {entry_type} dataset folder")
    for i, path in enumerate(recipe.baselines):
        if not Path(path).is_file():
            raise HarnessError(f"{at('baselines', i)}: baselines[{i}] file {path} does not exist",
                               "point it at a YAML file of published numbers (see baselines/)")


# ---------------------------------------------------------------- a cheap look at the data


def _probe_data(recipe: Recipe, at: _At) -> None:
    """Folder datasets listed and screened by header; image sizes against the patch and eval sizes."""
    from harness.data.datasets import screen_headers_only
    from harness.data.io import MIN_SIDE, image_size

    max_side = recipe.eval.max_side
    b = recipe.budget
    # each training stage's own patch size (and the target's shrinking), named by the key that sets it
    stages = {"pretrain": (b.pretraining()["patch_size"], None,
                           "budget.pretrain.patch_size" if b.pretrain.patch_size else "budget.patch_size"),
              "target": (b.adaptation()["patch_size"], b.adapt.max_side,
                         "budget.adapt.patch_size" if b.adapt.patch_size else "budget.patch_size")}
    for key in DATA_KEYS:
        for i, entry in enumerate(getattr(recipe, key)):
            values = DATASETS.validate(entry.type, entry.params)
            where = f"{at(key, i)}: {key}[{i}] ({entry.name})"
            if values.get("root") is None:  # a generated dataset declares its image size
                sizes = [(values["size"], values["size"])] if isinstance(values.get("size"), int) else []
                names = ["every image"] * len(sizes)
            elif not Path(values["root"]).expanduser().exists():  # `harness plan` before the download
                continue
            else:
                try:
                    with screen_headers_only():
                        found = DATASETS.build(entry.type, **entry.params)
                except HarnessError as err:
                    raise HarnessError(f"{at(key, i)}: {key}[{i}]: {err}") from None
                sizes = [image_size(p.hazy) for p in found.pairs]
                names = [p.name for p in found.pairs]
            if not sizes:
                continue
            if key != "benchmarks":
                patch, shrink_to, setting = stages[key]
                shorts = [round(min(hw) * min(1.0, shrink_to / max(hw))) if shrink_to else min(hw) for hw in sizes]
                shrunk = f" (after budget.adapt.max_side={shrink_to})" if shrink_to else ""
                small = sum(s < patch for s in shorts)
                if small == len(shorts):
                    raise HarnessError(
                        f"{where}: {setting}={patch} is larger than every image{shrunk} (largest short side "
                        f"{max(shorts)} px): each training patch would be an upscaled whole image",
                        f"set {setting} to at most {max(shorts)}")
                if small:
                    _warn(f"{where}: {small} of {len(shorts)} images{shrunk} are smaller than {setting}={patch} "
                          "and are upscaled to fit")
            elif max_side is not None:
                for (h, w), name in zip(sizes, names):
                    if min(h, w) * min(1.0, max_side / max(h, w)) < MIN_SIDE:
                        raise HarnessError(f"{where}: eval.max_side={max_side} shrinks {name} ({w}x{h}) below "
                                           f"{MIN_SIDE} px", f"raise eval.max_side to at least "
                                           f"{-(-MIN_SIDE * max(h, w) // min(h, w))}, or remove that image")


def _warn(message: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)
