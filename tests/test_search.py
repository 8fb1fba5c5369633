"""The hypergradient's sign, and what the layer search does with the gates."""

import pytest
import torch

from harness.adapt.base import AdaptJob
from harness.adapt.hypergrad import hypergradient

from harness.adapt.methods import bilalora, naive_joint
from harness.models import build_backbone, count_params
from tests.test_methods import lora_count

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64  # the closed-form checks are to 1e-9
C, LAM = 2.5, 0.3
M = torch.tensor([0.7, -1.2, 0.4], dtype=D)
T = torch.tensor(0.9, dtype=D)


def losses(w, a):
    """Lower f = c/2 (w - m.a)^2 (minimiser w* = m.a); upper F = (w - t)^2/2 + lam |a|^2 / 2."""
    lower = 0.5 * C * (w - M @ a) ** 2
    upper = 0.5 * (w - T) ** 2 + 0.5 * LAM * (a * a).sum()
    return lower, upper


def exact_total_derivative(a):
    """d/da F(w*(a), a) by the implicit function theorem: lam a + m (w* - t)."""
    return LAM * a + M * (M @ a - T)


def test_hypergradient_has_the_theorem_sign_not_the_flipped_one():
    a = torch.tensor([0.2, -0.1, 0.5], dtype=D, requires_grad=True)
    w_star = (M @ a).detach()
    for offset in (1e-3, 0.3, -2.0):  # at w = w* the lower gradient vanishes, so step off it
        w = (w_star + offset).requires_grad_(True)
        (h,) = hypergradient(*losses(w, a), [w], [a])
        # for a scalar lower variable the rank-one approximation is exact at the current w
        expected = LAM * a + M * (w - T)
        assert torch.allclose(h, expected.detach(), atol=1e-9)
        flipped = LAM * a - M * (w - T)  # the sign the authors' code uses
        assert not torch.allclose(h, flipped.detach(), atol=1e-3)
    # approaching the lower optimum, it tends to the exact total derivative (error ~ |m| * offset)
    w = (w_star + 1e-4).requires_grad_(True)
    (h,) = hypergradient(*losses(w, a), [w], [a])
    assert torch.allclose(h, exact_total_derivative(a).detach(), atol=2e-4)


@pytest.fixture
def job(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 40, 40, generator=g) for _ in range(4)]
    torch.manual_seed(0)
    model = build_backbone("dea_net", "tiny").deploy()
    return AdaptJob(model=model, train_images=images[:2], val_images=images[2:],
                   loss_fn=lambda out, inp: ((out - 0.8 * inp) ** 2).mean(), batch_size=2, patch_size=32,
                   workdir=tmp_path / "work", seed=0)


@pytest.mark.parametrize("builder", [bilalora, naive_joint])
def test_search_moves_gates_then_keeps_top_k_merged(job, builder):
    base_params = count_params(job.model)
    method = builder(rank=2, alpha=4, top_k=2, search_steps=6, finetune_steps=3, lr=1e-3, gate_lr=0.05,
                     warmup_steps=2)
    result = method.run(job)
    gates = result.info["gates"]
    assert len(gates) == 8 and len({round(v, 6) for v in gates.values()}) > 1  # gates moved, differently
    assert result.info["selected"] == sorted(gates, key=gates.get, reverse=True)[:2]
    assert count_params(result.model) == base_params  # merged: no extra parameters at inference
    # trainable = rank-2 branches on the convs of the two kept blocks
    assert result.params_trainable == lora_count(job.model, result.info["selected"], rank=2)
    assert 0 < result.params_trainable < 0.05 * base_params
    assert result.artifacts["adapter"].is_file()


def test_warmup_longer_than_search_leaves_gates_at_their_start(job):
    result = bilalora(rank=2, alpha=4, top_k=1, search_steps=3, finetune_steps=1, warmup_steps=10).run(job)
    assert all(v == pytest.approx(0.5) for v in result.info["gates"].values())




DDP_SEARCH = """
import sys
import torch
from harness.adapt.base import AdaptJob
from harness.adapt.lora import inject_lora, lora_parameters
from harness.adapt.search import SearchStepper
from harness.engine.strategy import DataParallel, Strategy
from tests.test_hypergrad import Tiny, loss_fn

out, distributed = sys.argv[1], sys.argv[2] == "ddp"
torch.manual_seed(0)
model = Tiny()
gates = inject_lora(model, {"g1": ["c1"], "g2": ["c2"]}, rank=2, alpha=4)
g = torch.Generator().manual_seed(0)
images = [torch.rand(3, 12, 12, generator=g) for _ in range(4)]
strategy = DataParallel("cpu") if distributed else Strategy("cpu")
job = AdaptJob(model, images[:2], images[2:], loss_fn, batch_size=4, patch_size=12, workdir=None, strategy=strategy)
stepper = SearchStepper(job, lora_parameters(model), list(gates.values()), lr=1e-2, gate_lr=5e-2, bilevel=True,
                        warmup_steps=1, steps=4)
rng = torch.Generator().manual_seed(1)
for step in range(4):
    stepper.step(step, rng)
if strategy.rank == 0:
    torch.save({k: v for k, v in model.state_dict().items() if "lora_" in k or "gate" in k}, out)
"""


@pytest.mark.slow
def test_two_rank_search_equals_one_process_on_the_global_batch(tmp_path, monkeypatch):
    """Gradients from autograd.grad are averaged over ranks before the hypergradient's dot products."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_distributed_eval import _torchrun

    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", root)
    script = tmp_path / "search.py"
    script.write_text(DDP_SEARCH)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), "single"], check=True, cwd=root)
    _torchrun(str(script), str(tmp_path / "two.pt"), "ddp")
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and any("gate" in k for k in one)
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-6), k
