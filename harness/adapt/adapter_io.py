"""Adapters as files: save one, load one onto a base model (refusing a mismatched base), switch cheaply.

An adapter is ``adapter.safetensors`` (``<module>.lora_A``, ``<module>.lora_B``, ``gate.<group>``)
with a JSON sidecar (sites, rank, alpha, layout, gates, backbone, the base checkpoint's sha256,
guide). A sidecar without ``layout`` was written before layouts existed: ``conv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.adapt.lora import Layout, inject_lora, lora_modules, merge_lora
from harness.errors import HarnessError
from harness.store import atomic_write_json, file_sha256, sidecar


def save_adapter(model: nn.Module, sites: dict[str, list[str]], rank: int, alpha: float, path: Path,
                 layout: Layout = "conv", extra: dict[str, Any] | None = None) -> Path:
    """LoRA weights and gates of ``model`` as safetensors, with a JSON sidecar describing them (+ ``extra``)."""
    tensors, gates = {}, {}
    branches = lora_modules(model)
    for name, module in branches.items():
        tensors[f"{name}.lora_A"] = module.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = module.lora_B.weight.detach().cpu().contiguous()
    for group, names in sites.items():
        gate = branches[names[0]].gate
        tensors[f"gate.{group}"] = gate.detach().cpu().reshape(1).contiguous()
        gates[group] = torch.sigmoid(gate).item()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    atomic_write_json(sidecar(path), {**(extra or {}), "sites": sites, "rank": rank, "alpha": alpha,
                                      "layout": layout, "gates": gates})
    return path


def read_adapter(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file() or not sidecar(path).is_file():
        raise HarnessError(f"adapter {path} (or its {sidecar(path).name}) not found",
                           "pass an adapter.safetensors written by `harness run` (RUN_DIR/adapted/<id>/)")
    return json.loads(sidecar(path).read_text()), load_file(str(path))


@torch.no_grad()
def load_branches(model: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    """Inject the adapter's branches into ``model`` with its weights and gates (unmerged); the gates."""
    gates = inject_lora(model, meta["sites"], meta["rank"], meta["alpha"], layout=meta.get("layout", "conv"))
    for name, module in lora_modules(model).items():
        module.lora_A.weight.copy_(tensors[f"{name}.lora_A"])
        module.lora_B.weight.copy_(tensors[f"{name}.lora_B"])
    for group, gate in gates.items():
        gate.copy_(tensors[f"gate.{group}"].reshape(()))
    return gates


@torch.no_grad()
def apply_adapter(model: nn.Module, path: Path, base_checkpoint: Path | None = None,
                  base_sha256: str | None = None) -> nn.Module:
    """Merge the adapter at ``path`` into ``model`` (in place); a different base is refused.

    The base is identified by ``base_sha256`` or, when not given, by hashing ``base_checkpoint``.
    """
    meta, tensors = read_adapter(path)
    if base_sha256 is None and base_checkpoint is not None:
        base_sha256 = file_sha256(Path(base_checkpoint))
    if base_sha256 is not None and meta.get("base_sha256") and base_sha256 != meta["base_sha256"]:
        raise HarnessError(f"adapter {path} was trained on another base checkpoint than {base_checkpoint or 'this one'}",
                           "pass the --checkpoint the adapter was trained from (its sha256 is in the adapter's .json)")
    load_branches(model, meta, tensors)
    return merge_lora(model).eval()


class AdapterSwitch:
    """One loaded base, many adapters: switching restores the base weights in memory, then merges."""

    def __init__(self, model: nn.Module, base_checkpoint: Path | None = None):
        self.model = model
        self.base_checkpoint = base_checkpoint
        self._base_sha256 = file_sha256(Path(base_checkpoint)) if base_checkpoint is not None else None
        self._base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.active: Path | None = None

    @torch.no_grad()
    def use(self, adapter: Path | None) -> nn.Module:
        """Make ``adapter`` (or none) the active one; no disk read (or re-hash) of the base."""
        self.model.load_state_dict(self._base)
        if adapter is not None:
            apply_adapter(self.model, adapter, self.base_checkpoint, base_sha256=self._base_sha256)
        self.active = adapter
        return self.model
