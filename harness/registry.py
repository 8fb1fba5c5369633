"""Name -> builder registries, one per kind, filled by decorators (``type:`` in YAML picks one).

A builder's keyword arguments are its recipe parameters: ``params_model`` turns its signature into a
pydantic model (unknown keys forbidden, types and ``Annotated`` constraints checked, e.g.
``steps: PositiveInt``) so a recipe is validated before any work. Checks that involve several
parameters, or the recipe around the entry (e.g. ``top_k`` against the backbone's candidate groups),
are a ``check`` hook given at registration: ``check(params, context)`` raises a ``HarnessError``.
Hooks run only in :meth:`Registry.validate`; calling a builder directly is not validated.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable

import pydantic
from pydantic import Field

from harness.errors import HarnessError

# constrained parameter types for builder signatures
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # learning rates, scales: finite, > 0


@dataclass(frozen=True)
class CheckContext:
    """What a ``check`` hook may look at besides the entry's own parameters.

    ``backbones``: the recipe's backbones by display name, each built on the ``meta`` device (no
    memory, no weights), so a hook can count or match their LoRA candidate sites cheaply.
    """

    backbones: dict[str, Any] = field(default_factory=dict)


Check = Callable[[dict[str, Any], CheckContext], None]


class Registry:
    """A named collection of builders of one kind (backbone, method, metric, dataset...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._models: dict[str, type[pydantic.BaseModel]] = {}
        self._checks: dict[str, Check] = {}

    def register(self, name: str | None = None, check: Check | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``fn`` under ``name`` (default: its ``__name__``), with an optional
        cross-field ``check(params, context)`` run by :meth:`validate`."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            if check is not None:
                self._checks[key] = check
            return fn

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        try:
            return self._entries[name]
        except KeyError:
            raise HarnessError(
                f"unknown {self.kind} {name!r}", f"use one of: {', '.join(self.names())}"
            ) from None

    def params_model(self, name: str) -> type[pydantic.BaseModel]:
        """A pydantic model of the builder's keyword parameters (extra keys forbidden)."""
        if name not in self._models:
            fn = self.get(name)
            # resolves string annotations (PEP 563) and keeps Annotated constraints
            hints = typing.get_type_hints(fn, include_extras=True)
            fields: dict[str, Any] = {}
            extra = "forbid"
            for p in inspect.signature(fn).parameters.values():
                if p.kind is p.VAR_KEYWORD:
                    extra = "allow"
                    continue
                if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY) or p.name.startswith("_"):
                    continue
                annotation = hints.get(p.name, Any)
                default = ... if p.default is p.empty else p.default
                fields[p.name] = (annotation, default)
            config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True)
            self._models[name] = pydantic.create_model(
                f"{self.kind}_{name}_params", __config__=config, **fields
            )
        return self._models[name]

    def validate(self, name: str, params: dict[str, Any], where: str = "",
                 context: CheckContext | None = None) -> dict[str, Any]:
        """Check ``params`` against the builder's signature and its ``check`` hook; return them
        coerced to its types, defaults filled in."""
        model = self.params_model(name)
        try:
            parsed = model.model_validate(params)
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "?"
            loc = f"{where}.{key}" if where else key
            if first["type"] == "extra_forbidden":
                known = ", ".join(model.model_fields)
                raise HarnessError(
                    f"unknown key {loc!r} for {self.kind} {name!r}", f"remove it or use one of: {known}"
                ) from None
            raise HarnessError(f"bad value for {loc!r} ({self.kind} {name!r}): {first['msg']}",
                               fix_for(first)) from None
        values = parsed.model_dump()
        if name in self._checks:
            try:
                self._checks[name](values, context or CheckContext())
            except HarnessError as err:
                raise HarnessError(f"{where}: {err}" if where else str(err)) from None
        return values

    def build(self, name: str, **params: Any) -> Any:
        return self.get(name)(**params)


def fix_for(error: dict[str, Any]) -> str | None:
    """A fix for the common pydantic complaints about a number."""
    ctx = error.get("ctx") or {}
    return {
        "greater_than": f"use a value above {ctx.get('gt')}",
        "greater_than_equal": f"use a value of at least {ctx.get('ge')}",
        "less_than": f"use a value below {ctx.get('lt')}",
        "less_than_equal": f"use a value of at most {ctx.get('le')}",
        "finite_number": "use a finite number (not nan or inf)",
        "literal_error": "use one of those",
    }.get(error["type"])


BACKBONES = Registry("backbone")
METHODS = Registry("method")
METRICS = Registry("metric")
DATASETS = Registry("dataset")
GUIDES = Registry("guide")
REWEIGHTS = Registry("reweighting")  # patch reweighting of supervised pretraining (BILD)
