"""The weak answers of issue 9, one table: each bad input gives exit code 2 and one line on stderr
naming the thing and the fix, no traceback; for recipes, ``run --dry-run``, ``run`` and ``plan``
give the same line (validation is one function), and ``run`` stops before writing anything."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import HarnessError
from harness.models import build_backbone
from harness.store import save_weights
from tests.test_run import TINY


def _edit(path: str, value):
    """A case that sets one dotted key of the TINY recipe."""
    def edit(data: dict, tmp: Path) -> dict:
        node = data
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        return data
    return edit


def _tiny_benchmark(data: dict, tmp: Path) -> dict:
    folder = tmp / "bench"
    folder.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "shared" / "data" / "real_hazy" / "Haze.jpg", folder)
    Image.new("RGB", (1, 1), (128, 128, 128)).save(folder / "dot.png")
    return dict(data, benchmarks=[{"type": "folder", "root": str(folder)}])


def _text_as_clip_weights(data: dict, tmp: Path) -> dict:
    (tmp / "clip.pt").write_text("these are not weights\n")
    return dict(data, guide={"type": "open_clip", "model": "ViT-B-32", "pretrained": str(tmp / "clip.pt")})


def _same_label(data: dict, tmp: Path) -> dict:
    data["methods"] += [{"type": "full_ft", "label": "ft", "steps": 5}, {"type": "full_ft", "label": "ft", "steps": 8}]
    return data


def _repeated_entry(data: dict, tmp: Path) -> dict:
    data["methods"].append(dict(data["methods"][1], label="again"))
    return data


def _cache_is_a_file(data: dict, tmp: Path) -> dict:
    (tmp / "cache").write_text("a file, not a folder")
    return data


# id, edit of the TINY recipe, extra CLI args, environment, raw recipe text, what the line must name
RECIPE_CASES = [
    ("rank_0", _edit("methods.2.rank", 0), [], {}, None, ["methods[2].rank", "at least 1"]),
    ("negative_lr", _edit("methods.1.lr", -1e-4), [], {}, None, ["methods[1].lr", "above 0"]),
    ("nan_lr", _edit("methods.1.lr", float("nan")), [], {}, None, ["methods[1].lr", "finite"]),
    ("negative_steps", _edit("methods.2.finetune_steps", -4), [], {}, None, ["methods[2].finetune_steps"]),
    ("top_k_99", _edit("methods.2.top_k", 99), [], {}, None, ["top_k=99", "8 candidate", "at most 8"]),
    ("search_not_above_warmup", _edit("methods.2.search_steps", 2), [], {}, None,
     ["search_steps=2", "warmup_steps=2", "never update a gate"]),
    ("device_tpu", _edit("device", "tpu"), [], {}, None, ["device 'tpu'", "cuda:N"]),
    ("broken_override", None, ["--set", "methods.1.rank=[1,"], {}, None, ["methods.1.rank=[1,", "not valid YAML"]),
    ("binary_recipe", None, [], {}, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", ["not a text file"]),
    ("one_pixel_benchmark_image", _tiny_benchmark, [], {}, None, ["dot.png (1x1 px, under 16 px)", "on_corrupt: skip"]),
    ("clip_pretrained_not_weights", _text_as_clip_weights, [], {}, None, ["clip.pt", "not a weights file",
                                                                            "guide.pretrained"]),
    ("cache_is_a_file", _cache_is_a_file, [], {"HARNESS_CACHE": "{tmp}/cache"}, None, ["HARNESS_CACHE", "is a file"]),
    ("unknown_variant", _edit("backbones.0.variant", "huge"), [], {}, None, ["variant 'huge'", "full, tiny"]),
    ("bad_synthetic_kind", _edit("target.0.kind", "fog"), [], {}, None, ["target[0].kind", "'nonuniform'"]),
    ("count_0", _edit("target.0.count", 0), [], {}, None, ["target[0].count", "at least 1"]),
    ("patch_larger_than_images", _edit("budget.patch_size", 512), [], {}, None,
     ["patch_size=512", "larger than every image", "at most 48"]),
    ("duplicate_yaml_key", None, [], {}, "{text}\nname: again\n", ["'name' is given twice", "keep one"]),
    ("duplicate_label", _same_label, [], {}, None, ["share the label 'ft'", "differ in steps"]),
    ("duplicate_method_entry", _repeated_entry, [], {}, None, ["methods[3] repeats methods[1]", "remove one"]),
    ("name_escapes_results", _edit("name", "../../escape"), [], {}, None, ["'name'", "plain name"]),
    ("seed_twice", _edit("seeds", [0, 0]), [], {}, None, ["seed 0 is listed twice"]),
]
PLAN_ONLY_WARNS = {"clip_pretrained_not_weights"}  # plan lists cells before weights are downloaded


@pytest.fixture
def cli(monkeypatch):
    """The real CLI in process (one import for the whole table); torch threads restored after."""
    threads = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    monkeypatch.setenv("COLUMNS", "400")
    runner = CliRunner()
    yield lambda args, env=None: runner.invoke(app, [str(a) for a in args], env=env)
    torch.set_num_threads(threads)


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and lines[0].startswith("error:") and " -- fix: " in lines[0]
    return lines[0]


@pytest.mark.parametrize("case", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_gives_one_line_and_run_dry_run_and_plan_agree(case, tmp_path, cli):
    name, edit, args, env, raw, expected = case
    data = copy.deepcopy(dict(TINY, out=str(tmp_path / "run")))
    recipe = tmp_path / "bad.yaml"
    if raw is None:
        recipe.write_text(yaml.safe_dump(edit(data, tmp_path) if edit else data, sort_keys=False))
    elif isinstance(raw, bytes):
        recipe.write_bytes(raw)
    else:
        recipe.write_text(raw.format(text=yaml.safe_dump(data, sort_keys=False)))
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    dry = one_error_line(cli(["run", recipe, "--dry-run", *args], env))
    real = one_error_line(cli(["run", recipe, *args], env))
    assert dry == real
    for part in expected:
        assert part in real, real
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained
    plan = cli(["plan", recipe, *args], env)
    if name in PLAN_ONLY_WARNS:
        assert plan.exit_code == 0 and real.split(": ", 2)[-1].split(" -- fix")[0] in " ".join(plan.stderr.split())
    else:
        assert one_error_line(plan) == real


@pytest.fixture
def dehaze_setup(tmp_path, shared_data):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("wolf.jpg", "Haze.jpg"):
        shutil.copy(shared_data / "real_hazy" / name, inputs / name)
    torch.manual_seed(0)
    ckpt = tmp_path / "model.safetensors"
    save_weights(ckpt, build_backbone("aod_net", "tiny").deploy(), {"backbone": "aod_net", "variant": "tiny",
                                                                    "form": "deploy"})
    adapter = tmp_path / "adapter.safetensors"
    save_weights(adapter, build_backbone("aod_net", "tiny"), {"sites": {"conv1": ["conv1"]}, "rank": 2, "alpha": 4})
    dump = tmp_path / "dump.safetensors"  # a ~14 KB torch state-dict dump of another backbone
    torch.save(build_backbone("dea_net", "tiny").state_dict(), dump)
    shutil.copy(tmp_path / "model.safetensors.json", tmp_path / "dump.safetensors.json")
    (tmp_path / "a_file.png").write_bytes(b"")
    return tmp_path


DEHAZE_CASES = [
    ("output_is_input", ["in", "in"], ["output folder in is the input folder", "outside it"]),
    ("output_inside_input", ["in", "in/out"], ["lies inside the input folder"]),
    ("output_is_a_file", ["in", "a_file.png"], ["output a_file.png is a file"]),
    ("negative_overlap", ["in", "out", "--tile", "64", "--overlap", "-5"], ["overlap -5 is negative"]),
    ("overlap_too_large", ["in", "out", "--tile", "64", "--overlap", "40"], ["overlap 40 is too large"]),
    ("swapped_checkpoint_and_adapter", ["in", "out", "--checkpoint", "adapter.safetensors", "--adapter",
                                        "model.safetensors"], ["is an adapter, not a model checkpoint", "--adapter"]),
    ("model_as_adapter", ["in", "out", "--adapter", "model.safetensors"], ["were --checkpoint and --adapter swapped"]),
    ("state_dict_dump", ["in", "out", "--checkpoint", "dump.safetensors"], ["dump.safetensors is not a safetensors"]),
    ("corrupt_input", ["in", "out"], ["notes.txt (cannot decode", "--skip-corrupt"]),
    ("existing_output", ["in", "out"], ["already exist", "--overwrite"]),
    ("device_tpu", ["in", "out", "--device", "tpu"], ["device 'tpu'"]),
]


@pytest.mark.parametrize("case", DEHAZE_CASES, ids=[c[0] for c in DEHAZE_CASES])
def test_bad_dehaze_input_gives_one_line_and_writes_nothing(case, dehaze_setup, cli, monkeypatch):
    name, args, expected = case
    monkeypatch.chdir(dehaze_setup)
    if name == "corrupt_input":
        (dehaze_setup / "in" / "notes.txt").write_text("not an image")
    if name == "existing_output":
        (dehaze_setup / "out").mkdir()
        (dehaze_setup / "out" / "wolf.png").write_bytes(b"kept")
    before = {p: p.read_bytes() for p in dehaze_setup.rglob("*") if p.is_file()}
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", "model.safetensors"]
    line = one_error_line(cli(["dehaze", *args]))
    for part in expected:
        assert part in line, line
    assert {p: p.read_bytes() for p in dehaze_setup.rglob("*") if p.is_file()} == before


def test_the_fixes_the_lines_name_work(dehaze_setup, cli, monkeypatch):
    """--skip-corrupt and --overwrite exist and do what the hints say."""
    monkeypatch.chdir(dehaze_setup)
    (dehaze_setup / "in" / "notes.txt").write_text("not an image")
    ok = cli(["dehaze", "in", "out", "--checkpoint", "model.safetensors", "--skip-corrupt"])
    assert ok.exit_code == 0 and "skipping 1 unusable file(s): notes.txt" in ok.stderr
    assert sorted(p.name for p in (dehaze_setup / "out").iterdir()) == ["Haze.png", "wolf.png"]
    again = cli(["dehaze", "in", "out", "--checkpoint", "model.safetensors", "--skip-corrupt", "--overwrite"])
    assert again.exit_code == 0, again.output


def test_top_level_on_corrupt_skip_warns_as_documented(tmp_path, cli):
    """A top-level ``on_corrupt: skip`` dropped files silently; now each dataset screens with it and warns."""
    data = _tiny_benchmark(dict(TINY, out=str(tmp_path / "run"), on_corrupt="skip"), tmp_path)
    recipe = tmp_path / "skip.yaml"
    recipe.write_text(yaml.safe_dump(data))
    result = cli(["run", recipe, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "warning: folder: skipped 1 corrupt image(s): dot.png (1x1 px, under 16 px)" in result.stderr


def test_a_gpu_request_the_partition_cannot_give_names_the_setting(tmp_path, monkeypatch):
    from harness.exec import slurm as executor

    refused = subprocess.CompletedProcess([], 1, "", "sbatch: error: Invalid generic resource (gres) specification")
    monkeypatch.setattr(executor.subprocess, "run", lambda *a, **k: refused)
    with pytest.raises(HarnessError) as err:
        executor._sbatch(tmp_path / "level0.sbatch", None)
    assert "gres" in str(err.value) and "device: cpu" in str(err.value)


@pytest.mark.parametrize("args, says", [
    (["split", "{tmp}/missing", "{tmp}/out"], "missing is not a folder -- fix: give the folder of photos"),
    (["split", "{tmp}", "{tmp}/out"], "has no images -- fix: give the folder of photos"),
    (["split"], "usage: python -m harness.data.photos split SRC_FOLDER DEST_FOLDER"),
])
def test_photo_split_command_bad_input_is_one_line_and_exit_2(args, says, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.data.photos", *(a.format(tmp=tmp_path) for a in args)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
