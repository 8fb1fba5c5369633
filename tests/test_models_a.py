"""Backbones DEA-Net, FFA-Net, AOD-Net and GridDehazeNet: shapes, gradients, sizes, LoRA sites."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.model_checks import assert_state_dict_round_trip
from harness.metrics.efficiency import macs_256
from harness.models import BACKBONE_CARDS, build_backbone, count_params

NAMES = ["dea_net", "ffa_net", "aod_net", "grid_dehaze_net"]


def tiny(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone(name, "tiny")


def image(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(97, 131), (37, 53)])
def test_output_shape_matches_odd_input(name, size):
    out = tiny(name)(image(*size))
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = tiny(name)
    model(image(37, 53)).square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    # a squeeze layer whose few hidden ReLUs start dead gets an exactly zero gradient; allow a little
    params = list(model.parameters())
    moving = sum(p.numel() for p in params if p.grad.abs().sum() > 0)
    assert moving / sum(p.numel() for p in params) > 0.95


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_determinism(name):
    x = image(21, 27)
    source, target = tiny(name, seed=0), tiny(name, seed=1)
    assert_state_dict_round_trip(source, target, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["full", "tiny"])
def test_lora_sites_name_conv_or_linear_modules(name, variant):
    model = build_backbone(name, variant)
    for form in (model, model.deploy()):
        modules = dict(form.named_modules())
        groups = form.lora_sites()
        assert groups and all(groups.values())
        for site in (s for sites in groups.values() for s in sites):
            assert isinstance(modules[site], (nn.Conv2d, nn.Linear)), site


@pytest.mark.parametrize("name", NAMES)
def test_full_param_count_within_2_percent_of_published(name):
    published = BACKBONE_CARDS[name].variants["full"].params
    measured = count_params(build_backbone(name, "full").deploy())
    assert abs(measured - published) / published < 0.02, measured


@pytest.mark.parametrize("name", NAMES)
def test_full_macs_within_10_percent_of_published(name):
    published = BACKBONE_CARDS[name].variants["full"].flops_256
    card = BACKBONE_CARDS[name].variants["full"]
    macs, thop_macs = macs_256(build_backbone(name, "full").deploy().to("meta"), device="meta")
    measured = thop_macs if card.flops_convention == "thop" else macs
    assert abs(measured - published) / published < 0.10, (macs, thop_macs)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_train_step_on_64px_runs(name):
    model, x = tiny(name), image(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = []
        for _ in range(2):  # speed is benchmarks/backbone_throughput.py's business, not a test's
            opt.zero_grad()
            loss = model(x).abs().mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in losses), losses
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


# --- DEA-Net -------------------------------------------------------------------------------------


def test_dea_net_sizes_in_both_forms():
    model = build_backbone("dea_net", "full")
    assert count_params(model) == 7_789_313  # training form (paper: 7.789 M)
    assert count_params(model.deploy()) == 3_653_377  # deploy form (paper: 3.653 M)


def test_dea_net_deploy_form_gives_the_same_output():
    model = tiny("dea_net")
    with torch.no_grad():  # move biases off their init so every branch matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    deployed = model.deploy()
    assert deployed is not model and deployed.deploy() is deployed
    assert not any(type(m).__name__ == "DEConv" for m in deployed.modules())
    x = image(37, 53)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), atol=1e-5, rtol=0)


def test_dea_net_difference_kernels_match_their_definitions():
    from harness.models.dea_net import DEConv

    torch.manual_seed(0)
    deconv, x = DEConv(2), torch.rand(1, 2, 9, 11)
    pad = F.pad(x, (1, 1, 1, 1))

    def direct(kernel_of: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """Sum over taps (row r, col c) of weight (out, in) times the input shifted to that tap."""
        return sum(torch.einsum("oi,bihw->bohw", w, pad[..., r : r + 9, c : c + 11])
                   for (r, c), w in kernel_of.items())

    w = deconv.conv1_1.conv.weight  # central: sum_k w_k (x_k - x_centre)
    central = direct({(r, c): w[..., r, c] for r in range(3) for c in range(3)}) - direct(
        {(1, 1): w.sum((-2, -1))})
    h = deconv.conv1_2.conv.weight  # horizontal: w_r (x_{r,left} - x_{r,right})
    horizontal = direct({(r, 0): h[..., r] for r in range(3)}) - direct({(r, 2): h[..., r] for r in range(3)})
    v = deconv.conv1_3.conv.weight  # vertical: w_c (x_{top,c} - x_{bottom,c})
    vertical = direct({(0, c): v[..., c] for c in range(3)}) - direct({(2, c): v[..., c] for c in range(3)})
    for branch, expected in ((deconv.conv1_1, central), (deconv.conv1_2, horizontal), (deconv.conv1_3, vertical)):
        got = F.conv2d(x, branch.kernel(), padding=1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    angular = deconv.conv1_4.kernel()
    assert angular[..., 1, 1].abs().max() == 0 and angular.sum().abs() < 1e-4  # pure differences


def test_dea_net_lora_sites_are_the_authors_16_encoder_blocks():
    deployed = build_backbone("dea_net", "full").deploy()
    groups = deployed.lora_sites()
    assert len(groups) == 16
    widths = [dict(deployed.named_modules())[sites[0]].in_channels for sites in groups.values()]
    assert widths == [32] * 4 + [64] * 4 + [128] * 8
    assert groups["level3_block8"] == ["level3_block8.conv1", "level3_block8.conv2"]
    assert len(tiny("dea_net").deploy().lora_sites()) == 8


def test_dea_net_keys_follow_the_official_layout():
    model = build_backbone("dea_net", "tiny")
    train_keys, deploy_keys = model.state_dict().keys(), model.deploy().state_dict().keys()
    assert "down_level1_block1.conv1.conv1_2.conv.weight" in train_keys
    assert model.state_dict()["down_level1_block1.conv1.conv1_2.conv.weight"].shape == (8, 8, 3)
    for key in ("level3_block1.conv1.weight", "level3_block1.pa.pa2.weight", "level3_block1.ca.ca.2.bias",
                "mix1.sa.sa.weight", "mix2.conv.weight", "up1.0.weight", "fe_level_2.bias"):
        assert key in deploy_keys, key


def test_dea_net_macs_explain_both_published_figures():
    macs, thop_macs = macs_256(build_backbone("dea_net", "full").deploy().to("meta"), device="meta")
    assert abs(macs / 1e9 - 32.2) < 0.1  # the paper's figure
    assert abs(thop_macs / 1e9 - 34.04) < 0.05  # thop's, with the two transposed convs overcounted


# --- FFA-Net -------------------------------------------------------------------------------------


def test_ffa_net_layout_and_sites():
    model = build_backbone("ffa_net", "full")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["g1.gp.19.weight"] == (64, 64, 3, 3)  # each group's closing conv
    assert shapes["ca.1.weight"] == (4, 192, 1, 1) and shapes["ca.3.weight"] == (192, 4, 1, 1)
    assert shapes["g3.gp.18.calayer.ca.2.weight"] == (64, 8, 1, 1)
    assert shapes["g2.gp.0.palayer.pa.2.weight"] == (1, 8, 1, 1)
    groups = model.lora_sites()
    assert len(groups) == 3 * 19 + 3
    assert groups["g2.block4"] == ["g2.gp.4.conv1", "g2.gp.4.conv2"] and groups["g3.tail"] == ["g3.gp.19"]


def test_ffa_net_adds_its_output_to_the_input():
    model = tiny("ffa_net")
    with torch.no_grad():
        model.post[1].weight.zero_()
        model.post[1].bias.zero_()
        x = image(23, 29)
        assert torch.equal(model(x), x)


# --- AOD-Net -------------------------------------------------------------------------------------


def test_aod_net_has_exactly_1761_parameters_in_five_three_channel_convs():
    model = build_backbone("aod_net", "full")
    assert count_params(model) == 1761
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [1, 3, 5, 7, 3]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 3), (3, 3), (6, 3), (6, 3), (12, 3)]


def test_aod_net_applies_j_equals_k_times_i_minus_k_plus_1():
    model = tiny("aod_net")
    x = image(17, 19)
    with torch.no_grad():
        model.conv5.weight.zero_()
        model.conv5.bias.copy_(torch.tensor([0.5, 2.0, 3.0]))  # K is constant per channel
        k = torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1)
        torch.testing.assert_close(model(x), torch.relu(k * x - k + 1))


@pytest.mark.parametrize("name", ["aod_net", "grid_dehaze_net"])
def test_channels_last_restore_is_the_same_function_with_nchw_output(name, monkeypatch):
    """The backbones registered with ``channels_last`` restore an NHWC tensor on the CPU; outputs and
    weight gradients match the NCHW computation of the same weights (float summation order aside)."""
    model = tiny(name)
    assert model.channels_last and BACKBONE_CARDS[name].channels_last
    seen = []  # per call: did restore get an NHWC (and not NCHW) tensor?
    restore = type(model).restore

    def watched(self, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return restore(self, x)

    monkeypatch.setattr(type(model), "restore", watched)
    x = image(21, 26)
    results = []
    for layout in (True, False):
        model.channels_last = layout
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results.append((out, [p.grad.clone() for p in model.parameters()]))
    assert seen == [True, False]
    (out_cl, grads_cl), (out, grads) = results
    assert out_cl.is_contiguous() and out_cl.shape == (1, 3, 21, 26)
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_cl, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# --- GridDehazeNet -------------------------------------------------------------------------------


def test_grid_dehaze_net_layout():
    model = build_backbone("grid_dehaze_net", "full")
    assert count_params(model) == 958_051
    assert model.coefficient.shape == (3, 6, 2, 64)  # 2,304 of the parameters
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["rdb_module.2_4.residual_dense_layers.3.conv.weight"] == (16, 112, 3, 3)
    assert shapes["rdb_module.2_4.conv_1x1.weight"] == (64, 128, 1, 1)
    assert shapes["downsample_module.1_2.conv2.weight"] == (64, 32, 3, 3)
    assert shapes["upsample_module.0_5.deconv.weight"] == (32, 32, 3, 3)
    assert len(model.rdb_module) == 15 and len(model.downsample_module) == len(model.upsample_module) == 6
    assert len(model.lora_sites()) == 17 + 12


def test_grid_dehaze_net_lower_rows_reach_the_output_only_through_the_fusion_weights():
    model, x = tiny("grid_dehaze_net"), image(33, 41)
    with torch.no_grad():
        before = model(x)
        for down in model.downsample_module.values():
            for p in down.parameters():
                p.add_(1.0)
        assert not torch.allclose(model(x), before)
        model.coefficient[:, :, 1].zero_()  # silence every cross-row stream
        silenced = model(x)
        for down in model.downsample_module.values():
            for p in down.parameters():
                p.add_(1.0)
        assert torch.equal(model(x), silenced)
