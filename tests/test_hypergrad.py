"""The first-order hypergradient against the implicit function theorem; gates vs LoRA optimisers.

Quadratic problem: lower f(w, a) = c/2 |w - M a|^2 (so H_ww = c I, w*(a) = M a), upper
F(w, a) = |w - t|^2 / 2 + lam |a|^2 / 2. Exact implicit gradient: dF(w*(a), a)/da = lam a + M^T (w* - t).

What is checked precisely: at w = w* the lower gradient g = d_w f is 0, so the rank-one term vanishes
(eps keeps it finite) and ``hypergradient`` returns d_a F only. The rank-one approximation is exact
when the lower gradient is taken at a point w* + delta (delta != 0), the upper one at w*, and
d_w F is parallel to g = c delta -- always true for a 1-D w. For a 2-D w we also show it is the
projection of the exact correction onto g (not exact for a generic delta).
"""

import copy

import pytest
import torch
from torch import nn

from harness.adapt.base import AdaptJob
from harness.adapt.hypergrad import hypergradient
from harness.adapt.lora import gate_parameters, inject_lora, lora_parameters
from harness.adapt.search import SearchStepper
from harness.data.patches import sample_patches

C, LAM = 2.5, 0.3


pytestmark = pytest.mark.usefixtures("one_thread")


def problem(dim_w):
    g = torch.Generator().manual_seed(dim_w)
    M = torch.randn(dim_w, 3, generator=g, dtype=torch.float64)
    t = torch.randn(dim_w, generator=g, dtype=torch.float64)
    a = torch.randn(3, generator=g, dtype=torch.float64)
    return M, t, a


def exact(M, t, a):
    return LAM * a + M.T @ (M @ a - t)


def ours(M, t, a, delta):
    a = a.clone().requires_grad_(True)
    w = (M @ a).detach().requires_grad_(True)  # w = w*(a)
    lower = 0.5 * C * ((w + delta - M @ a) ** 2).sum()  # f at w* + delta
    upper = 0.5 * ((w - t) ** 2).sum() + 0.5 * LAM * (a * a).sum()  # F at w*
    return hypergradient(lower, upper, [w], [a])[0]


def test_exact_for_one_dimensional_w_any_delta():
    M, t, a = problem(1)
    for d in (1e-3, -0.7, 5.0):
        h = ours(M, t, a, torch.tensor([d], dtype=torch.float64))
        assert torch.allclose(h, exact(M, t, a), atol=1e-6)


def test_vector_w_exact_iff_upper_gradient_parallel_to_lower():
    M, t, a = problem(2)
    dwF = M @ a - t
    assert torch.allclose(ours(M, t, a, 0.3 * dwF), exact(M, t, a), atol=1e-6)
    delta = torch.tensor([1.0, 0.0], dtype=torch.float64)  # generic: projection of the correction onto delta
    projected = LAM * a + M.T @ (delta * (delta @ dwF))
    assert torch.allclose(ours(M, t, a, delta), projected, atol=1e-6)
    assert not torch.allclose(ours(M, t, a, delta), exact(M, t, a), atol=1e-3)


def test_at_w_star_correction_vanishes_and_stays_finite():
    M, t, a = problem(1)
    h = ours(M, t, a, torch.zeros(1, dtype=torch.float64))
    assert torch.isfinite(h).all() and torch.allclose(h, LAM * a, atol=1e-12)


def test_exact_implicit_gradient_matches_finite_differences():
    """Checks the reference: ``exact`` (the implicit-function gradient the other tests hold the
    harness's hypergradients to) against central finite differences of F(w*(a), a)."""
    M, t, a = problem(2)
    total = lambda a: 0.5 * ((M @ a - t) ** 2).sum() + 0.5 * LAM * (a * a).sum()  # F(w*(a), a)
    eps = 1e-6
    fd = torch.stack([(total(a + eps * e) - total(a - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=torch.float64)])
    assert torch.allclose(fd, exact(M, t, a), atol=1e-6)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.c2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def loss_fn(out, inp):
    return ((out - 0.5 * inp) ** 2).mean()


def setup(tmp_path, bilevel=True, warmup=0, seed=0):
    torch.manual_seed(seed)
    model = Tiny()
    gates = inject_lora(model, {"g1": ["c1"], "g2": ["c2"]}, rank=2, alpha=4)
    g = torch.Generator().manual_seed(seed)
    train, val = [torch.rand(3, 12, 12, generator=g) for _ in range(2)], [torch.rand(3, 12, 12, generator=g)]
    job = AdaptJob(model, train, val, loss_fn, batch_size=2, patch_size=12, workdir=tmp_path)
    w, a = lora_parameters(model), list(gates.values())
    stepper = SearchStepper(job, w, a, lr=1e-2, gate_lr=1e-2, bilevel=bilevel, warmup_steps=warmup, steps=10)
    return model, w, a, stepper


def test_gate_gradient_exactly_zero_before_warmup_nonzero_after(tmp_path):
    model, w, a, stepper = setup(tmp_path, warmup=2)
    rng = torch.Generator().manual_seed(0)
    x, v = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    h = hypergradient(loss_fn(model(x), x), loss_fn(model(v), v), w, a)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in h)  # B = 0: branch output is 0 whatever the gate
    for step in range(2):  # warm-up: lower steps only
        stepper.step(step, rng)
    h = hypergradient(loss_fn(model(x), x), loss_fn(model(v), v), w, a)
    assert all(g.abs() > 0 for g in h)


def test_warmup_moves_only_lora_and_an_upper_step_moves_gates(tmp_path):
    model, w, a, stepper = setup(tmp_path, warmup=2)
    rng = torch.Generator().manual_seed(0)
    base0 = {k: t.clone() for k, t in model.state_dict().items() if "lora_" not in k and "gate" not in k}
    for step in range(2):
        gates0, lora0 = [p.detach().clone() for p in a], [p.detach().clone() for p in w]
        stepper.step(step, rng)
        assert all(torch.equal(p, q) for p, q in zip(a, gates0))
        assert any(not torch.equal(p, q) for p, q in zip(w, lora0))
    gates0 = [p.detach().clone() for p in a]
    stepper.step(2, rng)
    assert all(not torch.equal(p, q) for p, q in zip(a, gates0))
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in base0.items())  # the base never moves
    assert gate_parameters(model) == a and stepper.gate_updates.value == 1


def test_bilevel_step_is_two_passes_and_equals_the_update_by_hand(tmp_path):
    """One upper step: 2 forwards and 2 backwards (3 + 3 before), and exactly
    w <- Adam(d_w f), a <- Adam(hypergradient(f, F)), both taken at the current (w, a)."""
    model, w, a, stepper = setup(tmp_path)
    rng = torch.Generator().manual_seed(0)
    stepper.step(0, rng)  # B is non-zero from here on, so the gates get a gradient
    ref = copy.deepcopy(stepper)  # model, optimiser and its moments, as one object graph
    state = rng.get_state()
    x, _ = sample_patches(stepper.job.train_images, 2, 12, rng)
    v, _ = sample_patches(stepper.job.val_images, 2, 12, rng)
    rng.set_state(state)

    passes = {"forward": 0, "backward": 0}

    def count(module, inputs, output):
        passes["forward"] += 1
        output.register_hook(lambda grad: passes.update(backward=passes["backward"] + 1))

    handle = model.register_forward_hook(count)
    stepper.step(1, rng)
    handle.remove()
    assert passes == {"forward": 2, "backward": 2}

    f, F = loss_fn(ref.trained.model(x), x), loss_fn(ref.trained.model(v), v)
    gw_f = torch.autograd.grad(f, ref.w, retain_graph=True)
    h = hypergradient(f, F, ref.w, ref.a)
    for p, g in zip(ref.w + ref.a, list(gw_f) + h):
        p.grad = g
    ref.trained.optimiser.step()
    for p, q in zip(w + a, ref.w + ref.a):
        assert torch.allclose(p, q, atol=1e-7, rtol=0)
    assert stepper.gate_updates.value == 2  # no warm-up: step 0 made one too (a zero hypergradient at B = 0)


def test_joint_search_updates_gates_with_the_lower_gradient_every_step(tmp_path):
    model, w, a, stepper = setup(tmp_path, bilevel=False)
    rng = torch.Generator().manual_seed(0)
    for step in range(2):
        gates0 = [p.detach().clone() for p in a]
        stepper.step(step, rng)
    assert all(not torch.equal(p, q) for p, q in zip(a, gates0)) and stepper.gate_updates.value == 2
