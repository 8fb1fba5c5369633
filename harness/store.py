"""The run folder: atomic writes, one JSON record per finished cell, checkpoints, resume.

Layout of ``RUN_DIR``::

    recipe.yaml, manifest.json          the recipe as run and the expanded cells
    pretrained/<pretrain_id>/           model.safetensors (+ .json sidecar), state.pt while training
    adapted/<adapt_id>/                 model.safetensors (+ sidecar), method artifacts, work/ state
    scores/<cell_id>/<benchmark>.csv    per-image scores
    cells/<cell_id>.json                the record; its presence means the cell is finished
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent): one process at a time, across ranks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_training_state(path: Path, step: int, generator: torch.Generator, **stateful: Any) -> None:
    """Save the step, the RNG and every ``state_dict()``-bearing object (model, optimiser, ...)."""
    atomic_torch_save(path, {"step": step, "generator": generator.get_state(),
                             **{name: obj.state_dict() for name, obj in stateful.items()}})


def load_training_state(path: Path, generator: torch.Generator, device: torch.device | str,
                        **stateful: Any) -> int:
    """Restore what :func:`save_training_state` wrote; the step to continue from (0 without a file)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=False)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    generator.set_state(state["generator"])
    return state["step"]


def save_weights(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save a state dict as safetensors with a JSON sidecar ``<path>.json`` (written last)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    os.replace(tmp, path)
    atomic_write_json(sidecar(path), meta)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def weights_ready(path: Path) -> bool:
    """A checkpoint counts only once its sidecar exists (the sidecar is written after it)."""
    return path.is_file() and sidecar(path).is_file()


def load_weights(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    model.load_state_dict(load_file(str(path)))
    return json.loads(sidecar(path).read_text())


class RunStore:
    """Paths and records of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def record_path(self, cell_id: str) -> Path:
        return self.root / "cells" / f"{cell_id}.json"

    def pretrained_dir(self, pretrain_id: str) -> Path:
        return self.root / "pretrained" / pretrain_id

    def adapted_dir(self, adapt_id: str) -> Path:
        return self.root / "adapted" / adapt_id

    def scores_dir(self, cell_id: str) -> Path:
        return self.root / "scores" / cell_id

    def is_done(self, cell_id: str) -> bool:
        return self.record_path(cell_id).is_file()

    def write_record(self, cell_id: str, record: dict[str, Any]) -> Path:
        path = self.record_path(cell_id)
        atomic_write_json(path, record)
        return path

    def records(self) -> list[dict[str, Any]]:
        """All finished records: recipes in the order they first finished a cell, then cell order.

        Several recipes may share a run folder (e.g. the quickstart, then the ablation), and cell
        indices only order the cells of one recipe.
        """
        folder = self.root / "cells"
        if not folder.is_dir():
            return []
        records = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

        def recipe(r: dict[str, Any]) -> str:
            return r.get("provenance", {}).get("recipe", "")

        first: dict[str, str] = {}
        for r in records:
            at = r.get("provenance", {}).get("finished_at", "")
            first[recipe(r)] = min(first.get(recipe(r), at), at)
        return sorted(records, key=lambda r: (first[recipe(r)], recipe(r), r["cell"].get("index", 0)))

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))
