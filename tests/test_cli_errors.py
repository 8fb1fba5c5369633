"""Bad input: one clear line on stderr and a non-zero exit, before any work."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_run import TINY


def run_cli(tmp_path: Path, data: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(dict(data, out=str(tmp_path / "run"))))
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "300"})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_typo_key(tmp_path):
    data = dict(TINY, budget=dict(TINY["budget"], patch_sise=32))
    line = one_error_line(run_cli(tmp_path, data))
    assert "budget.patch_sise" in line and "bad.yaml:" in line


def test_missing_dataset_folder(tmp_path):
    data = dict(TINY, benchmarks=[{"type": "fattal", "root": str(tmp_path / "no_fattal")}])
    line = one_error_line(run_cli(tmp_path, data))
    assert "no_fattal" in line and "benchmarks[0].root" in line


def test_corrupt_image(tmp_path):
    folder = tmp_path / "hazy"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    data = dict(TINY, benchmarks=[{"type": "folder", "root": str(folder)}])
    line = one_error_line(run_cli(tmp_path, data))
    assert "broken.png" in line
    assert not (tmp_path / "run" / "pretrained").exists()  # failed before training


def test_missing_guide_weights(tmp_path):
    data = dict(TINY, guide={"type": "open_clip", "model": "ViT-B-32", "pretrained": str(tmp_path / "clip.pt")})
    line = one_error_line(run_cli(tmp_path, data))
    assert "clip.pt" in line and "guide.pretrained" in line
    assert not (tmp_path / "run" / "pretrained").exists()
