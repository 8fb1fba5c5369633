"""Atomic writes and record-based resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import torch

from harness.store import RunStore, atomic_write_json, load_weights, save_weights, weights_ready


def test_records_round_trip_in_cell_order(tmp_path):
    store = RunStore(tmp_path)
    for index, cid in [(2, "bbb"), (0, "ccc"), (1, "aaa")]:
        store.write_record(cid, {"cell": {"index": index, "id": cid}})
    assert [r["cell"]["id"] for r in store.records()] == ["ccc", "aaa", "bbb"]
    assert store.is_done("aaa") and not store.is_done("zzz")
    assert not list((tmp_path / "cells").glob(".*.tmp"))


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
        import harness.store as s
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
            store.write_record(f"{recipe}{index}", {"cell": {"index": index},
                                                    "provenance": {"recipe": recipe, "finished_at": at}})
    order = [(r["provenance"]["recipe"], r["cell"]["index"]) for r in store.records()]
    assert order == [("quickstart", 0), ("quickstart", 1), ("quickstart", 2), ("ablation", 0), ("ablation", 1)]
