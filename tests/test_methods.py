"""Every method on DEA-Net tiny for a few steps: merged model, base size, trainable count, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

import harness.adapt.methods  # noqa: F401  (registers the methods)
from harness.adapt import training
from harness.adapt.base import AdaptJob
from harness.adapt.lora import lora_modules
from harness.models import build_backbone, count_params
from harness.registry import METHODS


pytestmark = pytest.mark.usefixtures("one_thread")


def loss_fn(out, inp):
    return ((out - 0.5 * inp) ** 2).mean()


def images(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 32, 40, generator=g) for _ in range(2)]


def make_job(tmp_path, progress=None, seed=0):
    torch.manual_seed(0)
    model = build_backbone("dea_net", "tiny").deploy()
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return AdaptJob(model, images(1), images(2), loss_fn, 2, 24, workdir, seed=seed, progress=progress)


def lora_count(model, groups):
    sites = model.lora_sites()
    return sum(r * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
               for g in groups for m in (model.get_submodule(n) for n in sites[g]) for r in [8])


RUNS = [
    ("none", {}),
    ("full_ft", {"steps": 3}),
    ("manual_lora", {"sites": ["level3_block1", "down_level1_block2"], "steps": 3}),
    ("bilalora", {"search_steps": 4, "finetune_steps": 3, "warmup_steps": 2}),
    ("naive_joint", {"search_steps": 4, "finetune_steps": 3, "warmup_steps": 2}),
]


@pytest.mark.parametrize("name,params", RUNS)
def test_method_runs_and_merges(tmp_path, name, params):
    losses = []
    job = make_job(tmp_path, progress=lambda done, total, info: losses.extend(info.values()))
    base = build_backbone("dea_net", "tiny").deploy()
    n0 = count_params(base)
    method = METHODS.build(name, **METHODS.validate(name, params))
    assert method.name == name and method.needs_loss == (name != "none")
    result = method.run(job)
    model = result.model
    assert not lora_modules(model) and not model.training
    assert count_params(model) == n0
    assert all(torch.isfinite(torch.tensor(v)) for v in losses)
    if name == "none":
        assert result.params_trainable == 0 and model is job.model
    elif name == "full_ft":
        assert result.params_trainable == n0 and len(losses) == 3
    else:
        selected = result.info["selected"]
        assert result.params_trainable == lora_count(base, selected)
        adapter = result.artifacts["adapter"]
        assert adapter == tmp_path / "adapter.safetensors"
        meta = json.loads(adapter.with_name(adapter.name + ".json").read_text())
        assert set(meta["sites"]) == set(selected) and meta["rank"] == 8 and meta["alpha"] == 16
        tensors = load_file(str(adapter))
        assert sum(v.numel() for k, v in tensors.items() if "lora_" in k) == result.params_trainable
        if name == "manual_lora":
            assert set(selected) == {"level3_block1", "down_level1_block2"}
        else:
            gates = result.info["gates"]
            assert len(gates) == 8 and len(selected) == 3
            assert min(gates[g] for g in selected) >= max(v for g, v in gates.items() if g not in selected)
            assert json.loads((job.workdir / "gates.json").read_text()) == pytest.approx(gates)
            assert len(losses) == 4 + 3


class Interrupt(Exception):
    pass


def test_full_ft_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "CHECKPOINT_EVERY", 2)
    ref = METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "ref")).model

    def stop(done, total, info):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "cut", progress=stop))
    assert (tmp_path / "cut" / "work" / "finetune.pt").is_file()
    resumed = METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "cut")).model
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_nan_loss_names_the_step_and_the_fix(tmp_path):
    from harness.errors import HarnessError

    job = make_job(tmp_path)
    job.loss_fn = lambda out, inp: out.mean() * float("nan")
    with pytest.raises(HarnessError, match=r"step 0.*lower lr"):
        METHODS.build("full_ft", steps=2).run(job)
