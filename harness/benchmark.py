"""Score a restored model on benchmark image sets: restore each image, then apply the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.data.io import read_image, to_array, to_tensor, write_image
from harness.errors import HarnessError
from harness.launch.distributed import barrier, compute_and_gather, ensure_process_group
from harness.metrics.base import Metric
from harness.metrics.evaluate import score_arrays
from harness.store import atomic_write_bytes


def _shrink(arr: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None or max(arr.shape[:2]) <= max_side:
        return arr
    scale = max_side / max(arr.shape[:2])
    size = (max(1, round(arr.shape[0] * scale)), max(1, round(arr.shape[1] * scale)))
    t = F.interpolate(to_tensor(arr)[None], size=size, mode="area")[0]
    return to_array(t)


@torch.no_grad()
def restore(model: nn.Module, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Run ``model`` on one HxWx3 image and return the HxWx3 result clipped to [0, 1]."""
    return to_array(model(to_tensor(image)[None].to(device)))


def _restored_items(model, pairs, device, max_side, on_corrupt, save_dir, kept: list[int]) -> Iterator[tuple]:
    """``(name, restored, clear)`` for each ``(position, pair)``; positions yielded are appended to ``kept``."""
    for position, pair in pairs:
        try:
            hazy = _shrink(read_image(pair.hazy), max_side)
            clear = _shrink(read_image(pair.clear), max_side) if pair.clear is not None else None
        except HarnessError:
            if on_corrupt == "skip":
                continue
            raise
        out = restore(model, hazy, device)
        if save_dir is not None:
            write_image(save_dir / f"{Path(pair.name).stem}.png", out)
        kept.append(position)
        yield pair.name, out, clear


def score_model(
    model: nn.Module,
    benchmarks: dict[str, object],
    metrics: dict[str, Metric | None],
    scores_dir: Path,
    device: torch.device,
    max_side: int | None = None,
    on_corrupt: str = "fail",
    save_outputs: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Mean of every metric on every benchmark ({benchmark: {metric: mean or None}}).

    Per-image scores are written to ``scores_dir/<benchmark>.csv``. A metric that needs ground
    truth is skipped (None) on a benchmark without it; an unavailable metric (None) stays None.
    ``shard=(rank, world)`` with world > 1 (under torchrun, e.g. ``rank_world()``): every rank
    restores and scores every ``world``-th image, the rows are gathered onto every rank, which all
    return the same means; rank 0 writes the CSV.
    """
    if shard is not None and shard[1] > 1:
        group = ensure_process_group()
        if group != tuple(shard):
            raise HarnessError(f"shard {tuple(shard)} is not this process's (rank, world) {group}",
                               "run under torchrun and pass shard=rank_world()")
    else:
        shard = None
    rank, world = shard or (0, 1)
    model.eval()
    means: dict[str, dict[str, float | None]] = {}
    for bench_name, image_set in benchmarks.items():
        usable = {
            name: m for name, m in metrics.items()
            if m is not None and (image_set.has_reference or not m.spec.needs_reference)
        }
        save_dir = scores_dir / "outputs" / bench_name if save_outputs else None
        kept: list[int] = []
        pairs = list(enumerate(image_set.pairs))[rank::world]
        items = _restored_items(model, pairs, device, max_side, on_corrupt, save_dir, kept)
        if shard is None:
            table = score_arrays(items, usable)
        else:
            table = compute_and_gather(lambda: score_arrays(items, usable).set_axis(kept))
        if rank == 0:
            scores_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(scores_dir / f"{bench_name}.csv", table.to_csv(index=False).encode())
        means[bench_name] = {
            name: (float(table[name].mean()) if name in usable and len(table) else None) for name in metrics
        }
    if shard is not None:
        barrier()  # the CSVs exist once any rank returns
    return means
