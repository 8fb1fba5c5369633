"""Whole-cell scoring images/s: serial scoring against the pipeline, side by side in one run.

A folder of real-size images (each shared photo cropped to 640x480 and resized to 640 on its long
side, flipped copies to reach ``--count``; written to a temp folder) is scored as ``harness run``
scores a cell: a tiny DEA-Net (random weights, deploy form) restores every image, then FADE and
entropy (and ``--musiq FILE`` or ``--musiq random``: MUSIQ from that file or a random-weights one).
The pipeline also computes the three sanity metrics (extra work the serial path does not do).

Configurations, each on the same folder and model:

- ``serial``: the pipeline's settings that reproduce the path before it (one image at a time,
  decoding in process, ``fade`` with ``impl: pyfade`` in process);
- ``pipeline``: the defaults (batches of 8 on a GPU, 1 on the CPU; ``--batch`` overrides),
  DataLoader decoding, torch FADE on ``--device``;
- ``before`` (with ``--before-src DIR``, a checkout of the code before the pipeline): its
  ``harness.benchmark.score_model`` timed in a subprocess.

Timings only; nothing is asserted.

    python benchmarks/eval_throughput.py [--count 132] [--device cpu|cuda] [--batch N] [--rounds 2]
                                         [--before-src DIR] [--musiq random|FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps
from rich.console import Console
from rich.table import Table

from harness.data.datasets import ImagePair, ImageSet
from harness.data.io import list_images
from harness.metrics import build_metric
from harness.metrics.scoring import score_model
from harness.models.base import build_backbone

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

BEFORE_SCRIPT = """
import json, sys, time
from pathlib import Path
import torch
from harness.benchmark import score_model
from harness.data.datasets import ImagePair, ImageSet
from harness.metrics import build_metric
from harness.models.base import build_backbone
folder, weights, out, device, musiq = sys.argv[1:6]
torch.set_num_threads(int(sys.argv[6]))
model = build_backbone("dea_net", "tiny").deploy()
model.load_state_dict(torch.load(weights))
model = model.to(device).eval()
pairs = [ImagePair(p.name, p) for p in sorted(Path(folder).iterdir())]
metrics = {"fade": build_metric("fade"), "entropy": build_metric("entropy")}
if musiq != "-":
    metrics["musiq"] = build_metric("musiq", weights=Path(musiq))
start = time.perf_counter()
means = score_model(model, {"b": ImageSet("b", Path(folder), pairs)}, metrics, Path(out), device)
print(json.dumps({"seconds": time.perf_counter() - start, "means": means["b"]}))
"""


def make_folder(folder: Path, count: int) -> list[Path]:
    """``count`` real-size JPEGs from the shared photos: 640x480 crops, 640-px resizes, then flips."""
    sources = list_images(DATA / "real_hazy") + list_images(DATA / "clean_kodak24")
    made: list[Path] = []
    for flip in (False, True):
        for src in sources:
            with Image.open(src) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im = ImageOps.mirror(im) if flip else im
                crop = ImageOps.fit(im, (640, 480))
                resized = im.copy()
                resized.thumbnail((640, 640))
            for tag, picture in (("crop", crop), ("fit", resized)):
                if len(made) < count:
                    path = folder / f"{src.stem}_{tag}{'_flip' if flip else ''}.jpg"
                    picture.save(path, quality=95)
                    made.append(path)
    return made


def _musiq_file(option: str | None, folder: Path) -> Path | None:
    if option is None:
        return None
    if option != "random":
        return Path(option)
    from pyiqa.archs.musiq_arch import MUSIQ

    torch.manual_seed(0)
    path = folder / "musiq_random.pth"
    torch.save(MUSIQ(pretrained=False).state_dict(), path)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=132, help="images in the folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="scoring batch (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the scoring process")
    parser.add_argument("--decode-workers", type=int, default=None)
    parser.add_argument("--before-src", type=Path, default=None, help="checkout of the code before the pipeline")
    parser.add_argument("--musiq", default=None, help="'random' or a MUSIQ weights file")
    parser.add_argument("--configs", default="serial,pipeline", help="which pipeline configurations to time")
    parser.add_argument("--rounds", type=int, default=1, help="2: time A B C then C B A (cancels a load drift)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict = {"device": str(device), "threads": args.threads, "rates": {}, "means": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        paths = make_folder(tmp / "images", args.count)
        result["images"] = len(paths)
        sizes = set()
        for p in paths:
            with Image.open(p) as im:
                sizes.add(im.size)
        torch.manual_seed(0)
        model = build_backbone("dea_net", "tiny").deploy().eval()
        torch.save(model.state_dict(), tmp / "model.pt")
        model = model.to(device)
        musiq = _musiq_file(args.musiq, tmp)
        bench = {"b": ImageSet("b", tmp / "images", [ImagePair(p.name, p) for p in sorted(paths)])}

        def metrics(fade_impl: str) -> dict:
            chosen = {"fade": build_metric("fade", impl=fade_impl), "entropy": build_metric("entropy")}
            if musiq is not None:
                chosen["musiq"] = build_metric("musiq", weights=musiq)
            return chosen

        configs = {
            "serial": ({"batch_size": 1, "decode_workers": 0}, "pyfade"),
            "pipeline": ({"batch_size": args.batch, "decode_workers": args.decode_workers}, "torch"),
        }

        def timed(name: str, folder: Path) -> tuple[float, dict]:
            if name == "before":
                env = {**os.environ, "PYTHONPATH": str(args.before_src.resolve()), "OMP_NUM_THREADS": str(args.threads)}
                script = tmp / "before.py"
                script.write_text(BEFORE_SCRIPT)
                done = subprocess.run([sys.executable, str(script), str(tmp / "images"), str(tmp / "model.pt"),
                                       str(folder), str(device), str(musiq or "-"), str(args.threads)],
                                      env=env, capture_output=True, text=True, check=True, cwd=tmp)
                before = json.loads(done.stdout.strip().splitlines()[-1])
                return before["seconds"], before["means"]
            options, impl = configs[name]
            chosen = metrics(impl)
            start = time.perf_counter()
            scores = score_model(model, bench, chosen, folder, device, **options)
            return time.perf_counter() - start, scores["means"]["b"]

        names = args.configs.split(",") + (["before"] if args.before_src is not None else [])
        seconds = dict.fromkeys(names, 0.0)
        for r in range(args.rounds):  # odd rounds in order, even rounds reversed: a load drift cancels
            for name in (names if r % 2 == 0 else names[::-1]):
                spent, result["means"][name] = timed(name, tmp / f"{name}{r}")
                seconds[name] += spent
        result["rates"] = {name: args.rounds * len(paths) / seconds[name] for name in names}
    table = Table(title=f"cell scoring of {len(paths)} images ({len(sizes)} sizes), tiny DEA-Net, "
                        f"{', '.join(metrics('torch'))} on {device}, {args.threads} thread(s)")
    for col in ("configuration", "images/s", "vs first", "fade mean", "entropy mean"):
        table.add_column(col, justify="right")
    first = next(iter(result["rates"].values()))
    for name, rate in result["rates"].items():
        m = result["means"][name]
        table.add_row(name, f"{rate:.3f}", f"{rate / first:.2f}x", f"{m['fade']:.6f}", f"{m['entropy']:.6f}")
    Console(width=150).print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
