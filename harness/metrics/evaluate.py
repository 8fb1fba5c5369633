"""Per-image scoring: files in parallel worker processes, arrays in process, and ``harness eval``.

Workers are spawned (safe with torch and CUDA), each reads its images and applies every metric;
rows come back in input order. With ``shard=(rank, world)`` only every ``world``-th image from
``rank`` is scored and the frame's index holds each row's input position, so
``harness.launch.distributed.gather_frames`` puts the ranks' frames back in input order. Under
``torchrun``, ``harness eval`` does exactly that.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from harness.data.io import list_images, read_image
from harness.errors import HarnessError
from harness.launch.distributed import (
    compute_and_gather,
    ensure_process_group,
    rank_world,
)
from harness.metrics.base import Metric, build_metric

_WORKER_METRICS: dict[str, Metric] = {}


def _as_job(item: Any) -> tuple[str, Path, Path | None]:
    """An ImagePair, a path, or a ``(name, hazy, clear)`` tuple -> ``(name, path, reference path)``."""
    if hasattr(item, "hazy"):
        return item.name, Path(item.hazy), (Path(item.clear) if item.clear is not None else None)
    if isinstance(item, (str, Path)):
        return Path(item).name, Path(item), None
    name, path, ref = item
    return str(name), Path(path), (Path(ref) if ref is not None else None)


def _score_one(name: str, image: np.ndarray, reference: np.ndarray | None,
               metrics: dict[str, Metric]) -> dict[str, Any]:
    row: dict[str, Any] = {"image": name}
    for key, metric in metrics.items():
        if metric.spec.needs_reference and reference is None:
            raise HarnessError(f"metric {key} needs a reference image for {name}", "give the ground truth")
        row[key] = metric.score(image, reference if metric.spec.needs_reference else None)
    return row


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _one_thread_children() -> Iterator[None]:
    """Spawned workers start with one BLAS/OpenMP thread each (one process per core).

    The variables must be in the environment when a worker starts: its initializer runs only after
    the metrics were unpickled, i.e. after numpy (and its thread pool) is loaded. Measured on the
    42 real hazy photos (FADE + entropy, 2 cores): 2 workers gave 1.13x one in-process worker with
    inherited thread counts, 1.44-1.57x with one thread each.
    """
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker(metrics: dict[str, Metric]) -> None:
    _WORKER_METRICS.clear()
    _WORKER_METRICS.update(metrics)


def _score_job(job: tuple[str, Path, Path | None], metrics: dict[str, Metric],
               on_corrupt: str = "fail") -> dict[str, Any] | str:
    """The row of one file; with ``on_corrupt="skip"`` an undecodable file gives its error text instead."""
    name, path, ref = job
    try:
        image, reference = read_image(path), (read_image(ref) if ref is not None else None)
    except HarnessError as err:
        if on_corrupt == "skip":
            return str(err)
        raise
    return _score_one(name, image, reference, metrics)


def _score_file(job: tuple[str, Path, Path | None], on_corrupt: str) -> dict[str, Any] | str:
    return _score_job(job, _WORKER_METRICS, on_corrupt)


def _pixels(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Exception:  # unreadable: read_image reports it in the worker
        return 0


def score_images(pairs: Iterable[Any], metrics: dict[str, Metric], workers: int = 1, progress: bool = True,
                 shard: tuple[int, int] | None = None, on_corrupt: str = "fail") -> pd.DataFrame:
    """Score image files: one row per image (``image`` + one column per metric), input order.

    ``pairs``: ImagePairs, paths, or ``(name, path, reference path | None)`` tuples.
    ``workers`` > 1 uses that many spawned processes. ``shard=(rank, world)`` scores a slice,
    indexed by input position; the caller gathers the slices (``gather_frames``).
    ``on_corrupt="skip"`` leaves out files that cannot be decoded, each named in a warning.
    """
    if on_corrupt not in ("fail", "skip"):
        raise HarnessError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    jobs = [_as_job(p) for p in pairs]
    positions = range(len(jobs))
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise HarnessError(f"shard {shard} is not (rank, world) with 0 <= rank < world")
        positions = range(len(jobs))[rank::world]
        jobs = jobs[rank::world]
    if workers < 1:
        raise HarnessError(f"workers must be at least 1, got {workers}")
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("scoring", total=len(jobs))
        if workers == 1 or len(jobs) < 2:
            for i, job in enumerate(jobs):
                rows[i] = _score_job(job, metrics, on_corrupt)
                bar.advance(task)
        else:
            ctx = mp.get_context("spawn")
            with _one_thread_children(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                                             initializer=_init_worker,
                                     initargs=(metrics,)) as pool:
                order = sorted(range(len(jobs)), key=lambda i: -_pixels(jobs[i][1]))  # largest first: no long tail
                futures = {pool.submit(_score_file, jobs[i], on_corrupt): i for i in order}
                for fut in as_completed(futures):
                    rows[futures[fut]] = fut.result()
                    bar.advance(task)
    for problem in (row for row in rows if isinstance(row, str)):
        Console(stderr=True).print(f"[yellow]skipped: {problem}[/]", highlight=False)
    kept = [i for i, row in enumerate(rows) if not isinstance(row, str)]
    index = [positions[i] for i in kept] if shard is not None else None
    return pd.DataFrame([rows[i] for i in kept], columns=["image", *metrics], index=index)


def score_arrays(items: Iterable[tuple[str, np.ndarray, np.ndarray | None]],
                 metrics: dict[str, Metric]) -> pd.DataFrame:
    """Score in-memory ``(name, image, reference | None)`` items in this process, in order."""
    rows = [_score_one(name, image, reference, metrics) for name, image, reference in items]
    return pd.DataFrame(rows, columns=["image", *metrics])


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


def eval_command(
    image_dir: Path = typer.Argument(..., help="Folder of images to score."),
    metrics: str = typer.Option("fade,entropy", "--metrics", help="Comma-separated metric names."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Ground-truth folder (same file stems)."),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV path (default: <image_dir>/scores.csv)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (per rank under torchrun)."),
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Leave out (and name) undecodable files.")]
    = False,
) -> None:
    """Score every image in a folder; write per-image CSV and print the means (under torchrun: sharded by rank)."""
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    if not names:
        raise HarnessError("no metric given", "pass --metrics fade,entropy")
    built = {name: build_metric(name) for name in names}
    needs_ref = [n for n, m in built.items() if m.spec.needs_reference]
    if needs_ref and reference is None:
        raise HarnessError(f"metric(s) {', '.join(needs_ref)} need ground truth", "pass --reference FOLDER")
    jobs = _folder_jobs(image_dir, reference)
    on_corrupt = "skip" if skip_corrupt else "fail"
    rank, world = rank_world()
    if world == 1:
        table = score_images(jobs, built, workers=workers, on_corrupt=on_corrupt)
    else:  # torchrun: every rank scores its shard, rank 0 writes and prints
        ensure_process_group("gloo")  # scoring is CPU work; gloo needs no GPU per rank
        table = compute_and_gather(lambda: score_images(jobs, built, workers=workers, progress=rank == 0,
                                                        shard=(rank, world), on_corrupt=on_corrupt))
        if rank != 0:
            return
    out = out or image_dir / "scores.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    view = Table(title=f"{image_dir} ({len(table)} images)")
    view.add_column("metric")
    view.add_column("mean", justify="right")
    view.add_column("better", justify="center")
    for name, metric in built.items():
        view.add_row(name, f"{table[name].mean():.4f}", "lower" if metric.spec.lower_better else "higher")
    console = Console()
    console.print(view)
    console.print(f"per-image scores: {out}")
