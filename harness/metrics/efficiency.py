"""Efficiency figures: parameters, FLOPs (torch FlopCounterMode), runtime and peak memory at 256x256.

FLOPs follow torch's convention (one multiply-add = 2 FLOPs); ``macs_256`` halves it to compare
with papers that report thop's multiply-add counts as "FLOPs".
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.models.base import count_params


def flops_256(model: nn.Module, size: int = 256, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs of one ``3 x size x size`` image (torch convention: multiply-add = 2)."""
    x = torch.rand(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def macs_256(model: nn.Module, size: int = 256, device: torch.device | str = "cpu") -> tuple[int, int]:
    """(exact MACs, MACs as thop counts them) of one ``3 x size x size`` image.

    thop charges a transposed conv ``in_channels x k x k`` per *output* pixel, four times the real
    work at stride 2; papers that quote thop (MSBDN, GridDehazeNet, DEA-Net's 34.04 G) inherit it.
    """
    overcount: list[int] = []

    def hook(module: nn.ConvTranspose2d, inputs, output) -> None:
        taps = module.kernel_size[0] * module.kernel_size[1]
        extra = (output.numel() * module.in_channels - inputs[0].numel() * module.out_channels) * taps
        overcount.append(extra // module.groups)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    try:
        macs = flops_256(model, size=size, device=device) // 2
    finally:
        for h in handles:
            h.remove()
    return macs, macs + sum(overcount)


def runtime_ms(model: nn.Module, size: int = 256, repeats: int = 5, warmup: int = 1,
               device: torch.device | str = "cpu") -> float:
    """Median wall time in ms of one forward pass on a ``3 x size x size`` image."""
    device = torch.device(device)
    x = torch.rand(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    model.train(was_training)
    return float(statistics.median(times))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device | str = "cpu", interval_s: float = 0.05) -> Iterator[dict]:
    """Measure peak memory inside the block, in MB, into ``result["peak_mem_mb"]``.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident-set growth over the block,
    sampled every ``interval_s`` (Linux ``/proc``), since torch keeps no CPU allocator statistics.
    """
    device = torch.device(device)
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    base = _rss_bytes()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["peak_mem_mb"] = (peak[0] - base) / 2**20


def efficiency_figures(model: nn.Module, device: torch.device | str = "cpu") -> dict:
    """Deployed-model figures for a record: params, FLOPs and runtime at 256x256."""
    flops = flops_256(model, device=device)
    return {
        "params_total": count_params(model),
        "flops_256": flops,
        "macs_256": flops // 2,
        "runtime_ms_256": runtime_ms(model, device=device),
    }
