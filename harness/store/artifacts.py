"""Committed artifacts: a task writes its outputs into a staging folder and commits it by rename.

One producer per key needs no lock: the rename is atomic, so a reader sees no folder or a whole
one. ``artifact.json`` inside it says what made it: the task key, a fresh commit id, the
fingerprints of the data it read and the commit ids of the artifacts it was built from. A
dependent stores those commit ids too, so when an input is rebuilt (its data changed, or
``--force``), everything built on the old one is known to be stale and is rebuilt, never reused.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.store.files import atomic_write_json
from harness.store.records import read_json

MANIFEST = "artifact.json"


def artifact_meta(folder: Path) -> dict[str, Any] | None:
    """What :func:`commit` wrote into ``folder``, or None if it holds no committed artifact."""
    return read_json(Path(folder) / MANIFEST)


def commit_id(folder: Path) -> str | None:
    """The commit id of the artifact in ``folder`` (None if there is none): what a dependent records."""
    meta = artifact_meta(folder)
    return meta["commit"] if meta else None


def staging_dir(folder: Path) -> Path:
    """An empty staging folder for ``folder`` (on the same file system, so the commit is a rename)."""
    staging = folder.with_name(f".{folder.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # our own leftover from a killed attempt of this process id
    staging.mkdir(parents=True)
    return staging


def commit(staging: Path, folder: Path, key: str, inputs: dict[str, Any], deps: dict[str, str],
           replace: bool = False) -> dict[str, Any]:
    """Write the manifest and rename ``staging`` to ``folder``; return the manifest.

    If ``folder`` already holds a committed artifact it is kept and ``staging`` dropped, unless
    ``replace`` (a stale artifact, or ``--force``): then the old folder is moved aside first.
    """
    meta = {"key": key, "commit": uuid.uuid4().hex, "inputs": inputs, "deps": deps,
            "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(staging / MANIFEST, meta)
    if folder.exists():
        if not replace and artifact_meta(folder) is not None:
            shutil.rmtree(staging)
            return artifact_meta(folder)
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(folder, old)
        os.rename(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, folder)
    return meta


def is_fresh(meta: dict[str, Any] | None, inputs: dict[str, Any], deps: dict[str, str | None]) -> bool:
    """True if a committed artifact was built from these very inputs and dependency commits."""
    return (meta is not None and meta.get("inputs") == inputs
            and all(meta.get("deps", {}).get(k) == v for k, v in deps.items()))
