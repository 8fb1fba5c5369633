"""The scoring pipeline: decode, restore in batches, score on the model's device, write per-image CSVs.

One pipeline serves ``harness run`` (``score_model``: restore with the cell's model, then score)
and ``harness eval`` (``score_stream`` without a model: score the files themselves):

- images are decoded (and shrunk to ``max_side``) in DataLoader worker processes while a GPU
  computes (in process on the CPU, see ``decode_workers_for``);
- same-size images are restored together in batches of up to ``batch_size`` images and
  ``batch_pixels`` pixels (default 8 on a GPU, 1 on the CPU, where batching made a tiny DEA-Net
  1.75x slower per 640x480 image and FADE 1.4x: memory-bound work gains nothing from it); with
  ``tile`` set, larger images are restored in overlapping tiles exactly as ``harness dehaze`` does;
- device metrics (``spec.on_device``) score each batch on the device the model ran on; only the
  CPU-only metrics (``fade`` with ``impl: pyfade``, ``biqme``) go to ``workers`` spawned processes;
- ``score_model`` adds the sanity metrics (``harness.metrics.sanity``) to every benchmark, writes
  ``<scores_dir>/<benchmark>.csv``, the first ``samples`` inputs and outputs as PNGs under
  ``<scores_dir>/samples/<benchmark>/``, and under torchrun shards the images over the ranks and
  gathers the rows (``compute_and_gather``).

This module was ``harness/benchmark.py``; "benchmark" also names the speed scripts in
``benchmarks/`` and the recipe's test sets.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from harness.data.io import read_image, shrink, to_array, to_tensor, write_image
from harness.errors import HarnessError
from harness.launch.distributed import barrier, compute_and_gather, ensure_process_group
from harness.metrics.base import Metric
from harness.metrics.sanity import sanity_metrics
from harness.store import atomic_write_bytes

BATCH_PIXELS = 1 << 22  # a batch of 640x480 images holds 13; bounds the model's activations too


def default_batch_size(device: torch.device | str) -> int:
    return 8 if torch.device(device).type == "cuda" else 1


@dataclass(frozen=True)
class Job:
    """One image to score: its position in the set, its name, its file and its ground truth's file."""

    position: int
    name: str
    path: Path
    reference: Path | None = None


class _Decode(torch.utils.data.Dataset):
    """Decodes job ``i``: a dict with its tensors, or with the error text when it cannot be read."""

    def __init__(self, jobs: list[Job], max_side: int | None):
        self.jobs, self.max_side = jobs, max_side

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        job = self.jobs[i]
        try:
            image = shrink(to_tensor(read_image(job.path)), self.max_side)
            reference = None if job.reference is None else shrink(to_tensor(read_image(job.reference)), self.max_side)
        except HarnessError as err:
            return {"job": job, "error": str(err)}
        return {"job": job, "image": image, "reference": reference, "error": None}


def _as_is(item):
    return item


def decode_workers_for(n_images: int, requested: int | None, device: torch.device) -> int:
    """DataLoader workers: as requested; else, while a GPU computes, up to 4 (a quarter of the cores).

    On the CPU the scoring process's own threads use every core: a decoding worker only competes
    (measured on 2 busy cores: 0.36 against 0.42 images/s without one).
    """
    if requested is not None:
        if requested < 0:
            raise HarnessError(f"decode workers must be >= 0, got {requested}")
        return requested
    if device.type == "cpu" or n_images < 8:
        return 0
    return max(1, min(4, (os.cpu_count() or 4) // 4))


def _decoded(jobs: list[Job], max_side: int | None, decode_workers: int, pin: bool) -> Iterable[dict[str, Any]]:
    data = _Decode(jobs, max_side)
    if decode_workers == 0:
        return (data[i] for i in range(len(data)))
    return torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=decode_workers,
                                       collate_fn=_as_is, pin_memory=pin, prefetch_factor=2)


# ------------------------------------------------------------ CPU-only metrics in worker processes

_WORKER_METRICS: dict[str, Metric] = {}
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


def _cpu_scores(metrics: dict[str, Metric], image: np.ndarray, reference: np.ndarray | None,
                source: np.ndarray | None) -> dict[str, float]:
    return {name: float(m.score(image, reference if m.spec.needs_reference else None,
                                source if m.spec.needs_input else None)) for name, m in metrics.items()}


def _cpu_scores_in_worker(image, reference, source) -> dict[str, float]:
    return _cpu_scores(_WORKER_METRICS, image, reference, source)


class _CpuMetrics:
    """The CPU-only metrics, in this process (``workers=1``) or in a pool with a bounded queue."""

    def __init__(self, metrics: dict[str, Metric], workers: int):
        self.metrics, self.workers = metrics, workers
        self.pool: ProcessPoolExecutor | None = None
        self.pending: dict[Future, int] = {}

    def __enter__(self):
        if self.metrics and self.workers > 1:
            with _one_thread_children():
                self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                initializer=_init_worker, initargs=(self.metrics,))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=exc[0] is not None)

    def submit(self, position: int, image: np.ndarray, reference, source, rows: dict[int, dict]) -> None:
        if not self.metrics:
            return
        if self.pool is None:
            rows[position].update(_cpu_scores(self.metrics, image, reference, source))
            return
        while len(self.pending) >= 2 * self.workers:
            self._collect(rows, FIRST_COMPLETED)
        self.pending[self.pool.submit(_cpu_scores_in_worker, image, reference, source)] = position

    def _collect(self, rows: dict[int, dict], when) -> None:
        done, _ = wait(list(self.pending), return_when=when)
        for future in done:
            rows[self.pending.pop(future)].update(future.result())

    def finish(self, rows: dict[int, dict]) -> None:
        while self.pending:
            self._collect(rows, FIRST_COMPLETED)


# ------------------------------------------------------------ the stream



def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    return images[0][None] if len(images) == 1 else torch.stack(images)  # one large photo: no copy


@torch.no_grad()
def _restore(model: nn.Module | None, images: torch.Tensor, tile: int | None, overlap: int) -> torch.Tensor:
    if model is None:
        return images
    if tile is not None and max(images.shape[-2:]) > tile:
        from harness.dehaze import restore_tiled

        return restore_tiled(model, images[0].cpu(), tile, overlap)[None].to(images.device).clamp_(0, 1)
    out = model(images)
    if out.shape != images.shape:
        raise HarnessError(f"the model returned {tuple(out.shape[-2:])} for a {tuple(images.shape[-2:])} input",
                           "use a backbone that restores at the input's size")
    return out.float().clamp(0, 1)  # not in place: an identity model returns its input


def score_stream(jobs: list[Job], metrics: dict[str, Metric], device: torch.device | str = "cpu", *,
                 model: nn.Module | None = None, max_side: int | None = None, batch_size: int | None = None,
                 batch_pixels: int = BATCH_PIXELS, tile: int | None = None, overlap: int = 32,
                 workers: int = 1, decode_workers: int | None = None, on_corrupt: str = "fail",
                 on_output: "_Outputs | None" = None, progress: bool = False) -> pd.DataFrame:
    """Score ``jobs``: one row per image (``image`` + one column per metric), indexed by position.

    With a ``model`` each image is restored first and the metrics score the restoration
    (``needs_input`` metrics compare it with the decoded image); without one, the decoded images
    themselves. ``on_corrupt="skip"`` leaves out (and names) files that cannot be decoded.
    ``on_output`` gets the (input, output, ground truth or None) it ``wants``, on the CPU (to save PNGs,
    keep samples).
    """
    if on_corrupt not in ("fail", "skip"):
        raise HarnessError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
    device = torch.device(device)
    batch_size = batch_size or default_batch_size(device)
    if workers < 1 or batch_size < 1:
        raise HarnessError(f"workers and batch_size must be at least 1, got {workers} and {batch_size}")
    if model is None and any(m.spec.needs_input for m in metrics.values()):
        raise HarnessError("needs_input metrics compare restored images with their inputs", "score with a model")
    on_device = {n: m for n, m in metrics.items() if m.spec.on_device}
    on_cpu = {n: m for n, m in metrics.items() if not m.spec.on_device}
    rows: dict[int, dict[str, Any]] = {}
    skipped: list[str] = []
    buckets: dict[tuple[int, int], list[dict[str, Any]]] = {}
    bar = Progress(disable=not progress, transient=True)

    def flush(items: list[dict[str, Any]], cpu: _CpuMetrics) -> None:
        images = _stack([it["image"] for it in items]).to(device, non_blocking=True)
        refs = None
        if all(it["reference"] is not None for it in items):
            for it in items:
                if it["reference"].shape != it["image"].shape:
                    raise HarnessError(f"{it['job'].name}: image {tuple(it['image'].shape[-2:])} and reference "
                                       f"{tuple(it['reference'].shape[-2:])} differ",
                                       "score outputs at the ground truth's size")
            refs = _stack([it["reference"] for it in items]).to(device, non_blocking=True)
        out = _restore(model, images, tile, overlap)
        for it in items:
            rows[it["job"].position] = {"image": it["job"].name}
        for name, metric in on_device.items():
            if metric.spec.needs_reference and refs is None:
                raise HarnessError(f"metric {name} needs a reference image for {items[0]['job'].name}",
                                   "give the ground truth")
            values = metric.score_batch(out, refs if metric.spec.needs_reference else None,
                                        images if metric.spec.needs_input else None)
            for it, value in zip(items, values.tolist()):
                rows[it["job"].position][name] = float(value)
        wanted = [on_output is not None and on_output.wants(it["job"]) for it in items]
        if on_cpu or any(wanted):  # one copy of the outputs to the host, only when something reads them there
            out_cpu = out.cpu()
            for i, it in enumerate(items):
                if wanted[i]:
                    on_output(it["job"], it["image"], out_cpu[i], it["reference"])
                if on_cpu:
                    ref = None if refs is None else to_array(it["reference"])
                    cpu.submit(it["job"].position, to_array(out_cpu[i]), ref, to_array(it["image"]), rows)
        bar.advance(task, len(items))

    def capacity(h: int, w: int) -> int:
        return max(1, min(batch_size, batch_pixels // (h * w)))

    with bar, _CpuMetrics(on_cpu, workers) as cpu:
        task = bar.add_task("scoring", total=len(jobs))
        loaders = decode_workers_for(len(jobs), decode_workers, device)
        stream = _decoded(jobs, max_side, loaders, device.type == "cuda")
        for item in stream:
            if item["error"] is not None:
                if on_corrupt != "skip":
                    raise HarnessError(item["error"])
                skipped.append(item["error"])
                bar.advance(task)
                continue
            h, w = item["image"].shape[-2:]
            if tile is not None and model is not None and max(h, w) > tile:
                flush([item], cpu)
                continue
            bucket = buckets.setdefault((h, w), [])
            bucket.append(item)
            if len(bucket) >= capacity(h, w):
                flush(buckets.pop((h, w)), cpu)
            elif sum(map(len, buckets.values())) > 2 * batch_size:  # many sizes: bound what waits
                flush(buckets.pop(max(buckets, key=lambda k: len(buckets[k]))), cpu)
        for key in list(buckets):
            flush(buckets.pop(key), cpu)
        cpu.finish(rows)
    for problem in skipped:
        Console(stderr=True).print(f"[yellow]skipped: {problem}[/]", highlight=False)
    order = sorted(rows)
    return pd.DataFrame([rows[p] for p in order], columns=["image", *metrics], index=order)


# ------------------------------------------------------------ a model on benchmarks


class _Outputs:
    """``on_output`` for score_model: restored PNGs (``save_outputs``, written by each rank) and the
    first ``samples`` inputs, outputs and ground truths, kept as 8-bit arrays to travel with the gathered rows."""

    def __init__(self, folder: Path | None, samples: int):
        self.folder, self.samples = folder, samples
        self.kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def wants(self, job: Job) -> bool:
        return self.folder is not None or job.position < self.samples

    def __call__(self, job: Job, image: torch.Tensor, out: torch.Tensor, reference: torch.Tensor | None) -> None:
        if self.folder is not None:
            write_image(self.folder / f"{Path(job.name).stem}.png", to_array(out))
        if job.position < self.samples:
            self.kept[job.position] = tuple(None if t is None else np.asarray(to_array(t) * 255.0 + 0.5, np.uint8)
                                            for t in (image, out, reference))


def _samples(table: pd.DataFrame, folder: Path, root: Path, write: bool) -> list[dict[str, str]]:
    """Entries for ``artifacts["samples"]`` of the rows that carry a ``sample``; ``write``: the PNGs too."""
    entries = []
    for position, name, pair in zip(table["position"], table["image"], table["sample"]):
        if pair is None:
            continue
        entry = {"name": name}
        for key, pixels in zip(("input", "output", "reference"), pair):
            if pixels is None:  # no ground truth
                continue
            path = folder / f"{position}_{Path(name).stem}_{key}.png"  # the position keeps a.jpg, a.png apart
            if write:
                write_image(path, pixels.astype(np.float32) / 255.0)
            entry[key] = Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
        entries.append(entry)
    return entries


def score_model(
    model: nn.Module,
    benchmarks: dict[str, Any],
    metrics: dict[str, Metric | None],
    scores_dir: Path,
    device: torch.device | str,
    *,
    max_side: int | None = None,
    on_corrupt: str = "fail",
    save_outputs: bool = False,
    shard: tuple[int, int] | None = None,
    batch_size: int | None = None,
    tile: int | None = None,
    overlap: int = 32,
    workers: int = 1,
    decode_workers: int | None = None,
    samples: int = 4,
    relative_to: Path | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Restore every image of every benchmark with ``model`` and score it.

    ``benchmarks``: ``{name: ImageSet}``; ``metrics``: ``{name: Metric or None}`` (None: unavailable,
    reported as None). The sanity metrics (``lab_shift``, ``colourfulness_delta``,
    ``luma_ssim_input``, ``clipped_delta``) are always added. Returns a JSON-ready dict:

    - ``means``: ``{benchmark: {metric: mean over images, or None}}``; a metric that needs ground
      truth is None on a benchmark without it;
    - ``samples``: ``{benchmark: [{"name", "input", "output", "reference"}, ...]}``: the first ``samples``
      images' PNGs under ``scores_dir/samples/<benchmark>/`` (at the restored size; ``reference``, the
      ground truth, only on paired benchmarks),
      paths relative to ``relative_to`` (default ``scores_dir``; the runner passes the run folder);
    - ``directions``: ``{metric: lower_better}`` for every metric built, sanity ones included.

    Per-image scores go to ``scores_dir/<benchmark>.csv`` (restored PNGs to ``scores_dir/outputs/``
    with ``save_outputs``). ``shard=(rank, world)`` with world > 1 (under torchrun, ``rank_world()``):
    each rank restores and scores every ``world``-th image, the rows (and sample pixels) are gathered
    onto every rank, all return the same dict, rank 0 writes the CSVs and samples. See
    ``score_stream`` for the other options.
    """
    if shard is not None and shard[1] > 1:
        group = ensure_process_group()
        if group != tuple(shard):
            raise HarnessError(f"shard {tuple(shard)} is not this process's (rank, world) {group}",
                               "run under torchrun and pass shard=rank_world()")
    else:
        shard = None
    rank, world = shard or (0, 1)
    root = Path(relative_to) if relative_to is not None else scores_dir
    every = {**metrics, **{k: v for k, v in sanity_metrics().items() if k not in metrics}}
    model.eval()
    result: dict[str, dict] = {"means": {}, "samples": {},
                               "directions": {n: m.spec.lower_better for n, m in every.items() if m is not None}}
    for bench_name, image_set in benchmarks.items():
        usable = {name: m for name, m in every.items()
                  if m is not None and (image_set.has_reference or not m.spec.needs_reference)}
        jobs = [Job(i, p.name, Path(p.hazy), None if p.clear is None else Path(p.clear))
                for i, p in enumerate(image_set.pairs)][rank::world]
        outputs = _Outputs(scores_dir / "outputs" / bench_name if save_outputs else None, samples)

        def compute() -> pd.DataFrame:
            table = score_stream(jobs, usable, device, model=model, max_side=max_side, batch_size=batch_size,
                                 tile=tile, overlap=overlap, workers=workers, decode_workers=decode_workers,
                                 on_corrupt=on_corrupt, on_output=outputs, progress=progress)
            return table.assign(position=table.index, sample=[outputs.kept.get(p) for p in table.index])

        table = compute().reset_index(drop=True) if shard is None else compute_and_gather(compute)
        if rank == 0:
            scores_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(scores_dir / f"{bench_name}.csv",
                               table.drop(columns=["position", "sample"]).to_csv(index=False).encode())
        result["samples"][bench_name] = _samples(table, scores_dir / "samples" / bench_name, root, rank == 0)
        result["means"][bench_name] = {
            name: (float(table[name].mean()) if name in usable and len(table) else None) for name in every
        }
    if shard is not None:
        barrier()  # the CSVs and samples exist once any rank returns
    return result
