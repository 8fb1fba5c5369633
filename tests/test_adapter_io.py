"""Adapter files: loading reproduces the adapted model, a wrong base is refused, switching is exact."""

import copy
import json

import pytest
import torch

from harness.adapt.adapter_io import AdapterSwitch, apply_adapter, save_adapter
from harness.adapt.lora import inject_lora, lora_modules, select_sites
from harness.dehaze import load_checkpoint
from harness.errors import HarnessError
from harness.models import build_backbone
from harness.store import file_sha256, save_weights, sidecar


def base_checkpoint(tmp_path, seed=0):
    torch.manual_seed(seed)
    model = build_backbone("dea_net", "tiny").deploy()
    path = tmp_path / f"base{seed}.safetensors"
    save_weights(path, model, {"backbone": "dea_net", "variant": "tiny", "form": "deploy"})
    return path


def make_adapter(tmp_path, ckpt, group, seed, layout="conv"):
    model, _ = load_checkpoint(ckpt)
    sites = select_sites(model, [group])
    inject_lora(model, sites, rank=2, alpha=4, gate_init=0.5, layout=layout)
    torch.manual_seed(seed)
    for module in lora_modules(model).values():
        torch.nn.init.normal_(module.lora_B.weight, std=0.05)
    path = save_adapter(model, sites, 2, 4, tmp_path / f"{group}.safetensors", layout)
    meta = json.loads(sidecar(path).read_text())
    sidecar(path).write_text(json.dumps({**meta, "base_sha256": file_sha256(ckpt)}))
    return path, model


@pytest.mark.parametrize("layout", ["conv", "loralib"])
def test_loaded_adapter_reproduces_the_unmerged_model(tmp_path, layout):
    ckpt = base_checkpoint(tmp_path)
    path, adapted = make_adapter(tmp_path, ckpt, "level3_block1", 1, layout)
    assert json.loads(sidecar(path).read_text())["layout"] == layout
    x = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        expected = adapted.eval()(x)
        model, _ = load_checkpoint(ckpt)
        merged = apply_adapter(model, path, base_checkpoint=ckpt)
        assert not lora_modules(merged)
        assert (merged(x) - expected).abs().max() < 1e-5


def test_adapter_refuses_another_base(tmp_path):
    ckpt, other = base_checkpoint(tmp_path, 0), base_checkpoint(tmp_path, 1)
    path, _ = make_adapter(tmp_path, ckpt, "level3_block1", 1)
    model, _ = load_checkpoint(other)
    with pytest.raises(HarnessError, match="another base checkpoint"):
        apply_adapter(model, path, base_checkpoint=other)
    with pytest.raises(HarnessError, match="another base checkpoint"):
        AdapterSwitch(model, other).use(path)  # the switch hashes its base once, and still checks


def test_switching_adapters_on_one_base_is_exact(tmp_path):
    ckpt = base_checkpoint(tmp_path)
    day, day_model = make_adapter(tmp_path, ckpt, "level3_block1", 1)
    night, night_model = make_adapter(tmp_path, ckpt, "down_level1_block1", 2)
    base, _ = load_checkpoint(ckpt)
    x = torch.rand(1, 3, 36, 36)
    with torch.no_grad():
        plain = copy.deepcopy(base)(x)
        switch = AdapterSwitch(base, ckpt)
        assert (switch.use(day)(x) - day_model.eval()(x)).abs().max() < 1e-5
        assert (switch.use(night)(x) - night_model.eval()(x)).abs().max() < 1e-5
        assert torch.equal(switch.use(None)(x), plain)
