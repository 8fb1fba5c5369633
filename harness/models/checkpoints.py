"""Load official checkpoints into our backbones: unwrap containers, rename keys, report differences.

Each backbone may register a key map: ordered ``(regex, replacement)`` rules applied to every
checkpoint key (``re.sub``); a ``None`` replacement drops matching keys on purpose (modules the
official code builds but never uses). Backbones without a map load by identity, since our module
names follow the official ones.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from harness.errors import HarnessError
from harness.registry import BACKBONES

KeyRule = tuple[str, "str | None"]
KEY_MAPS: dict[str, list[KeyRule]] = {}

# Containers seen in official and common training code, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "params_ema", "params")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def register_key_map(backbone: str, rules: Iterable[KeyRule]) -> None:
    """Register the official-to-ours key rules of ``backbone`` (replaces an earlier map)."""
    KEY_MAPS[backbone] = [(pattern, repl) for pattern, repl in rules]


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model."""

    backbone: str
    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, ckpt, model
    dropped: list[str] = field(default_factory=list)  # removed on purpose by the key map

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 10) -> str:
        """A few lines: counts, then up to ``limit`` keys of each problem."""

        def some(keys: list[str]) -> str:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = [(f"{self.backbone} <- {self.path}: {len(self.loaded)} tensors loaded, "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape mismatches, {len(self.dropped)} dropped by the key map")]
        if self.missing:
            lines.append(f"  missing: {some(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {some(self.unexpected)}")
        if self.mismatched:
            shapes = [f"{k} {a} vs ours {b}" for k, a, b in self.mismatched]
            lines.append(f"  shape mismatch: {some(shapes)}")
        return "\n".join(lines)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.pkl (torch.save, weights only) or .safetensors file as a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} does not exist", "check the path (download it first)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise HarnessError(
            f"checkpoint {path} is not a weights-only torch file ({str(err).splitlines()[0][:120]})",
            "if it pickles a whole model (MSBDN-DFF saves torch.save(model)), re-save it once in the "
            "official code as torch.save(model.state_dict(), 'weights.pth')",
        ) from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: Path | str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the state dict inside common containers and strip DataParallel/compile prefixes."""
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise HarnessError(
                f"no state dict found in {path} (top-level keys: {', '.join(map(str, list(obj)[:8]))})",
                f"save the weights under one of {', '.join(_CONTAINER_KEYS)} or as a plain state dict",
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise HarnessError(f"{path} holds a {type(obj).__name__}, not a state dict",
                           "save model.state_dict() instead")
    state = dict(obj)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def map_keys(state: dict[str, torch.Tensor], rules: list[KeyRule]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply ``rules`` to every key; return the renamed state and the keys dropped."""
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            if re.search(pattern, new):
                if repl is None:
                    new = None
                    break
                new = re.sub(pattern, repl, new)
        if new is None:
            dropped.append(key)
        else:
            renamed[new] = value
    return renamed, dropped


def load_official(model: nn.Module, path: str | Path, backbone: str, verbose: bool = True) -> LoadReport:
    """Load an official checkpoint of ``backbone`` into ``model`` (strict=False) and report.

    Tensors whose shape differs from ours are left out (and reported) rather than failing the load.
    """
    if backbone not in BACKBONES:
        BACKBONES.get(backbone)  # raises the HarnessError listing known backbones
    state, dropped = map_keys(read_checkpoint(path), KEY_MAPS.get(backbone, []))
    ours = model.state_dict()
    report = LoadReport(backbone, Path(path), dropped=dropped)
    usable = {}
    for key, value in state.items():
        if key not in ours:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(ours[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(ours[key].shape)))
        else:
            usable[key] = value
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = [k for k in ours if k not in state]
    if verbose:
        print(report.summary())
    return report
