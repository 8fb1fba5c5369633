"""``harness doctor [RECIPE]``: the environment, where the harness looks for each weights file, and
for a recipe, which of its datasets and weights are still missing (and where to put them).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import HarnessError

PATH_KEYS = ("weights", "model", "checkpoint", "pretrained", "list_file")  # parameters that name files
READY = ("ready", "present", "built-in", "cached", "installed", "exists")


def launcher_rows() -> list[tuple[str, str, str]]:
    """Which ``--launcher`` targets this machine can start: torchrun, DeepSpeed's launcher, Slurm's sbatch."""
    import shutil
    import subprocess
    import sys

    rows = []
    for launcher, command, detail in (("torchrun", [sys.executable, "-m", "torch.distributed.run", "--help"],
                                       "--launcher torchrun (DDP over --nproc-per-node processes)"),
                                      ("deepspeed", [sys.executable, "-m", "deepspeed.launcher.runner", "--help"],
                                       "--launcher deepspeed (ZeRO stage from engine.zero_stage)")):
        try:
            ok = subprocess.run(command, capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        rows.append((f"launcher {launcher}", "found" if ok else "missing", detail))
    sbatch = shutil.which("sbatch")
    rows.append(("launcher sbatch", "found" if sbatch else "missing",
                 f"{sbatch}: --launcher slurm (job arrays)" if sbatch else "run on a Slurm login node for --launcher slurm"))
    return rows


def checks() -> list[tuple[str, str, str]]:
    """(item, status, detail) rows."""
    import torch

    from harness.guide.embedded import cache_dir as guide_cache
    from harness.guide.model import cached_tag_file
    from harness.launch.threads import thread_share
    from harness.metrics.musiq import CHECKPOINTS, pyiqa_cache

    rows: list[tuple[str, str, str]] = []
    cuda = torch.cuda.is_available()
    devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "cpu only"
    rows.append(("torch", torch.__version__, f"CUDA {torch.version.cuda if cuda else 'not available'}; {devices}"))
    rows.append(("CPU threads", str(torch.get_num_threads()), thread_share().describe()))
    for name in ("open_clip", "pyiqa", "pyfade", "deepspeed"):
        found = importlib.util.find_spec(name) is not None
        rows.append((name, "installed" if found else "missing", "" if found else "pip install -e . installs it"))
    rows += launcher_rows()
    cache = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "dehaze-harness"))
    rows.append(("harness cache", "exists" if cache.is_dir() else "empty", f"{cache} (set HARNESS_CACHE to move it)"))
    guides = sorted(guide_cache().glob("*.safetensors")) if guide_cache().is_dir() else []
    rows.append(("embedded guide", f"{len(guides)} cached" if guides else "not trained yet",
                 f"{guide_cache()} (trained on first use, about a minute)"))
    for model, tag in (("ViT-B-32", "openai"), ("ViT-B-16", "openai"), ("ViT-L-14", "openai")):
        path, looked = cached_tag_file(model, tag)
        rows.append((f"CLIP {model}/{tag}", "present" if path else "absent",
                     str(path) if path else "looked in " + " and ".join(map(str, looked)) + " (recipe key guide.pretrained)"))
    for trained_on, filename in CHECKPOINTS.items():
        path = pyiqa_cache() / filename
        rows.append((f"MUSIQ ({trained_on})", "present" if path.is_file() else "absent",
                     f"{path} (or recipe key metrics.musiq.weights)"))
    return rows


def _dataset_row(key: str, entry: Any) -> tuple[str, str, str, str]:
    from harness.registry import DATASETS

    params = dict(entry.params)
    what = f"data: {entry.name} ({entry.type})"
    root = params.get("root")
    if root is None:
        return what, key, "built-in", "generated on first use and cached under $HARNESS_CACHE"
    if not Path(root).expanduser().exists():
        return what, f"{key}.root", "missing", f"{root} does not exist: put the {entry.type} dataset there " \
                                               f"or set {key}.root"
    from harness.data.datasets import screen_headers_only

    try:
        with screen_headers_only():  # a count needs the headers, not every image decoded
            found = DATASETS.build(entry.type, **params)
    except HarnessError as err:
        return what, key, "problem", str(err)
    return what, key, "ready", f"{len(found)} image(s) under {root}"


def _file_row(what: str, key: str, value: Any, optional: bool = False) -> tuple[str, str, str, str]:
    path = Path(str(value)).expanduser()
    if path.is_file():
        return what, key, "present", str(path)
    return what, key, "optional" if optional else "missing", f"{path} not found: put the file there or set {key}"


def _guide_row(guide: Any) -> tuple[str, str, str, str]:
    from harness.guide.embedded import cache_dir
    from harness.guide.model import _looks_like_path, cached_tag_file

    params = dict(guide.params)
    if guide.type == "embedded":
        cached = sorted(cache_dir(params.get("cache_dir")).glob("*.safetensors"))
        return ("guide: embedded", "guide", "cached" if cached else "built-in",
                f"{len(cached)} trained guide(s) in {cache_dir(params.get('cache_dir'))}" if cached
                else "trained on first use (about a minute on two CPU cores), then cached")
    if guide.type == "open_clip":
        model, tag = params.get("model", "ViT-B-32"), params.get("pretrained", "openai")
        if tag is None:
            return f"guide: {model}", "guide.pretrained", "present", "random initialisation (no weights needed)"
        if _looks_like_path(str(tag)):
            return _file_row(f"guide: {model}", "guide.pretrained", tag)
        try:
            path, looked = cached_tag_file(model, tag, params.get("cache_dir"))
        except HarnessError as err:
            return f"guide: {model}/{tag}", "guide.pretrained", "problem", str(err)
        if path is not None:
            return f"guide: {model}/{tag}", "guide.pretrained", "present", str(path)
        return (f"guide: {model}/{tag}", "guide.pretrained", "missing",
                "not cached (looked in " + " and ".join(map(str, looked)) + "): copy the weights there, "
                "or set guide.pretrained to a local weights file")
    return f"guide: {guide.type}", "guide", "unknown", "no check for this guide type"


def _metric_rows(i: int, entry: Any) -> list[tuple[str, str, str, str]]:
    from harness.metrics.musiq import CHECKPOINTS, pyiqa_cache

    params = dict(entry.params)
    key = f"metrics[{i}]"
    rows = [_file_row(f"metric: {entry.type}", f"{key}.{name}", params[name], entry.optional)
            for name in PATH_KEYS if params.get(name) is not None]
    if entry.type == "musiq" and params.get("weights") is None:
        default = pyiqa_cache() / CHECKPOINTS.get(params.get("trained_on", "koniq10k"), "?")
        rows.append(_file_row("metric: musiq", f"{key}.weights", default, entry.optional))
    if entry.type == "biqme" and params.get("model") is None:
        rows.append(("metric: biqme", f"{key}.model", "optional" if entry.optional else "missing",
                     f"no regression file: set {key}.model (see harness/metrics/biqme.py for the format)"))
    return rows


def recipe_needs(recipe: Path, overrides: list[str] | None = None) -> list[tuple[str, str, str, str]]:
    """(what, recipe key, status, detail) for every dataset, weights file and guide ``recipe`` uses."""
    from harness.validate import load_recipe

    spec = load_recipe(recipe, overrides, check_paths=False)
    rows, seen = [], set()
    for name in ("pretrain", "target", "benchmarks"):
        for i, entry in enumerate(getattr(spec, name)):
            ident = repr(sorted(entry.spec().items(), key=str))
            if ident not in seen:
                seen.add(ident)
                rows.append(_dataset_row(f"{name}[{i}]", entry))
    rows.append(_guide_row(spec.guide))
    for i, entry in enumerate(spec.metrics):
        rows += _metric_rows(i, entry)
    for name in ("backbones", "methods"):
        for i, entry in enumerate(getattr(spec, name)):
            rows += [_file_row(f"{name[:-1]}: {entry.type}", f"{name}[{i}].{key}", entry.params[key])
                     for key in PATH_KEYS if entry.params.get(key) is not None]
    return rows


def doctor_command(
    recipe: Optional[Path] = typer.Argument(None, help="a recipe: list the data and weights it still needs"),
) -> None:
    """Report torch/CUDA and where weights are looked for; with RECIPE, what it still needs."""
    console = Console()
    if recipe is not None:
        table = Table(title=f"harness doctor {recipe}")
        for col in ("needed", "recipe key", "status", "where / what to do"):
            table.add_column(col, overflow="fold")
        rows = recipe_needs(recipe)
        for what, key, status, detail in rows:
            colour = "green" if status in READY else "cyan" if status == "optional" else "red"
            table.add_row(escape(what), escape(key), f"[{colour}]{escape(status)}[/]", escape(detail))
        console.print(table)
        todo = [r for r in rows if r[2] not in READY + ("optional",)]
        console.print(f"{len(todo)} item(s) still needed" if todo else "[green]everything this recipe needs is here[/]")
        if todo:
            raise typer.Exit(1)
        return
    table = Table(title="harness doctor")
    for col in ("item", "status", "where / detail"):
        table.add_column(col, overflow="fold")
    for item, status, detail in checks():
        colour = "green" if status in ("present", "installed", "exists", "found") or status[0].isdigit() else "yellow"
        table.add_row(escape(item), f"[{colour}]{escape(status)}[/]", escape(detail))
    console.print(table)
