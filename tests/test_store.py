"""Atomic writes and record-based resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.errors import HarnessError
from harness.store import RunStore, atomic_write_json, load_weights, save_weights, weights_ready


def record(index: int, cid: str, **provenance) -> dict:
    return {"cell": {"index": index, "id": cid}, "provenance": provenance, "metrics": {}, "efficiency": {}}


def test_records_round_trip_in_cell_order(tmp_path):
    store = RunStore(tmp_path)
    for index, cid in [(2, "bbb"), (0, "ccc"), (1, "aaa")]:
        store.write_record(cid, record(index, cid))
    assert [r["cell"]["id"] for r in store.records()] == ["ccc", "aaa", "bbb"]
    assert store.is_done("aaa") and not store.is_done("zzz")
    assert not list((tmp_path / "cells").glob(".*.tmp"))


@pytest.mark.parametrize("content", ['{"cell": {"index": 0}, "metr', "{}", "[1, 2]", "", "\x00\xff"])
def test_a_broken_record_is_not_a_finished_cell_and_is_named(tmp_path, capsys, content):
    """Issue 9 failure 6: a truncated record counted as done and crashed run/report with a bare JSONDecodeError."""
    store = RunStore(tmp_path)
    store.write_record("good", record(0, "good"))
    (tmp_path / "cells" / "bad.json").write_text(content)
    assert not store.is_done("bad") and store.read_record("bad") is None
    assert [r["cell"]["id"] for r in store.records()] == ["good"]
    err = capsys.readouterr().err
    assert err.count("bad.json") == 1 and "recomputed" in err


def test_written_files_follow_the_umask(tmp_path):
    """Issue 9: records and checkpoints were 0600 whatever the umask (mkstemp's mode)."""
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        save_weights(tmp_path / "m.safetensors", torch.nn.Linear(2, 2), {})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    import harness.store.files as files

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(HarnessError, match=r"disk full while writing .*r.json -- fix: free space"):
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_we_may_not_write_is_one_line(tmp_path, monkeypatch):
    import errno

    import harness.store.files as files

    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(HarnessError, match=r"cannot write .*r.json \(Permission denied\) -- fix: make the run folder"):
        atomic_write_json(tmp_path / "r.json", {"a": 1})


def test_weights_count_only_with_sidecar(tmp_path):
    model = torch.nn.Conv2d(3, 3, 3)
    path = tmp_path / "m.safetensors"
    save_weights(path, model, {"backbone": "x"})
    assert weights_ready(path)
    other = torch.nn.Conv2d(3, 3, 3)
    assert load_weights(path, other) == {"backbone": "x"}
    assert torch.equal(other.weight, model.weight)
    (tmp_path / "m.safetensors.json").unlink()
    assert not weights_ready(path)


def test_killed_writer_leaves_old_file_whole(tmp_path):
    """SIGKILL a process in the middle of rewriting a record: the file stays the old, valid JSON."""
    target = tmp_path / "rec.json"
    atomic_write_json(target, {"v": "old"})
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        import harness.store.files as s
        real_replace = os.replace
        def slow_replace(a, b):
            print("writing", flush=True)
            sys.stdin.read()  # block until killed
            real_replace(a, b)
        s.os.replace = slow_replace
        s.atomic_write_json(Path({str(target)!r}), {{"v": "new" * 100000}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(target.read_text()) == {"v": "old"}


def test_records_keep_each_recipe_together_in_the_order_the_recipes_ran(tmp_path):
    store = RunStore(tmp_path)
    runs = [("quickstart", "2026-01-01T10:00:00", 3), ("ablation", "2026-01-01T11:00:00", 2)]
    for recipe, at, count in runs:
        for index in reversed(range(count)):
            store.write_record(f"{recipe}{index}", record(index, f"{recipe}{index}", recipe=recipe, finished_at=at))
    order = [(r["provenance"]["recipe"], r["cell"]["index"]) for r in store.records()]
    assert order == [("quickstart", 0), ("quickstart", 1), ("quickstart", 2), ("ablation", 0), ("ablation", 1)]
