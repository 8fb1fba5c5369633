"""``harness doctor``: the environment, and where the harness looks for each weights file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table


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
        rows.append((name, "installed" if found else "missing",
                     "" if found or name != "deepspeed" else "optional: pip install -e .[cluster]"))
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


def doctor_command() -> None:
    """Report torch/CUDA and which weights (CLIP, MUSIQ) are present, and where they are looked for."""
    table = Table(title="harness doctor")
    for col in ("item", "status", "where / detail"):
        table.add_column(col, overflow="fold")
    for item, status, detail in checks():
        colour = "green" if status in ("present", "installed", "exists") or status[0].isdigit() else "yellow"
        table.add_row(escape(item), f"[{colour}]{escape(status)}[/]", escape(detail))
    Console().print(table)
