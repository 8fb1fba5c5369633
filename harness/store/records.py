"""The records of a run folder: one JSON file per finished cell, read defensively.

A record counts as finished only if it parses and holds the keys every record has; a truncated or
empty file (a disk that filled up, a hand edit) is named once and its cell is recomputed, never
shown as done and never a ``JSONDecodeError``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.store.files import atomic_write_json

RECORD_KEYS = ("cell", "provenance", "metrics", "efficiency")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def valid_record(data: dict[str, Any] | None) -> bool:
    return data is not None and all(k in data for k in RECORD_KEYS) and isinstance(data["cell"], dict)


class RunStore:
    """Paths and records of one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._warned: set[Path] = set()

    def record_path(self, cell_id: str) -> Path:
        return self.root / "cells" / f"{cell_id}.json"

    def pretrained_dir(self, key: str) -> Path:
        return self.root / "pretrained" / key

    def adapted_dir(self, key: str) -> Path:
        return self.root / "adapted" / key

    def work_dir(self, kind: str, key: str) -> Path:
        return self.root / "work" / kind / key

    def scores_dir(self, cell_id: str) -> Path:
        return self.root / "scores" / cell_id

    def read_record(self, cell_id: str) -> dict[str, Any] | None:
        """The record of ``cell_id`` if it is whole; a broken one is reported (once) and treated as absent."""
        path = self.record_path(cell_id)
        if not path.exists():
            return None
        data = read_json(path)
        if valid_record(data):
            return data
        self._warn_broken(path)
        return None

    def _warn_broken(self, path: Path) -> None:
        if path not in self._warned:
            self._warned.add(path)
            print(f"warning: record {path} is incomplete or not valid JSON; its cell counts as unfinished "
                  "and will be recomputed", file=sys.stderr)

    def is_done(self, cell_id: str) -> bool:
        return self.read_record(cell_id) is not None

    def write_record(self, cell_id: str, record: dict[str, Any]) -> Path:
        path = self.record_path(cell_id)
        atomic_write_json(path, record)
        return path

    def records(self) -> list[dict[str, Any]]:
        """All whole records: recipes in the order they first finished a cell, then cell order.

        Several recipes may share a run folder (e.g. the quickstart, then the ablation), and cell
        indices only order the cells of one recipe.
        """
        folder = self.root / "cells"
        if not folder.is_dir():
            return []
        records = []
        for path in sorted(folder.glob("*.json")):
            data = read_json(path)
            if valid_record(data):
                records.append(data)
            else:
                self._warn_broken(path)

        def recipe(r: dict[str, Any]) -> str:
            prov = r.get("provenance", {})
            return prov.get("recipe_hash") or prov.get("recipe", "")

        first: dict[str, str] = {}
        for r in records:
            at = r.get("provenance", {}).get("finished_at", "")
            first[recipe(r)] = min(first.get(recipe(r), at), at)
        return sorted(records, key=lambda r: (first[recipe(r)], recipe(r), r["cell"].get("index", 0)))
