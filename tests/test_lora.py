"""GatedLoRA on Conv2d (grouped too), ConvTranspose2d and Linear: exact identity at B = 0 / adapters off,
lossless merge and unmerge, gradients to A, B and the gate, NaN refused, merged size = base."""

import pytest
import torch
from torch import nn

from harness.adapt.lora import (
    GatedLoRA,
    gate_parameters,
    inject_lora,
    lora_modules,
    lora_parameters,
    merge_lora,
    select_sites,
    set_adapters_enabled,
)
from harness.errors import HarnessError
from harness.metrics.efficiency import flops_256
from harness.models import build_backbone, count_params


pytestmark = pytest.mark.usefixtures("one_thread")


def conv():
    return nn.Conv2d(6, 5, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")


CASES = {
    "conv": (conv, (2, 6, 17, 19)),
    "linear": (lambda: nn.Linear(7, 4), (3, 7)),
    "grouped": (lambda: nn.Conv2d(6, 4, 3, padding=1, groups=2), (2, 6, 9, 11)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6), (2, 6, 9, 11)),
    "grouped_strided_dilated_reflect": (
        lambda: nn.Conv2d(6, 9, 3, stride=2, padding=2, dilation=2, padding_mode="reflect", groups=3), (2, 6, 17, 19)),
    "transposed": (lambda: nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1, output_padding=1), (2, 6, 7, 9)),
    "grouped_transposed": (
        lambda: nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, dilation=2, groups=2), (2, 6, 7, 9)),
}
cases = pytest.mark.parametrize("make,shape", CASES.values(), ids=CASES.keys())


def wrap(base, gate=0.3):
    return GatedLoRA(base, nn.Parameter(torch.tensor(gate)), rank=3, alpha=6)


@cases
def test_zero_B_and_adapters_off_are_exactly_the_base(make, shape):
    torch.manual_seed(0)
    base = make()
    x = torch.randn(shape)
    ref = base(x)
    m = wrap(base)
    assert torch.equal(m(x), ref)  # B = 0 at init
    nn.init.normal_(m.lora_B.weight)
    assert not torch.allclose(m(x), ref)
    m.enabled = False
    assert torch.equal(m(x), ref)


@cases
def test_merge_matches_unmerged_and_unmerge_restores(make, shape):
    torch.manual_seed(1)
    base = make()
    w0 = base.weight.detach().clone()
    m = wrap(base)
    nn.init.normal_(m.lora_B.weight, std=0.5)
    x = torch.randn(shape)
    with torch.no_grad():
        unmerged = m(x)
        m.merge()
        merged = m(x)
        assert (merged - unmerged).abs().max() < 1e-5
        assert not torch.allclose(base.weight, w0)
        m.unmerge()
    assert (base.weight - w0).abs().max() < 1e-6


@cases
def test_gradients_reach_A_B_and_gate(make, shape):
    torch.manual_seed(2)
    m = wrap(make())
    x = torch.randn(shape)
    m(x).square().sum().backward()
    assert m.lora_B.weight.grad.abs().sum() > 0  # B gets a gradient at B = 0; A and the gate cannot yet
    m.zero_grad()
    with torch.no_grad():
        nn.init.normal_(m.lora_B.weight)
    m(x).square().sum().backward()
    for p in (m.lora_A.weight, m.lora_B.weight, m.gate):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_nan_unsupported_and_misshapen_branch_refused(monkeypatch):
    m = wrap(conv())
    with torch.no_grad():
        m.lora_B.weight.fill_(float("nan"))
    with pytest.raises(HarnessError, match="NaN"):
        m.merge()
    with pytest.raises(HarnessError, match="Conv1d"):
        wrap(nn.Conv1d(4, 4, 3))
    monkeypatch.setattr(GatedLoRA, "delta_weight", lambda self: torch.zeros(4, 1, 3, 3))
    with pytest.raises(HarnessError, match=r"\(4, 1, 3, 3\) weight, not the base's \(4, 2, 3, 3\)"):
        wrap(nn.Conv2d(4, 4, 3, groups=2))


def test_inject_merge_on_dea_net_keeps_size_and_flops():
    torch.manual_seed(0)
    model = build_backbone("dea_net", "tiny").deploy().eval()
    n0, f0 = count_params(model), flops_256(model, size=64)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        ref = model(x)
    sites = select_sites(model, ["level3_block1", "down_level1*"])
    assert set(sites) == {"level3_block1", "down_level1_block1", "down_level1_block2"}
    gates = inject_lora(model, sites, rank=4, alpha=8)
    assert len(gate_parameters(model)) == 3 and len(lora_parameters(model)) == 12
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and "gate" not in n)
    assert all(lora_modules(model)[n].gate is gates[g] for g, ns in sites.items() for n in ns)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
        for p in lora_parameters(model):
            p.normal_(std=0.05)
        adapted = model(x)
        set_adapters_enabled(model, False)
        assert torch.equal(model(x), ref)
        set_adapters_enabled(model, True)
    merged = merge_lora(model)
    assert not lora_modules(merged)
    assert count_params(merged) == n0 and flops_256(merged, size=64) == f0
    with torch.no_grad():
        assert (merged(x) - adapted).abs().max() < 1e-5


@pytest.mark.parametrize("backbone,sites", [
    ("dea_net", {"up": ["up1.0", "up2.0"], "pa": ["level3_block1.pa.pa2", "mix2.pa.pa2"]}),  # depthwise-style pa2
    ("grid_dehaze_net", {"up": ["upsample_module.0_2.deconv", "upsample_module.1_3.deconv"]}),  # output_size=
])
def test_inject_user_named_transposed_and_grouped_convs(backbone, sites):
    torch.manual_seed(0)
    model = build_backbone(backbone, "tiny").deploy().eval()
    gates = inject_lora(model, sites, rank=2, alpha=4, gate_init=1.0)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(std=0.05)
    x = torch.rand(1, 3, 20, 20)
    model(x).square().mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in [*lora_parameters(model), *gates.values()])
    with torch.no_grad():
        adapted = model(x)
    merged = merge_lora(model)
    assert not lora_modules(merged)
    with torch.no_grad():
        assert (merged(x) - adapted).abs().max() < 1e-5


def test_unknown_site_pattern_lists_groups():
    model = build_backbone("dea_net", "tiny").deploy()
    with pytest.raises(HarnessError, match="level3_block1"):
        select_sites(model, ["nope*"])
