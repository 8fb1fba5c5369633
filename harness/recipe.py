"""Recipe schema (pydantic), YAML loading with line-aware errors, dotted overrides, grid expansion.

A recipe names backbones, pretraining data, target (real-haze) data, methods, benchmarks,
metrics, seeds, budgets and the guide model. ``expand`` turns it into cells: a pure function.
Each entry of a list is ``{type: <registered name>, ...params}``; params are checked against the
registered builder's signature before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from harness.errors import HarnessError
from harness.registry import BACKBONES, DATASETS, GUIDES, METHODS, METRICS, Registry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entry(BaseModel):
    """``{type: name, label: optional display name, ...builder params}``."""

    model_config = ConfigDict(extra="allow")
    type: str
    label: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def name(self) -> str:
        return self.label or self.type

    def spec(self) -> dict[str, Any]:
        """Everything that defines this entry (label excluded: it is only a display name)."""
        return {"type": self.type, **self.params}


class BackboneEntry(Entry):
    variant: str = "full"

    @property
    def name(self) -> str:
        return self.label or f"{self.type}-{self.variant}"

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "variant": self.variant, **self.params}


class H2COverride(Strict):
    """Per-method change of the H2C loss (the positive-/negative-only ablations, other prompts)."""

    mode: Literal["both", "positive", "negative"] | None = None
    positive: str | None = None
    negative: str | None = None


class MethodEntry(Entry):
    # sweep: {param: [values]} expands into one cell per combination (e.g. top_k: [1, 2, 3])
    sweep: dict[str, list[Any]] = Field(default_factory=dict)
    h2c: H2COverride | None = None

    def spec(self) -> dict[str, Any]:
        spec = {"type": self.type, **self.params}
        if self.h2c is not None:
            spec["h2c"] = self.h2c.model_dump(exclude_none=True)
        return spec


class MetricEntry(Entry):
    # optional metrics whose weights/model are absent show "n/a" instead of failing the run
    optional: bool = False


class StageBudget(Strict):
    """Batch and patch size of one stage; unset values fall back to the budget's shared ones."""

    batch_size: int | None = Field(None, ge=1)
    patch_size: int | None = Field(None, ge=8)


class PretrainBudget(StageBudget):
    steps: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)


class Budget(Strict):
    """Shared defaults (``pretrain_steps``, ``batch_size``, ...) and per-stage overrides.

    Each stage's cache key holds only its own resolved budget, so a different adaptation batch
    never retrains a pretrained checkpoint.
    """

    pretrain_steps: int = Field(2000, ge=0)
    pretrain_lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(128, ge=8)
    checkpoint_every: int = Field(100, ge=1)
    pretrain: PretrainBudget = Field(default_factory=PretrainBudget)
    adapt: StageBudget = Field(default_factory=StageBudget)

    def pretraining(self) -> dict[str, Any]:
        p = self.pretrain
        return {"steps": self.pretrain_steps if p.steps is None else p.steps,
                "lr": self.pretrain_lr if p.lr is None else p.lr,
                "batch_size": p.batch_size or self.batch_size, "patch_size": p.patch_size or self.patch_size}

    def adaptation(self) -> dict[str, Any]:
        a = self.adapt
        return {"batch_size": a.batch_size or self.batch_size, "patch_size": a.patch_size or self.patch_size}


class GuideConfig(Entry):
    type: str = "embedded"
    positive: str = "a clear photo"
    negative: str = "a photo with haze"
    mode: Literal["both", "positive", "negative"] = "both"

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "positive": self.positive, "negative": self.negative,
                "mode": self.mode, **self.params}


class EvalConfig(Strict):
    workers: int = Field(1, ge=1)
    max_side: int | None = Field(None, ge=16)  # downscale larger images before restoring
    save_outputs: bool = False
    samples: int = Field(4, ge=0)  # input/output PNGs kept per benchmark for the report's image grid


class EngineConfig(Strict):
    """How training runs: the strategy (``auto``: DDP under several ranks, else one device),
    DeepSpeed's ZeRO stage, and numerics (precision and memory format change results, so they are
    part of the cache keys; the strategy and ZeRO stage are not)."""

    strategy: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    zero_stage: Literal[1, 2] = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False

    def numerics(self) -> dict[str, Any]:
        return {"precision": self.precision, "channels_last": self.channels_last}


class SlurmConfig(Strict):
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = "04:00:00"
    mem: str | None = None
    cpus_per_task: int | None = Field(None, ge=1)
    array_parallelism: int = Field(16, ge=1)  # at most this many array tasks of one level at once
    extra: list[str] = Field(default_factory=list)  # more #SBATCH lines, e.g. "--constraint=a100"
    setup: list[str] = Field(default_factory=list)  # shell lines before the task, e.g. "module load cuda"


class Resources(Strict):
    gpus_per_cell: int = Field(1, ge=0)  # devices one training task uses (its DDP/DeepSpeed world)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)


class Recipe(Strict):
    name: str
    out: Path | None = None
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str = "auto"
    backbones: list[BackboneEntry] = Field(min_length=1)
    pretrain: list[Entry] = Field(min_length=1)
    target: list[Entry] = Field(min_length=1)
    target_split: float = Field(0.5, gt=0, lt=1)
    methods: list[MethodEntry] = Field(min_length=1)
    benchmarks: list[Entry] = Field(min_length=1)
    metrics: list[MetricEntry] = Field(min_length=1)
    guide: GuideConfig = Field(default_factory=GuideConfig)
    budget: Budget = Field(default_factory=Budget)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    on_corrupt: Literal["fail", "skip"] = "fail"
    allow_overlap: bool = False  # target images that also appear in a benchmark (recorded if allowed)
    baselines: list[Path] = Field(default_factory=list)  # published numbers shown beside ours
    engine: EngineConfig = Field(default_factory=EngineConfig)
    resources: Resources = Field(default_factory=Resources)

    def run_dir(self) -> Path:
        return self.out if self.out is not None else Path("results") / self.name


# ---------------------------------------------------------------- loading and validation


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``path`` (or of its deepest existing parent)."""
    line = None if node is None else node.start_mark.line + 1
    for key in path:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _normalise_lists(data: dict[str, Any]) -> dict[str, Any]:
    """Allow the shorthand ``metrics: [fade, entropy]`` (a bare name means ``{type: name}``)."""
    for key in ("backbones", "pretrain", "target", "methods", "benchmarks", "metrics"):
        items = data.get(key)
        if isinstance(items, list):
            data[key] = [{"type": it} if isinstance(it, str) else it for it in items]
    if isinstance(data.get("guide"), str):
        data["guide"] = {"type": data["guide"]}
    return data


def _parse_value(raw: str) -> Any:
    """YAML value, but ``1e-3`` is a number (YAML 1.1 would read it as a string)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML; list items by index)."""
    for item in overrides:
        if "=" not in item:
            raise HarnessError(f"bad override {item!r}", "write it as key.path=value, e.g. budget.pretrain_steps=100")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node: Any = data
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise HarnessError(f"override {dotted!r}: {key!r} is not an index of a {len(node)}-item list")
                key = int(key)
            elif not isinstance(node, dict):
                raise HarnessError(f"override {dotted!r}: {'.'.join(keys[:i])!r} is not a mapping")
            if last:
                node[key] = _parse_value(raw)
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe; every problem is a one-line error with key and line."""
    from harness.plugins import load_plugins

    load_plugins()
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"recipe {path} not found", "pass the path of a YAML recipe, e.g. recipes/quickstart.yaml")
    text = path.read_text()
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise HarnessError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: a recipe must be a mapping of keys", "see recipes/quickstart.yaml")
    data = apply_overrides(_normalise_lists(data), overrides or [])
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        dotted = ".".join(str(p) for p in loc)
        line = _line_of(root, loc)
        where = f"{path}:{line}" if line else str(path)
        if first["type"] == "extra_forbidden":
            parent = ".".join(str(p) for p in loc[:-1]) or "the top level"
            raise HarnessError(f"{where}: unknown key {dotted!r}", f"check the spelling of {loc[-1]!r} under {parent}") from None
        if first["type"] == "missing":
            raise HarnessError(f"{where}: missing key {dotted!r}", "add it (see recipes/quickstart.yaml)") from None
        raise HarnessError(f"{where}: bad value for {dotted!r}: {first['msg']}") from None
    _validate_entries(recipe, path, root)
    if check_paths:
        _check_paths(recipe, path, root)
    return recipe


def _validate_entries(recipe: Recipe, path: Path, root: yaml.Node | None) -> None:
    groups: list[tuple[str, Registry, list[Entry]]] = [
        ("backbones", BACKBONES, recipe.backbones),
        ("pretrain", DATASETS, recipe.pretrain),
        ("target", DATASETS, recipe.target),
        ("benchmarks", DATASETS, recipe.benchmarks),
        ("methods", METHODS, recipe.methods),
        ("metrics", METRICS, recipe.metrics),
    ]
    for key, registry, entries in groups:
        for i, entry in enumerate(entries):
            line = _line_of(root, (key, i))
            where = f"{path}:{line}" if line else str(path)
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
                coerced = registry.validate(entry.type, first, where=f"{key}[{i}]")
                if key == "methods" and isinstance(coerced.get("source"), dict):
                    coerced["source"] = _validated_source(coerced["source"], f"{key}[{i}].source")
                # keep the typed values (YAML reads 1e-4 as a string) for the keys the recipe gave
                entry.__pydantic_extra__.update({k: coerced[k] for k in entry.params if k in coerced})
                for name, values in swept.items():
                    swept[name] = [registry.validate(entry.type, {**first, name: v}, where=f"{key}[{i}].sweep")[name]
                                   for v in values]
            except HarnessError as err:
                raise HarnessError(f"{where}: {err}") from None
    guide_params = dict(recipe.guide.params)
    if recipe.guide.type not in GUIDES:
        raise HarnessError(f"{path}: unknown guide {recipe.guide.type!r}", f"use one of: {', '.join(GUIDES.names())}")
    try:
        GUIDES.validate(recipe.guide.type, guide_params, where="guide")
    except HarnessError as err:
        raise HarnessError(f"{path}:{_line_of(root, ('guide',)) or '?'}: {err}") from None


def _validated_source(source: dict[str, Any], where: str) -> dict[str, Any]:
    """A nested method spec (e.g. graft's ``source``) checked like a top-level method, typed."""
    params = {k: v for k, v in source.items() if k not in ("type", "h2c")}
    if source.get("type") not in METHODS:
        raise HarnessError(f"unknown method {source.get('type')!r} in {where}",
                           f"use one of: {', '.join(METHODS.names())}")
    coerced = METHODS.validate(source["type"], params, where=where)
    spec = {"type": source["type"], **{k: coerced[k] for k in params}}  # as given, like a top-level entry
    if "h2c" in source:
        try:
            spec["h2c"] = H2COverride.model_validate(source["h2c"]).model_dump(exclude_none=True)
        except pydantic.ValidationError as err:
            raise HarnessError(f"bad value for {where}.h2c: {err.errors()[0]['msg']}") from None
    return spec


def missing_paths(recipe: Recipe) -> list[tuple[str, Path]]:
    """``(key, folder)`` for every dataset ``root:`` that does not exist, e.g. ``("benchmarks[1]", ...)``."""
    missing = []
    for key in ("pretrain", "target", "benchmarks"):
        for i, entry in enumerate(getattr(recipe, key)):
            folder = entry.params.get("root")
            if folder is not None and not Path(folder).exists():
                missing.append((f"{key}[{i}]", Path(folder)))
    return missing


def _check_paths(recipe: Recipe, path: Path, root: yaml.Node | None) -> None:
    """Every ``root:`` of a dataset must exist before any work starts."""
    for key, folder in missing_paths(recipe)[:1]:
        name, index = key[:-1].split("[")
        line = _line_of(root, (name, int(index), "root"))
        entry_type = getattr(recipe, name)[int(index)].type
        raise HarnessError(f"{path}:{line}: {key}.root folder {folder} does not exist",
                           f"point {key}.root at the {entry_type} dataset folder")
