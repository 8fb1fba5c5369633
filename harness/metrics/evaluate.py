"""``harness eval``: score a folder of images (e.g. other methods' outputs) with the scoring pipeline.

Files are decoded (in DataLoader workers beside a GPU), device metrics score same-size batches on
``--device``, CPU-only metrics run in ``--workers`` processes (``harness.metrics.scoring.score_stream``). With
``shard=(rank, world)`` only every ``world``-th image from ``rank`` is scored and the frame's index
holds each row's input position, so ``harness.launch.distributed.gather_frames`` puts the ranks'
frames back in input order. Under ``torchrun``, ``harness eval`` does exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from harness.data.io import list_images
from harness.errors import HarnessError
from harness.launch.distributed import compute_and_gather, ensure_process_group, leave_process_group, rank_world
from harness.metrics.base import Metric, build_metric


def _as_job(position: int, item: Any):
    """An ImagePair, a path, or a ``(name, path, reference path | None)`` tuple -> a scoring Job."""
    from harness.metrics.scoring import Job

    if hasattr(item, "hazy"):
        return Job(position, item.name, Path(item.hazy), None if item.clear is None else Path(item.clear))
    if isinstance(item, (str, Path)):
        return Job(position, Path(item).name, Path(item))
    name, path, ref = item
    return Job(position, str(name), Path(path), None if ref is None else Path(ref))


def score_images(pairs: Iterable[Any], metrics: dict[str, Metric], workers: int = 1, progress: bool = True,
                 shard: tuple[int, int] | None = None, on_corrupt: str = "fail", device: str = "cpu",
                 batch_size: int | None = None, decode_workers: int | None = None) -> pd.DataFrame:
    """Score image files: one row per image (``image`` + one column per metric), input order.

    ``pairs``: ImagePairs, paths, or ``(name, path, reference path | None)`` tuples. Device metrics
    run on ``device`` in same-size batches; CPU-only ones in ``workers`` processes.
    ``shard=(rank, world)`` scores a slice, indexed by input position; the caller gathers the slices
    (``gather_frames``). ``on_corrupt="skip"`` leaves out files that cannot be decoded, each named in
    a warning.
    """
    from harness.metrics.scoring import score_stream

    jobs = [_as_job(i, p) for i, p in enumerate(pairs)]
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise HarnessError(f"shard {shard} is not (rank, world) with 0 <= rank < world")
        jobs = jobs[rank::world]
    table = score_stream(jobs, metrics, device, workers=workers, batch_size=batch_size,
                         decode_workers=decode_workers, on_corrupt=on_corrupt, progress=progress)
    return table if shard is not None else table.reset_index(drop=True)


def _folder_jobs(image_dir: Path, reference: Path | None) -> list[tuple[str, Path, Path | None]]:
    if not image_dir.is_dir():
        raise HarnessError(f"image folder {image_dir} does not exist", "pass a folder of images")
    images = list_images(image_dir)
    if not images:
        raise HarnessError(f"no images in {image_dir}", "pass a folder of .png/.jpg images")
    if reference is None:
        return [(p.name, p, None) for p in images]
    if not reference.is_dir():
        raise HarnessError(f"reference folder {reference} does not exist", "pass the ground-truth folder")
    refs = {p.stem: p for p in list_images(reference)}
    missing = [p.name for p in images if p.stem not in refs]
    if missing:
        raise HarnessError(f"no reference in {reference} for {len(missing)} image(s): {', '.join(missing[:5])}",
                           "name each ground-truth file like its image (same stem)")
    return [(p.name, p, refs[p.stem]) for p in images]


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _csv_target(out: Path | None, image_dir: Path) -> tuple[Path | None, str]:
    """Where the per-image CSV goes, and the line that says so.

    ``--out`` is used as given (a folder is refused); without it the CSV goes to the current folder
    as ``<folder name>_scores.csv``, never into the scored folder and never over an existing file.
    """
    if out is not None:
        if out.is_dir():
            raise HarnessError(f"--out {out} is a folder", f"give a file path, e.g. --out {out / 'scores.csv'}")
        return out, f"per-image scores: {out}"
    default = Path.cwd() / f"{image_dir.resolve().name}_scores.csv"
    if _inside(default, image_dir):
        return None, "per-image scores not written (the current folder is inside the scored one): pass --out FILE.csv"
    if default.exists():
        return None, f"per-image scores not written ({default} exists): pass --out FILE.csv"
    return default, f"per-image scores: {default}"


def eval_command(
    image_dir: Annotated[Path, typer.Argument(help="Folder of images to score.")],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated metric names.")] = "fade,entropy",
    reference: Annotated[Optional[Path], typer.Option("--reference", help="Ground-truth folder (same file stems).")]
    = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="CSV path (default: ./<folder>_scores.csv, never "
                                                              "inside the scored folder).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Processes for CPU-only metrics (per rank under "
                                                           "torchrun).")] = 1,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave out (and name) undecodable files.")]
    = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N]: where the metrics run.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Same-size images scored together "
                                                                         "(default 8 on a GPU, 1 on the CPU).")] = None,
) -> None:
    """Score every image in a folder; print the means and write per-image CSV (under torchrun: sharded by rank)."""
    from harness.engine.strategy import resolve_device

    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise HarnessError("no metric given", "pass --metrics fade,entropy")
    built = {name: build_metric(name) for name in names}
    needs_ref = [n for n, m in built.items() if m.spec.needs_reference]
    if needs_ref and reference is None:
        raise HarnessError(f"metric(s) {', '.join(needs_ref)} need ground truth", "pass --reference FOLDER")
    needs_input = [n for n, m in built.items() if m.spec.needs_input]
    if needs_input:
        raise HarnessError(f"metric(s) {', '.join(needs_input)} compare a restoration with its input",
                           "they are scored by `harness run`; drop them from --metrics")
    jobs = _folder_jobs(image_dir, reference)
    target, where = _csv_target(out, image_dir)
    on_corrupt = "skip" if skip_corrupt else "fail"
    dev = str(resolve_device(device))
    rank, world = rank_world()
    options = {"workers": workers, "on_corrupt": on_corrupt, "device": dev, "batch_size": batch_size}
    if world == 1:
        table = score_images(jobs, built, **options)
    else:  # torchrun: every rank scores its shard, rank 0 writes and prints
        ensure_process_group("gloo")  # the gather moves frames between processes, whatever the device
        table = compute_and_gather(lambda: score_images(jobs, built, progress=rank == 0, shard=(rank, world),
                                                        **options))
        leave_process_group()  # every rank has the table: the group's work is done
        if rank != 0:
            return
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(target, index=False)
    view = Table(title=f"{image_dir} ({len(table)} images)")
    view.add_column("metric")
    view.add_column("mean", justify="right")
    view.add_column("better", justify="center")
    for name, metric in built.items():
        view.add_row(name, f"{table[name].mean():.4f}", "lower" if metric.spec.lower_better else "higher")
    console = Console()
    console.print(view)
    console.print(where, soft_wrap=True, highlight=False)
