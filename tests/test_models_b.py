"""MSBDN-DFF, ConvIR and DeHamer: published sizes, official naming, tiny training, checkpoint loading."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from harness.errors import HarnessError
from harness.metrics.efficiency import flops_256, macs_256
from harness.models import build_backbone, count_params
from harness.models.checkpoints import load_official, map_keys
from harness.models.convir import DynamicFilter
from harness.models.dehamer import dark_channel

FULL = [  # name, variant, published params, published MACs at 256x256 (None: see the MSBDN test)
    ("msbdn", "full", 31.35e6, None),
    ("convir", "s", 5.53e6, 42.1e9),
    ("convir", "b", 8.63e6, 71.22e9),
    ("convir", "l", 14.83e6, 129.34e9),
    ("dehamer", "full", 29.45e6, 48e9),  # the 29.45 M the official forward uses (132.45 M built)
]


def meta_model(name, variant):
    with torch.device("meta"):
        return build_backbone(name, variant).eval()


@pytest.mark.parametrize("name,variant,params,macs", FULL)
def test_full_size_matches_published(name, variant, params, macs):
    model = meta_model(name, variant)
    assert abs(count_params(model) / params - 1) < 0.02
    if macs is not None:
        assert abs(flops_256(model, device="meta") / 2 / macs - 1) < 0.10


def test_msbdn_macs_match_thop_convention():
    """The published 41.5 G counts each ConvTranspose2d at its output size (thop); ours is exact: it
    equals the layers' multiply-adds counted from their shapes (a conv: per output element, its
    in_channels / groups x k x k taps; a transposed conv: the same per *input* element)."""
    model = meta_model("msbdn", "full")
    by_shape = []

    def hook(module, inputs, output):
        taps = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            by_shape.append(inputs[0].numel() * module.out_channels // module.groups * taps)
        else:
            by_shape.append(output.numel() * module.in_channels // module.groups * taps)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    macs, thop_macs = macs_256(model, device="meta")
    assert macs == sum(by_shape) and abs(macs / 24.43e9 - 1) < 0.01  # 24.43 G: that count, as documented
    assert abs(thop_macs / 41.5e9 - 1) < 0.01


def test_convir_full_is_a_published_variant_and_min_size_follows_dilations():
    full, b, tiny = meta_model("convir", "full"), meta_model("convir", "b"), meta_model("convir", "tiny")
    assert count_params(full) == count_params(b) == 8_630_665
    assert (full.multiple, full.min_size, tiny.min_size) == (32, 256, 64)
    with pytest.raises(RuntimeError, match="[Pp]adding"):  # the reason for min_size: reflect pad > side
        full.restore(torch.rand(1, 3, 224, 224, device="meta"))
    assert full(torch.rand(1, 3, 40, 72, device="meta")).shape == (1, 3, 40, 72)


@pytest.mark.parametrize("name,multiple,min_size", [("msbdn", 16, 32), ("convir", 32, 64), ("dehamer", 16, 0)])
def test_tiny_training_step_reaches_every_parameter(name, multiple, min_size):
    torch.manual_seed(0)
    model = build_backbone(name, "tiny")
    assert (model.multiple, model.min_size) == (multiple, min_size)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == x.shape
    loss = F.l1_loss(out, x)
    if name == "convir":  # its 1/4 and 1/2 scale heads only see the multi-scale training loss
        loss = sum(F.l1_loss(o, F.interpolate(x, o.shape[-2:])) for o in model.multi_scale(x))
    loss.backward()
    unreached = [n for n, p in model.named_parameters() if p.grad is None]
    assert unreached == []  # every module built is used (DeHamer: none of the official dead ones)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 21, 38)).shape == (1, 3, 21, 38)


@pytest.mark.parametrize("name,groups,linear", [("msbdn", 29, False), ("convir", 58, False), ("dehamer", 17, True)])
def test_lora_sites_name_distinct_conv_or_linear_modules(name, groups, linear):
    model = meta_model(name, "full")
    sites = model.lora_sites()
    modules = dict(model.named_modules())
    flat = [s for group in sites.values() for s in group]
    assert len(sites) == groups and all(sites.values())
    assert len(flat) == len(set(flat))
    assert all(isinstance(modules[s], (nn.Conv2d, nn.Linear)) for s in flat)
    assert any(isinstance(modules[s], nn.Linear) for s in flat) is linear


@pytest.mark.parametrize("name,key", [
    ("msbdn", "dehaze.res17.conv2.conv2d.weight"),
    ("msbdn", "fusion4.up_convs.3.deconv.weight"),
    ("msbdn", "fusion_1.down_convs.3.act.weight"),
    ("convir", "Encoder.2.layers.7.main.1.dynas.2.square_att.bn.running_mean"),
    ("convir", "Decoder.0.layers.7.main.1.dynas.0.strip_att.W_spatial_att.lamb_h"),
    ("convir", "SCM1.main.4.weight"),
    ("dehamer", "swin_1.layers.2.blocks.1.attn.relative_position_bias_table"),
    ("dehamer", "MSRB2.last_up.2.body.1.top.2.weight"),
    ("dehamer", "MSRB3.down.128_2.body.0.bot.0.filt"),
    ("dehamer", "PPM4.features.3.1.weight"),
])
def test_official_state_dict_names(name, key):
    assert key in meta_model(name, "full").state_dict()


def test_dark_channel_is_min_over_colour_and_window():
    x = torch.rand(2, 3, 20, 24)
    padded = F.pad(x.amin(dim=1, keepdim=True), (7, 7, 7, 7), mode="reflect")
    reference = F.unfold(padded, 15).amin(dim=1).view(2, 1, 20, 24)
    assert torch.equal(dark_channel(x), reference)


def test_dynamic_filter_is_identity_at_init_and_a_predicted_conv_when_opened():
    torch.manual_seed(0)
    filt = DynamicFilter(16, kernel_size=3, dilation=2, group=8).eval()
    x = torch.rand(1, 16, 12, 12)
    assert torch.equal(filt(x), x)  # lamb_l = lamb_h = 0: low part off, high part passes
    with torch.no_grad():
        filt.lamb_l.fill_(1.0)
        filt.lamb_h.fill_(-1.0)
        taps = torch.tanh(filt.bn(filt.conv(x.mean(dim=(2, 3), keepdim=True)))).view(8, 9)
    weight = taps.repeat_interleave(2, dim=0).view(16, 1, 3, 3)  # one kernel per group of 2 channels
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, dilation=2, groups=16)
    assert torch.allclose(filt(x), expected, atol=1e-5)


# ---------------------------------------------------------------- checkpoints


def tiny(name, seed):
    torch.manual_seed(seed)
    return build_backbone(name, "tiny")


def test_load_official_unwraps_dataparallel_container_and_drops_unused_modules(tmp_path):
    source = tiny("dehamer", 0)
    official = {f"module.{k}": v for k, v in source.state_dict().items()}
    official["module.E_block5.0.weight"] = torch.zeros(4, 4, 3, 3)  # built but unused officially
    official["module.MSRB2.up.32_2.body.0.top.0.weight"] = torch.zeros(2, 2, 1, 1)
    torch.save({"state_dict": official}, tmp_path / "dehamer.pt")
    target = tiny("dehamer", 1)
    report = load_official(target, tmp_path / "dehamer.pt", "dehamer", verbose=False)
    assert report.ok
    assert sorted(report.dropped) == ["E_block5.0.weight", "MSRB2.up.32_2.body.0.top.0.weight"]
    assert len(report.loaded) == len(source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


@pytest.mark.parametrize("fmt", ["pkl", "safetensors"])
def test_load_official_reads_model_container_and_safetensors(tmp_path, fmt):
    source = tiny("convir", 0)
    path = tmp_path / f"convir.{fmt}"
    if fmt == "pkl":
        torch.save({"model": source.state_dict(), "epoch": 3}, path)  # ConvIR's training script format
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = tiny("convir", 1)
    assert load_official(target, path, "convir", verbose=False).ok
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def test_load_official_reports_missing_unexpected_and_mismatched(tmp_path, capsys):
    state = tiny("msbdn", 0).state_dict()
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "msbdn.pth")
    target = build_backbone("msbdn", "full")  # 16..256 ch, 3 blocks per scale, 18 bottleneck blocks
    before = target.conv_input.conv2d.weight.clone()
    report = load_official(target, tmp_path / "msbdn.pth", "msbdn")
    assert not report.ok
    assert report.unexpected == ["extra.weight"]
    assert ("conv_input.conv2d.weight", (4, 3, 11, 11), (16, 3, 11, 11)) in report.mismatched
    assert "dense0.2.conv1.conv2d.weight" in report.missing and "dehaze.res17.relu.weight" in report.missing
    assert torch.equal(target.conv_input.conv2d.weight, before)  # a mismatched tensor is not loaded
    assert "res0.relu.weight" in " ".join(report.loaded)  # PReLU weights have the same shape at any width
    assert "1 unexpected" in capsys.readouterr().out


def test_load_official_errors_name_the_path_and_the_fix(tmp_path):
    model = tiny("msbdn", 0)
    with pytest.raises(HarnessError, match="nowhere.pth does not exist"):
        load_official(model, tmp_path / "nowhere.pth", "msbdn")
    torch.save(model, tmp_path / "whole.pth")  # what MSBDN-DFF's train.py saves
    with pytest.raises(HarnessError, match="whole.pth.*state_dict"):
        load_official(model, tmp_path / "whole.pth", "msbdn")
    with pytest.raises(HarnessError, match="unknown backbone 'msbdnn'"):
        load_official(model, tmp_path / "whole.pth", "msbdnn")


def test_key_map_renames_in_order_and_drops():
    t = torch.zeros(1)
    state, dropped = map_keys({"net.old.w": t, "net.old.b": t, "aux.w": t},
                              [(r"^aux\.", None), (r"^net\.", ""), (r"^old\.", "new.")])
    assert sorted(state) == ["new.b", "new.w"] and dropped == ["aux.w"]


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(HarnessError, match="unknown convir variant 'xl'.*s, b, l, tiny, full"):
        build_backbone("convir", "xl")
