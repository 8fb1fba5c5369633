"""Images per second of ``score_images`` with 1 and 2 worker processes on the shared real hazy
photos (FADE + entropy), side by side, and their ratio. Timings only; nothing is asserted.

    python benchmarks/eval_throughput.py [--limit N] [--side PX]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from harness.data.io import list_images
from harness.metrics import build_metric
from harness.metrics.evaluate import score_images

REAL_HAZY = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_hazy"


def _prepare(limit: int | None, side: int | None, folder: Path) -> list[Path]:
    """The photos, optionally reduced to ``side`` pixels on the long edge (PNG copies)."""
    paths = list_images(REAL_HAZY)[:limit]
    if side is None:
        return paths
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            im.save(folder / f"{p.stem}.png")
        out.append(folder / f"{p.stem}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="score only the first N photos")
    parser.add_argument("--side", type=int, default=None, help="downscale to this long side first")
    args = parser.parse_args()
    metrics = {"fade": build_metric("fade"), "entropy": build_metric("entropy")}
    with tempfile.TemporaryDirectory() as tmp:
        paths = _prepare(args.limit, args.side, Path(tmp))
        rates = {}
        for workers in (1, 2):
            start = time.perf_counter()
            score_images(paths, metrics, workers=workers)
            rates[workers] = len(paths) / (time.perf_counter() - start)
    table = Table(title=f"score_images on {len(paths)} real hazy photos (fade, entropy)")
    table.add_column("workers")
    table.add_column("images/s", justify="right")
    for workers, rate in rates.items():
        table.add_row(str(workers), f"{rate:.3f}")
    Console().print(table)
    Console().print(f"speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x (includes worker start-up)")


if __name__ == "__main__":
    main()
