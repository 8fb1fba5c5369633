"""Efficiency figures: parameters, MACs and FLOPs, runtime and peak memory at 256x256.

FLOPs follow torch's convention (``FlopCounterMode``: one multiply-add = 2 FLOPs). Papers quote
thop's multiply-add counts as "FLOPs" (DEA-Net's 34.04 G), so records also carry ``macs_256`` in
thop's convention (see :func:`macs_256`): the two differ by more than the factor 2 where a model
has transposed convs.
"""

from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
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


def runtime_ms(model: nn.Module, size: int = 256, device: torch.device | str = "cpu", warmup: int = 3,
               min_run_time: float = 1.0) -> float:
    """Median wall time in ms of one forward pass on a ``3 x size x size`` image, after ``warmup`` passes.

    CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of passes filling at least
    ``min_run_time`` seconds; the median of the per-pass block times). CUDA: CUDA events around
    each pass, at least 20 passes and ``min_run_time`` seconds, the median. (One warm-up and five
    repeats, as before, spread identical merged models over 27-34 ms.)
    """
    from torch.utils import benchmark

    device = torch.device(device)
    x = torch.rand(1, 3, size, size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            if device.type != "cuda":
                timer = benchmark.Timer("model(x)", globals={"model": model, "x": x},
                                        num_threads=torch.get_num_threads())
                return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1000.0)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times: list[float] = []
            began = time.perf_counter()
            while len(times) < 20 or time.perf_counter() - began < min_run_time:
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return float(statistics.median(times))
    finally:
        model.train(was_training)


def _tensors(obj) -> list[torch.Tensor]:
    """The tensors in an op's arguments or results (tensors, and lists, tuples and dicts of them)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


class _LiveStorageTracker(TorchDispatchMode):
    """Live bytes of the storages (on one device type) created inside the mode, and their peak.

    An op's output storage that is new to the tracker counts until it is freed, unless it is one
    of the op's inputs (then it predates the block: views, in-place and ``out=`` ops allocate
    nothing). A storage's Python object lives exactly as long as the storage (torch keeps it alive
    from C++), so a weakref callback on it sees the free, however many tensors, views or
    autograd-saved copies shared it. Not seen: memory a kernel allocates and frees internally
    (workspaces), and tensors made without an aten op (``from_numpy``, ``torch.load``).
    """

    def __init__(self, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        # StorageImpl address -> [weakref, bytes counted, or None for a storage from before the block]
        self._storages: dict[int, list] = {}
        self._lock = threading.RLock()  # frees can be reported from autograd worker threads

    def storage(self, t: torch.Tensor) -> torch.UntypedStorage | None:
        """``t``'s storage if it is on the tracked device type and has one (not sparse, say)."""
        if t.is_cpu if self.device_type == "cpu" else t.device.type == self.device_type:
            try:
                return t.untyped_storage()
            except (NotImplementedError, RuntimeError):
                return None
        return None

    def track(self, storage: torch.UntypedStorage, counted: bool = True) -> None:
        """Follow ``storage`` until it is freed; its bytes count only if ``counted``. Idempotent."""
        key = storage._cdata
        if key in self._storages:
            return
        nbytes = storage.nbytes() if counted else None
        ref = weakref.ref(storage, lambda r, key=key: self._freed(key, r))
        with self._lock:
            self._storages[key] = [ref, nbytes]
            self._grow(nbytes or 0)

    def _grow(self, nbytes: int) -> None:
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _freed(self, key: int, ref: weakref.ref) -> None:
        with self._lock:
            entry = self._storages.get(key)
            if entry is not None and entry[0] is ref:
                del self._storages[key]
                self.live -= entry[1] or 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in (out,) if isinstance(out, torch.Tensor) else _tensors(out):
            if (s := self.storage(t)) is None:
                continue
            entry = self._storages.get(s._cdata)
            if entry is None:
                if inputs is None:
                    inputs = {i._cdata for i in map(self.storage, _tensors((args, kwargs))) if i is not None}
                self.track(s, counted=s._cdata not in inputs)
            elif entry[1] is not None and entry[1] != s.nbytes():  # resized in place (``out=``, ``resize_``)
                with self._lock:
                    self._grow(s.nbytes() - entry[1])
                    entry[1] = s.nbytes()
        return out

    def close(self) -> None:
        with self._lock:
            self._storages.clear()  # drops the weakrefs, so no callback outlives the block


def _modules(model: nn.Module | Iterable[nn.Module | None] | None) -> list[nn.Module]:
    if model is None:
        return []
    if isinstance(model, nn.Module):
        return [model]
    return [m for m in model if isinstance(m, nn.Module)]


@contextmanager
def peak_memory(device: torch.device | str = "cpu",
                model: nn.Module | Iterable[nn.Module | None] | None = None,
                optimisers: Iterable[torch.optim.Optimizer] = ()) -> Iterator[dict]:
    """Peak tensor memory in MB (2**20 bytes) inside the block, into ``result["peak_mem_mb"]``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, i.e. every allocation
    live on the device (``model`` is ignored). CPU: torch keeps no CPU allocator statistics (and
    the resident set keeps freed memory, so it shows no growth after the first run), so we count
    the same quantity ourselves: the parameters, buffers and gradients of ``model`` (a module or
    several; ``None`` is skipped) and the state of ``optimisers`` at entry, plus the peak growth of the bytes held by tensor
    storages the block allocates, followed op by op (see ``_LiveStorageTracker``). Other tensors
    alive at entry (data, a loss network left out of ``model``) are not counted. Following every
    op costs about 6 us per op (measured 1.16-1.22x on tiny DEA-Net's 8x48^2 training steps, near 1x
    at real sizes), so training loops run it only on probed steps, outside their train time
    (``TrainLoop(memory_probe=...)``).
    """
    device = torch.device(device)
    result: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    tracker = _LiveStorageTracker(device.type)
    held = [t for module in _modules(model)
            for t in [*module.parameters(), *module.buffers(), *(p.grad for p in module.parameters())]]
    held += [t for opt in optimisers for state in opt.state.values() for t in _tensors(state)]
    for t in held:
        if isinstance(t, torch.Tensor) and (s := tracker.storage(t)) is not None:
            tracker.track(s)
    try:
        with tracker:
            yield result
    finally:
        result["peak_mem_mb"] = tracker.peak / 2**20
        tracker.close()


def architecture_key(model: nn.Module) -> tuple:
    """What a forward pass's cost depends on, weights aside: every module's class and plain settings
    (sizes, strides, flags) and the shapes and dtypes of its parameters and buffers."""
    plain = (int, float, str, bool, tuple, type(None))
    return tuple(
        (name, type(m).__module__, type(m).__qualname__,
         repr(sorted((k, v) for k, v in vars(m).items() if not k.startswith("_") and k != "training"
                     and isinstance(v, plain))),
         tuple((n, tuple(t.shape), t.dtype) for n, t in [*m.named_parameters(recurse=False),
                                                          *m.named_buffers(recurse=False)]))
        for name, m in model.named_modules())


_RUNTIMES: dict[tuple, float] = {}


def architecture_runtime_ms(model: nn.Module, device: torch.device | str = "cpu", size: int = 256) -> float:
    """:func:`runtime_ms`, measured once per architecture, device and thread count in this process.

    Runtime is a property of the architecture, not of the weights: the cells of one backbone (its
    seeds, and every merged adapter, which has the backbone's architecture) would otherwise each
    spend a second timing the same network, and differ only by timing noise (quickstart: 12 cells,
    6.87 against 6.92 ms for identical merged models)."""
    key = (architecture_key(model), str(torch.device(device)), torch.get_num_threads(), size)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = runtime_ms(model, size=size, device=device)
    return _RUNTIMES[key]


def efficiency_figures(model: nn.Module, device: torch.device | str = "cpu") -> dict:
    """Deployed-model figures for a record: params, MACs (thop's convention, as papers quote them)
    and FLOPs (torch's, 2 x the exact MACs) and runtime at 256x256 (once per architecture, see
    :func:`architecture_runtime_ms`)."""
    exact, thop = macs_256(model, device=device)
    return {
        "params_total": count_params(model),
        "flops_256": 2 * exact,
        "macs_256": thop,
        "runtime_ms_256": architecture_runtime_ms(model, device=device),
    }
