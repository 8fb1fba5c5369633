"""Files written so that a reader sees the old file or the whole new one, never half of one.

Every write goes to a temporary file beside the target and is renamed over it. Temporary files get
the permissions a plain ``open`` would give (the umask's), so team-mates on a shared cluster can
read records and checkpoints (``mkstemp`` alone makes them 0600). A full disk or a folder we may
not write is one line naming the file, and the temporary file is removed so it holds no space.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from harness.errors import HarnessError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_failure(path: Path, err: OSError) -> HarnessError:
    if err.errno == errno.ENOSPC:
        return HarnessError(f"disk full while writing {path}", f"free space on {path.parent} and rerun (finished work is kept)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return HarnessError(f"cannot write {path} ({err.strerror})",
                            "make the run folder writable, or choose another with --out")
    return HarnessError(f"cannot write {path}: {err.strerror or err}", "check the run folder and its disk")


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path``; on success it is renamed over ``path`` with umask permissions.

    Whatever fails (an exception, a full disk), the temporary file is removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise _write_failure(path, err) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_failure(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        if _nearly_full(path.parent):  # libraries (safetensors, torch) report ENOSPC in their own words
            raise _write_failure(path, OSError(errno.ENOSPC, "no space left")) from None
        raise


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


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
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


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
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_target(path) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(sidecar(path), meta)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def weights_ready(path: Path) -> bool:
    """A checkpoint counts only once its sidecar exists (the sidecar is written after it)."""
    return path.is_file() and sidecar(path).is_file()


def load_weights(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    model.load_state_dict(load_file(str(path)))
    return json.loads(sidecar(path).read_text())
