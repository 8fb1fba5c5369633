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


LORALIB_CASES = {k: CASES[k] for k in ("conv", "linear", "grouped", "depthwise", "grouped_strided_dilated_reflect")}


@pytest.mark.parametrize("make,shape", LORALIB_CASES.values(), ids=LORALIB_CASES.keys())
def test_loralib_layout_is_the_conv_with_the_reshaped_update_and_merges_losslessly(make, shape):
    """The loralib ConvLoRA layout, by hand: A (r k, in k), B (out/groups k, r k), and the output
    conv(x, W + sigmoid(g) (alpha / r) (B @ A).view(W.shape)) with the base's geometry."""
    torch.manual_seed(3)
    base = make()
    m = GatedLoRA(base, nn.Parameter(torch.tensor(0.3)), rank=3, alpha=6, layout="loralib")
    nn.init.normal_(m.lora_B.weight, std=0.3)
    x = torch.randn(shape)
    with torch.no_grad():
        w = base.weight
        if isinstance(base, nn.Conv2d):
            k = base.kernel_size[0]
            assert m.lora_A.weight.shape == (3 * k, base.in_channels * k)
            assert m.lora_B.weight.shape == (base.out_channels // base.groups * k, 3 * k)
            update = (m.lora_B.weight @ m.lora_A.weight).view(w.shape)
            expected = base._conv_forward(x, w + torch.sigmoid(torch.tensor(0.3)) * 2 * update, base.bias)
        else:
            update = m.lora_B.weight @ m.lora_A.weight
            expected = nn.functional.linear(x, w + torch.sigmoid(torch.tensor(0.3)) * 2 * update, base.bias)
        assert (m(x) - expected).abs().max() < 1e-5
        m.merge()
        assert (m(x) - expected).abs().max() < 1e-5


def test_loralib_layout_refuses_transposed_convs():
    with pytest.raises(HarnessError, match="loralib LoRA layout has no ConvTranspose2d"):
        GatedLoRA(nn.ConvTranspose2d(4, 4, 3), nn.Parameter(torch.tensor(0.0)), 2, 4, layout="loralib")


def test_table1_parameter_row_with_the_loralib_layout(tmp_path):
    """BiLaLoRA Table 1 (DEA-Net, top-3 blocks, rank 8): 3.653 M merged, 3.764 M unmerged; the
    overhead 110,592 = 3 blocks x 2 convs x 8 x 3^2 x (128 + 128). Our own layout adds 61,440."""
    from harness.adapt.base import AdaptJob
    from harness.adapt.methods import manual_lora

    blocks = ["level3_block1", "level3_block2", "level3_block3"]
    counts = {}
    for layout in ("loralib", "conv"):
        model = build_backbone("dea_net", "full").deploy()
        job = AdaptJob(model, [], [], lambda out, inp: out.mean(), 1, 16, tmp_path / layout)
        result = manual_lora(sites=blocks, rank=8, alpha=16, steps=0, layout=layout).run(job)
        counts[layout] = (count_params(result.model), result.params_unmerged, result.params_trainable)
    merged, unmerged, trainable = counts["loralib"]
    assert merged == 3_653_377 and trainable == 110_592  # merged: DEA-Net's deploy form (test_models_a; paper 3.653 M)
    assert unmerged == merged + trainable + 3  # and one gate per block
    assert round(merged / 1e6, 3) == 3.653 and round(unmerged / 1e6, 3) == 3.764
    assert counts["conv"][2] == 61_440 and counts["conv"][0] == merged
