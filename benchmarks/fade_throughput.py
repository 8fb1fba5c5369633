"""Torch FADE against the pyfade reference, side by side in one run: per-image agreement and images/s.

Agreement: every image of ``real_hazy``, ``clean_kodak24`` and hazed Kodak (``harness.data.synth``,
kinds asm, ridcp and nonuniform), decoded once and given to both implementations; the largest
absolute and relative score differences and density-map difference, per image, for the float64
default and for float32 pixel maps (what the reference's float64 buys). Throughput: images/s of
pyfade and of torch FADE one image at a time on the same images, and of torch FADE in batches of
``--batch`` 640x480 crops; ``--device cuda`` adds the GPU (pyfade always runs on the CPU).
Timings only; nothing is asserted.

    python benchmarks/fade_throughput.py [--sets real_hazy,kodak,hazed] [--limit N] [--device cpu|cuda]
                                         [--batch 8] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from harness.data import synth
from harness.data.io import list_images, read_image, to_tensor
from harness.metrics.fade_torch import fade_maps, load_models

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HAZE_KINDS = ("asm", "ridcp", "nonuniform")


def image_sets(names: list[str], limit: int | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """``{set: [(name, HxWx3 float32)]}``; hazed Kodak is made with a fixed seed per kind."""
    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    kodak = list_images(DATA / "clean_kodak24")[:limit]
    if "real_hazy" in names:
        sets["real_hazy"] = [(p.name, read_image(p)) for p in list_images(DATA / "real_hazy")[:limit]]
    if "kodak" in names:
        sets["kodak"] = [(p.name, read_image(p)) for p in kodak]
    if "hazed" in names:
        sets["hazed"] = []
        for i, kind in enumerate(HAZE_KINDS):
            rng = np.random.default_rng(i)
            sets["hazed"] += [(f"{kind}/{p.name}", synth.synthesize(read_image(p), kind, rng)) for p in kodak]
    return sets


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def agreement(images: list[tuple[str, np.ndarray]], device: torch.device) -> tuple[list[dict], dict[str, float]]:
    """Per-image differences and the seconds each implementation spent, one image at a time."""
    import pyfade

    models, rows = load_models(), []
    seconds = {"pyfade": 0.0, "torch": 0.0}
    warm = images[0][1][:64, :64]  # numba's cache load and torch's first calls stay out of the timing
    pyfade.fade(warm)
    fade_maps(to_tensor(warm)[None].to(device), models)
    for name, a in images:
        (ref, ref_map), t_ref = _timed(lambda: pyfade.fade(a, return_map=True))
        x = to_tensor(a)[None].to(device)
        _sync(device)
        (score, dmap), t_ours = _timed(lambda: [v.cpu() for v in fade_maps(x, models)])
        score32, map32 = (v.cpu() for v in fade_maps(x, models, dtype=torch.float32))
        seconds["pyfade"] += t_ref
        seconds["torch"] += t_ours
        ours, ours32 = float(score[0]), float(score32[0])
        row = {"image": name, "size": f"{a.shape[1]}x{a.shape[0]}", "pyfade": float(ref), "torch": ours,
               "abs": abs(ours - ref), "rel": abs(ours - ref) / abs(ref),
               "map_abs": float(np.nanmax(np.abs(dmap[0].numpy() - ref_map))),
               "nan_patches_differ": int((np.isnan(dmap[0].numpy()) != np.isnan(ref_map)).sum()),
               "abs_f32": abs(ours32 - ref), "rel_f32": abs(ours32 - ref) / abs(ref)}
        rows.append(row)
    return rows, seconds


def batched_rate(images: list[tuple[str, np.ndarray]], device: torch.device, batch: int) -> float:
    """Images/s of torch FADE on 640x480 crops (photos smaller than that are skipped), ``batch`` at a time."""
    crops = [to_tensor(a[:480, :640]) for _, a in images if a.shape[0] >= 480 and a.shape[1] >= 640]
    if not crops:
        return float("nan")
    models = load_models()
    x = torch.stack(crops).to(device)
    fade_maps(x[:1], models)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        fade_maps(x[i:i + batch], models)
    _sync(device)
    return len(x) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="real_hazy,kodak,hazed")
    parser.add_argument("--limit", type=int, default=None, help="first N photos of each folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pyfade is single-threaded)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sets = image_sets(args.sets.split(","), args.limit)
    console = Console(width=150)
    result: dict = {"device": str(device), "threads": args.threads, "sets": {}}
    summary = Table(title=f"torch FADE vs pyfade ({device}, {args.threads} thread(s))")
    for col in ("set", "images", "max abs", "max rel", "max map abs", "max rel f32", "pyfade img/s",
                "torch img/s", "ratio"):
        summary.add_column(col, justify="right")
    for set_name, images in sets.items():
        rows, seconds = agreement(images, device)
        rates = {k: len(images) / v for k, v in seconds.items()}
        result["sets"][set_name] = {"rows": rows, "images_per_s": rates}
        if not args.quiet:
            table = Table(title=f"{set_name}: per image")
            for col in ("image", "size", "pyfade", "torch", "abs", "rel", "map_abs", "rel_f32"):
                table.add_column(col, justify="right")
            for r in rows:
                table.add_row(r["image"], r["size"], f"{r['pyfade']:.6f}", f"{r['torch']:.6f}", f"{r['abs']:.1e}",
                              f"{r['rel']:.1e}", f"{r['map_abs']:.1e}", f"{r['rel_f32']:.1e}")
            console.print(table)
        summary.add_row(set_name, str(len(rows)), f"{max(r['abs'] for r in rows):.1e}",
                        f"{max(r['rel'] for r in rows):.1e}", f"{max(r['map_abs'] for r in rows):.1e}",
                        f"{max(r['rel_f32'] for r in rows):.1e}", f"{rates['pyfade']:.2f}", f"{rates['torch']:.2f}",
                        f"{rates['torch'] / rates['pyfade']:.2f}x")
    console.print(summary)
    every = [img for imgs in sets.values() for img in imgs]
    result["batched_640x480_images_per_s"] = batched_rate(every, device, args.batch)
    console.print(f"torch FADE, batches of {args.batch} 640x480 crops on {device}: "
                  f"{result['batched_640x480_images_per_s']:.2f} images/s")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
