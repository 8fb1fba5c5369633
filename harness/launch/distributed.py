"""torchrun helpers: rank and world from the environment, one process group, per-rank frames gathered.

Nothing here imports ``torch.distributed`` until a process group is needed, so a plain
single-process run pays nothing for it.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Callable

import pandas as pd

from harness.errors import HarnessError


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when run directly."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _group():
    """``torch.distributed`` when a process group is initialised, else None."""
    dist = sys.modules.get("torch.distributed")  # not imported: nobody can have initialised one
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def ensure_process_group(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed once (env:// from torchrun) when WORLD_SIZE > 1; return (rank, world).

    ``backend`` defaults to nccl when CUDA is available, else gloo; an existing group is reused as is.
    """
    rank, world = rank_world()
    if world <= 1:
        return rank, world
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        try:
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
        except Exception as err:
            raise HarnessError(
                f"could not initialise torch.distributed ({backend}) as rank {rank} of {world}: "
                f"{type(err).__name__}: {err}",
                "launch with `torchrun --nproc_per_node N -m harness.cli ...`, which sets MASTER_ADDR/MASTER_PORT"
                + (", with at most one process per GPU" if backend == "nccl" else ""),
            ) from None
        atexit.register(leave_process_group)
    return dist.get_rank(), dist.get_world_size()


def leave_process_group() -> None:
    """Wait for every rank, then destroy the group (a no-op without one); also registered at exit.

    A rank that tore its group down while another still talked to it made that one abort (SIGABRT)
    at exit, 1 run in 4 under load; a command whose ranks part ways (rank 0 goes on to write) calls
    this where they part, as PyTorch's shutdown notes advise, so no rank idles in gloo meanwhile."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    try:
        dist.barrier()
    except Exception:  # a rank already gone: nothing left to wait for
        pass
    dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; nothing to wait for without a process group."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def merge_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-rank frames whose index holds each row's position in the full input, in that order."""
    parts = [f for f in frames if len(f)] or frames[:1]  # empty shards would turn float columns into object
    return pd.concat(parts).sort_index(kind="stable").reset_index(drop=True)


def gather_frames(frame: pd.DataFrame | Exception) -> pd.DataFrame:
    """Every rank's frame, merged in input order (see ``merge_frames``), on every rank.

    Pass the exception instead of a frame when this rank's scoring failed: it is raised here and a
    one-line HarnessError naming the rank is raised on the others, so no rank is left waiting.
    """
    dist = _group()
    if dist is None:
        if rank_world()[1] > 1:
            raise HarnessError("WORLD_SIZE > 1 but no process group to gather over",
                               "call harness.launch.distributed.ensure_process_group() first")
        if isinstance(frame, Exception):
            raise frame
        return merge_frames([frame])
    parts: list = [None] * dist.get_world_size()
    mine = frame if isinstance(frame, (pd.DataFrame, HarnessError)) else f"{type(frame).__name__}: {frame}"
    dist.all_gather_object(parts, mine)
    if isinstance(frame, Exception):
        raise frame
    for rank, part in enumerate(parts):
        if not isinstance(part, pd.DataFrame):  # its message, with its fix
            raise HarnessError(f"rank {rank} failed: {part}")
    return merge_frames(parts)


def compute_and_gather(compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``gather_frames`` of this rank's ``compute()``; a failure is handed to the gather, not raised first,
    so the other ranks fail with it instead of waiting."""
    try:
        frame: pd.DataFrame | Exception = compute()
    except Exception as err:
        frame = err
    return gather_frames(frame)
