"""peak_memory on CPU: live tensor bytes (model at entry + peak growth), checked against known sizes."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

import harness.adapt.methods  # noqa: F401  (registers the methods)
from harness.adapt.base import AdaptJob
from harness.metrics.efficiency import peak_memory
from harness.models import build_backbone
from harness.registry import METHODS

MB = 2**20

pytestmark = pytest.mark.usefixtures("one_thread")


def nbytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_peak_of_known_allocations_not_their_sum():
    with peak_memory("cpu") as mem:
        a = torch.empty(64 * MB, dtype=torch.uint8)
        del a
        b = torch.ones(32 * MB // 4)  # float32: 32 MB
        c = b * 2  # another 32 MB while b lives: 64 again, not more
        del b, c
        d = torch.empty(16 * MB, dtype=torch.uint8)
    assert mem["peak_mem_mb"] == pytest.approx(64.0, rel=0.01)
    del d  # held to the end of the block: 16 MB, below the peak
    assert _get_current_dispatch_mode() is None  # the tracker is gone after the block


def test_views_keep_storage_alive_and_preexisting_tensors_cost_nothing():
    old = torch.zeros(8 * MB // 4)  # alive before the block: not counted, nor are its views / in-place ops
    with peak_memory("cpu") as mem:
        old.add_(1)
        old_view = old.view(-1, 2)[:, 0]
        a = torch.zeros(16 * MB // 4)
        view = a[: 4]  # no allocation; keeps all 16 MB alive
        del a
        b = torch.zeros(8 * MB // 4)  # 24 MB live
        del view
        c = torch.zeros(12 * MB // 4)  # 8 + 12 = 20 < 24
    assert mem["peak_mem_mb"] == pytest.approx(24.0, rel=0.01)
    del old_view, b, c  # held to the end of the block


def test_model_weights_count_at_entry_once():
    net = nn.Linear(512, 512)
    shared = nn.Sequential(net, net)  # same storages twice
    with peak_memory("cpu", model=[shared, None, net]) as mem:
        pass
    assert mem["peak_mem_mb"] * MB == nbytes(net)


def test_conv_forward_backward_matches_hand_count():
    torch.manual_seed(0)
    n, c, h, w = 4, 16, 64, 64
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 3, 3, padding=1))
    x = torch.rand(n, 3, h, w)
    act, out = n * c * h * w * 4, n * 3 * h * w * 4  # 1 MB hidden activation, 192 KB output
    with peak_memory("cpu", model=net) as mem:
        y = net(x)
        y.sum().backward()
    # Peak in backward, at ReLU's backward: its saved output, the incoming gradient and the
    # gradient it makes (3 hidden activations), the net's output, the weights and (some) grads.
    expected = nbytes(net) + 3 * act + out
    assert mem["peak_mem_mb"] * MB == pytest.approx(expected, rel=0.01)
    # without autograd only the conv output and the ReLU output coexist
    with peak_memory("cpu", model=net) as mem, torch.no_grad():
        net(x)
    assert mem["peak_mem_mb"] * MB == pytest.approx(2 * nbytes(net) + 2 * act, rel=0.001)  # grads exist now


def test_adam_state_and_gradients_count():
    torch.manual_seed(0)
    net = nn.Linear(1024, 1024, bias=False)  # 4 MB of weights
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with peak_memory("cpu", model=net) as mem:
        net(torch.rand(2, 1024)).sum().backward()
        opt.step()
    weights = nbytes(net)
    # weights + grad + exp_avg + exp_avg_sq, plus the step's sqrt and division temporaries
    assert mem["peak_mem_mb"] * MB == pytest.approx(6 * weights, rel=0.01)


def test_result_recorded_when_block_raises():
    with pytest.raises(RuntimeError), peak_memory("cpu") as mem:
        keep = torch.empty(4 * MB, dtype=torch.uint8)
        raise RuntimeError(keep.numel())
    assert mem["peak_mem_mb"] == pytest.approx(4.0)
    assert _get_current_dispatch_mode() is None


def adapt_peak(tmp_path, name, params):
    torch.manual_seed(0)
    model = build_backbone("dea_net", "tiny").deploy()
    g = torch.Generator().manual_seed(1)
    imgs = [torch.rand(3, 32, 40, generator=g) for _ in range(2)]
    job = AdaptJob(model, imgs, imgs, lambda out, inp: ((out - 0.5 * inp) ** 2).mean(), 2, 24,
                   tmp_path / name, seed=0, measure_memory=True)
    result = METHODS.build(name, **METHODS.validate(name, params)).run(job)
    return result.peak_mem_mb, nbytes(model)


def test_full_finetuning_needs_more_memory_than_lora(tmp_path):
    none, weights = adapt_peak(tmp_path, "none", {})
    full, _ = adapt_peak(tmp_path, "full_ft", {"steps": 3})
    lora, _ = adapt_peak(tmp_path, "manual_lora", {"sites": ["level3_block1"], "steps": 3})
    assert none is None  # no training loop, nothing probed
    full, lora = full * MB, lora * MB
    # full fine-tuning holds a gradient and two Adam moments per weight; LoRA only for its few
    assert full > lora + 2 * weights
    assert lora > 2 * weights  # activations kept for backward still cost


def test_probed_peak_counts_optimiser_state_held_at_entry():
    net = nn.Linear(1024, 1024, bias=False)  # 4 MB of weights
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(2, 1024)).sum().backward()
    opt.step()  # two 4 MB moments now exist, and a 4 MB gradient
    with peak_memory("cpu", model=net, optimisers=[opt]) as mem:
        pass
    assert mem["peak_mem_mb"] * MB == pytest.approx(4 * nbytes(net), rel=0.001)


def test_record_macs_follow_thop_and_flops_torch_by_hand():
    """A stride-2 conv then a stride-2 transposed conv at 256x256, counted by hand."""
    from harness.metrics.efficiency import efficiency_figures

    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2))
    conv = 8 * 128 * 128 * 3 * 9  # output values x (in x k^2)
    transposed_real = 8 * 128 * 128 * 4 * 4  # input values x (out x k^2)
    transposed_thop = 4 * 256 * 256 * 8 * 4  # thop: output values x (in x k^2)
    figures = efficiency_figures(net)
    assert figures["macs_256"] == conv + transposed_thop
    assert figures["flops_256"] == 2 * (conv + transposed_real)
    assert figures["params_total"] == sum(p.numel() for p in net.parameters())


def test_runtime_is_a_median_after_warmup_not_the_first_pass():
    import time

    class SlowFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            time.sleep(0.5 if self.calls == 1 else 0.001)
            return x

    from harness.metrics.efficiency import runtime_ms

    model = SlowFirst()
    ms = runtime_ms(model, size=8, min_run_time=0.05)
    # a tenth of the 500 ms first pass, which the warm-up takes; the timed passes sleep 1 ms
    assert model.calls > 10 and ms < 0.1 * 500


def test_runtime_is_timed_once_per_architecture_and_thread_count():
    """Same architecture with other weights: the first timing is reused; another stride, or another
    thread count, is timed anew (forward passes counted)."""
    from harness.metrics import efficiency

    calls = []

    class Counted(nn.Conv2d):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    def timed(stride: int) -> tuple[float, int]:
        before = len(calls)
        ms = efficiency.architecture_runtime_ms(Counted(3, 4, 3, stride=stride), size=16)
        return ms, len(calls) - before

    efficiency._RUNTIMES.clear()
    first, passes = timed(1)
    assert passes > 3  # warm-up and timed passes
    again, passes = timed(1)  # new weights, same architecture
    assert (again, passes) == (first, 0)
    assert timed(2)[1] > 3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert timed(1)[1] > 3
    finally:
        torch.set_num_threads(threads)
        efficiency._RUNTIMES.clear()
