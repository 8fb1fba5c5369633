"""Recipe files for tests: a dict written as YAML into the test's folder."""

from pathlib import Path

import yaml

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def write(tmp_path: Path, data: dict, name: str = "r.yaml", out: bool = False) -> Path:
    """``data`` as ``tmp_path/name`` (keys in order); ``out=True`` points the run at ``tmp_path/run``."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump(dict(data, out=str(tmp_path / "run")) if out else data, sort_keys=False))
    return path
