"""GatedLoRA: exact identity at B = 0 / adapters off, lossless merge and unmerge, NaN refused, merged size = base."""

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


CASES = [(conv, (2, 6, 17, 19)), (lambda: nn.Linear(7, 4), (3, 7))]


def wrap(base, gate=0.3):
    return GatedLoRA(base, nn.Parameter(torch.tensor(gate)), rank=3, alpha=6)


@pytest.mark.parametrize("make,shape", CASES)
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


@pytest.mark.parametrize("make,shape", CASES)
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


def test_nan_refused_and_grouped_conv_refused():
    m = wrap(conv())
    with torch.no_grad():
        m.lora_B.weight.fill_(float("nan"))
    with pytest.raises(HarnessError, match="NaN"):
        m.merge()
    with pytest.raises(HarnessError, match="groups"):
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


def test_unknown_site_pattern_lists_groups():
    model = build_backbone("dea_net", "tiny").deploy()
    with pytest.raises(HarnessError, match="level3_block1"):
        select_sites(model, ["nope*"])
