"""Name -> builder registries, one per kind, filled by decorators (``type:`` in YAML picks one).

A builder's keyword arguments are its recipe parameters: ``params_model`` turns its signature into a
pydantic model (unknown keys forbidden, types checked) so a recipe is validated before any work.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable

import pydantic

from harness.errors import HarnessError


class Registry:
    """A named collection of builders of one kind (backbone, method, metric, dataset...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._models: dict[str, type[pydantic.BaseModel]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register ``fn`` under ``name`` (default: its ``__name__``)."""

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
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
            hints = typing.get_type_hints(fn)  # resolves string annotations (PEP 563)
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

    def validate(self, name: str, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Check ``params`` against the builder's signature; return them coerced to its types."""
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
            raise HarnessError(f"bad value for {loc!r} ({self.kind} {name!r}): {first['msg']}") from None
        return parsed.model_dump()

    def build(self, name: str, **params: Any) -> Any:
        return self.get(name)(**params)


BACKBONES = Registry("backbone")
METHODS = Registry("method")
METRICS = Registry("metric")
DATASETS = Registry("dataset")
GUIDES = Registry("guide")
REWEIGHTS = Registry("reweighting")  # patch reweighting of supervised pretraining (BILD)
