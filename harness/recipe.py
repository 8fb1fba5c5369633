"""Recipe schema (pydantic), YAML loading with line-aware errors, dotted overrides, grid expansion.

A recipe names backbones, pretraining data, target (real-haze) data, methods, benchmarks,
metrics, seeds, budgets and the guide model. ``expand`` turns it into cells: a pure function.
Each entry of a list is ``{type: <registered name>, ...params}``; params are checked against the
registered builder's signature before any work starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.errors import HarnessError
from harness.registry import fix_for


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
    distance_weight: float | None = Field(None, ge=0, allow_inf_nan=False)


class PretrainEntry(Entry):
    """A pretraining dataset entry; ``reweight: {type: bild, ...}`` (a ``REWEIGHTS`` entry) reweights its
    patches. ``params`` (the dataset builder's) leave it out; ``spec`` (and so the pretraining id) keeps it."""

    @property
    def reweight(self) -> dict[str, Any] | None:
        return (self.model_extra or {}).get("reweight")

    @property
    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items() if k != "reweight"}

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return f"{self.type}+{self.reweight['type']}" if self.reweight is not None else self.type

    def spec(self) -> dict[str, Any]:
        spec = {"type": self.type, **self.params}
        if self.reweight is not None:
            spec["reweight"] = self.reweight
        return spec


def dataset_spec(pretrain: dict[str, Any]) -> dict[str, Any]:
    """A pretraining spec without its ``reweight`` entry: what builds the dataset."""
    return {k: v for k, v in pretrain.items() if k != "reweight"}


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


class AdaptBudget(StageBudget):
    # shrink target images to this longer side before drawing patches, so that a patch covers as much of
    # a scene as the guide judges a photo by (a 64 px patch of a 1,500 px photo is a patch of texture)
    max_side: int | None = Field(None, ge=16)


class PretrainBudget(StageBudget):
    steps: int | None = Field(None, ge=0)
    lr: float | None = Field(None, gt=0)


class Budget(Strict):
    """Shared defaults (``pretrain_steps``, ``batch_size``, ...) and per-stage overrides.

    Each stage's cache key holds only its own resolved budget, so a different adaptation batch
    never retrains a pretrained checkpoint.
    """

    pretrain_steps: int = Field(2000, ge=0)
    pretrain_lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(128, ge=8)
    checkpoint_every: int = Field(100, ge=1)
    pretrain: PretrainBudget = Field(default_factory=PretrainBudget)
    adapt: AdaptBudget = Field(default_factory=AdaptBudget)

    @model_validator(mode="after")
    def _patches_fit_the_shrunk_target(self) -> Budget:
        side, patch = self.adapt.max_side, self.adaptation()["patch_size"]
        if side is not None and side < patch:
            raise ValueError(str(HarnessError(f"budget.adapt.max_side={side} is smaller than the adaptation patch "
                                              f"size {patch}: every patch would be upscaled",
                                              "raise budget.adapt.max_side or lower budget.adapt.patch_size")))
        return self

    def pretraining(self) -> dict[str, Any]:
        p = self.pretrain
        return {"steps": self.pretrain_steps if p.steps is None else p.steps,
                "lr": self.pretrain_lr if p.lr is None else p.lr,
                "batch_size": p.batch_size or self.batch_size, "patch_size": p.patch_size or self.patch_size}

    def adaptation(self) -> dict[str, Any]:
        a = self.adapt
        return {"batch_size": a.batch_size or self.batch_size, "patch_size": a.patch_size or self.patch_size,
                **({"max_side": a.max_side} if a.max_side else {})}  # only when set: older keys stay valid


class GuideConfig(Entry):
    type: str = "embedded"
    positive: str = "a clear photo"
    negative: str = "a photo with haze"
    mode: Literal["both", "positive", "negative"] = "both"
    # weight of H2C's distance term (see harness.guide.h2c); 0 is the paper's loss
    distance_weight: float = Field(0.0, ge=0, allow_inf_nan=False)

    def h2c(self) -> dict[str, Any]:
        """The H2C loss's settings (``H2CLoss`` keywords); the distance weight only when set, so that
        results adapted before it existed keep their keys."""
        return {"positive": self.positive, "negative": self.negative, "mode": self.mode,
                **({"distance_weight": self.distance_weight} if self.distance_weight else {})}

    def spec(self) -> dict[str, Any]:
        """What adaptation keys hold of the guide: its entry, with the gradient filter it stands for
        only where that filters (so an entry that turns it off keeps the keys of results from before it)."""
        from harness.guide import PLAIN_GRADIENT, gradient_filter

        given = {k: v for k, v in self.params.items() if k not in PLAIN_GRADIENT}
        return {"type": self.type, **self.h2c(), **given, **gradient_filter(self.type, self.params)}


class EvalConfig(Strict):
    workers: int = Field(1, ge=1)  # processes for the CPU-only metrics (fade impl: pyfade, biqme)
    max_side: int | None = Field(None, ge=16)  # downscale larger images before restoring
    save_outputs: bool = False
    samples: int = Field(4, ge=0)  # input/output PNGs kept per benchmark for the report's image grid
    batch_size: int | None = Field(None, ge=1)  # same-size images restored together (None: 8 on a GPU, 1 on the CPU)
    tile: int | None = Field(None, ge=64)  # restore larger images in tiles, as `harness dehaze --tile`
    overlap: int = Field(32, ge=0)


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
    pretrain: list[PretrainEntry] = Field(min_length=1)
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

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        # the default run folder is results/<name>: a path here would write elsewhere
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(str(HarnessError(f"{name!r} is not a plain name (it names the folder results/<name>)",
                                              "use letters, digits, '.', '_' and '-'; set out: to choose the folder")))
        return name

    @model_validator(mode="after")
    def _distance_only_with_the_paper_mode(self) -> Recipe:
        for i, method in enumerate(self.methods):
            h2c = {**self.guide.h2c(), **(method.h2c.model_dump(exclude_none=True) if method.h2c else {})}
            if h2c.get("distance_weight") and h2c["mode"] != "both":
                raise ValueError(str(HarnessError(
                    f"methods[{i}] ({method.name}) uses the H2C mode {h2c['mode']!r} with the distance weight "
                    f"{h2c['distance_weight']:g}, which only the mode 'both' has",
                    f"give methods[{i}] h2c: {{distance_weight: 0}}")))
        return self

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


def _parse_value(raw: str, dotted: str = "") -> Any:
    """YAML value, but ``1e-3`` is a number (YAML 1.1 would read it as a string)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise HarnessError(f"override {dotted}={raw}: the value is not valid YAML ({getattr(err, 'problem', err)})",
                           "write a YAML value, e.g. 4, 1e-4, [1, 2] or 'a text' (quote the whole --set for the shell)"
                           ) from None
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
                node[key] = _parse_value(raw, dotted)
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]
    return data


def _duplicate_key(node: yaml.Node | None, path: str = "") -> tuple[str, int, int] | None:
    """``(dotted key, first line, repeated line)`` of the first key given twice in one mapping."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for k, v in node.value:
            name = getattr(k, "value", None)
            dotted = f"{path}.{name}" if path else str(name)
            if isinstance(name, str) and name != "<<":
                if name in seen:
                    return dotted, seen[name], k.start_mark.line + 1
                seen[name] = k.start_mark.line + 1
            found = _duplicate_key(v, dotted)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, f"{path}.{i}")
            if found:
                return found
    return None


def _read(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The recipe's data and its YAML node tree (for line numbers); one-line errors for what is not a recipe."""
    if not path.is_file():
        raise HarnessError(f"recipe {path} not found", "pass the path of a YAML recipe, e.g. recipes/quickstart.yaml")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise HarnessError(f"recipe {path} is not a text file (it looks binary)",
                           "pass the path of a YAML recipe, e.g. recipes/quickstart.yaml")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise HarnessError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: a recipe must be a mapping of keys", "see recipes/quickstart.yaml")
    repeated = _duplicate_key(root)
    if repeated:
        key, first, again = repeated
        raise HarnessError(f"{path}:{again}: key {key!r} is given twice (first on line {first}); YAML would "
                           "silently keep the last one", "keep one of them")
    return data, root


def parse_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[Recipe, yaml.Node | None]:
    """Read and override a recipe and check it against the schema (one-line errors with key and
    line); returns it with its YAML node tree (for line numbers). :func:`harness.validate.load_recipe`
    adds the checks against the registries and the data."""
    path = Path(path)
    data, root = _read(path)
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
        if first["type"] == "value_error":
            if not loc:  # a check across the recipe's sections: its message names the entry
                raise HarnessError(f"{path}: {first['ctx']['error']}") from None
            raise HarnessError(f"{where}: bad value for {dotted!r}: {first['ctx']['error']}") from None
        raise HarnessError(f"{where}: bad value for {dotted!r}: {first['msg']}", fix_for(first)) from None
    return recipe, root


def missing_paths(recipe: Recipe) -> list[tuple[str, Path]]:
    """``(key, folder)`` for every dataset ``root:`` that does not exist, e.g. ``("benchmarks[1]", ...)``."""
    missing = []
    for key in ("pretrain", "target", "benchmarks"):
        for i, entry in enumerate(getattr(recipe, key)):
            folder = entry.params.get("root")
            if folder is not None and not Path(folder).exists():
                missing.append((f"{key}[{i}]", Path(folder)))
    return missing


