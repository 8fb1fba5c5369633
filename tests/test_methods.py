"""Every method on DEA-Net tiny for a few steps: merged model, base size, trainable count, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

import harness.adapt.methods  # noqa: F401  (registers the methods)
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


def make_job(tmp_path, progress=None, seed=0, **options):
    torch.manual_seed(0)
    model = build_backbone("dea_net", "tiny").deploy()
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return AdaptJob(model, images(1), images(2), loss_fn, 2, 24, workdir, seed=seed, progress=progress, **options)


def lora_count(model, groups, rank=8):
    """LoRA parameters of rank ``rank`` on every conv of ``groups``: A (r x in x k x k) and B (out x r)."""
    sites = model.lora_sites()
    return sum(rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
               for g in groups for m in (model.get_submodule(n) for n in sites[g]))


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
    job = make_job(tmp_path, progress=lambda done, total, info: losses.append(info["loss"]))
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
        assert name != "manual_lora" or len(losses) == 3
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
            searched = json.loads((job.workdir / "search.safetensors.json").read_text())
            assert searched["gates"] == pytest.approx(gates) and set(searched["sites"]) == set(gates)
            assert result.info["gate_updates"] == (4 - 2 if name == "bilalora" else 4)
            assert len(losses) == 4 + 3 and set(result.curves) == {"search", "finetune"}


class Interrupt(Exception):
    pass


def test_full_ft_resumes_to_the_same_weights(tmp_path):
    ref = METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "ref", checkpoint_every=2)).model

    def stop(done, total, info):
        if done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "cut", progress=stop, checkpoint_every=2))
    assert (tmp_path / "cut" / "work" / "full_ft.pt").is_file()
    resumed = METHODS.build("full_ft", steps=5).run(make_job(tmp_path / "cut", checkpoint_every=2)).model
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_nan_loss_names_the_step_and_the_fix(tmp_path):
    from harness.errors import HarnessError

    job = make_job(tmp_path)
    job.loss_fn = lambda out, inp: out.mean() * float("nan")
    with pytest.raises(HarnessError, match=r"step 0.*lower lr"):
        METHODS.build("full_ft", steps=2).run(job)


def test_finetuning_continues_the_searched_lora_weights(tmp_path):
    """Item 1: the kept groups start fine-tuning from their searched A/B (Algorithm 1), not B = 0."""
    from harness.adapt.methods import bilalora

    def adapter(fresh):
        job = make_job(tmp_path / str(fresh))
        result = bilalora(search_steps=4, finetune_steps=0, warmup_steps=2, lr=1e-3,
                          fresh_finetune=fresh).run(job)
        return load_file(str(result.artifacts["adapter"])), load_file(str(job.workdir / "search.safetensors")), result

    kept, searched, result = adapter(False)
    assert result.info["finetune_init"] == "searched"
    lora_keys = [k for k in kept if "lora_" in k]
    assert lora_keys and all(torch.equal(kept[k], searched[k]) for k in lora_keys)
    assert all(kept[k].abs().sum() > 0 for k in lora_keys if k.endswith("lora_B"))  # the search moved B
    restarted, _, _ = adapter(True)  # the option: fresh branches, B = 0
    assert all(restarted[k].abs().sum() == 0 for k in lora_keys if k.endswith("lora_B"))


def test_search_resumes_after_sigterm_to_the_uninterrupted_result(tmp_path):
    """The search loop saves on SIGTERM (it saved nothing until its end before) and a rerun continues."""
    import os
    import signal

    from harness.adapt.methods import bilalora
    from harness.engine.loop import Preempted

    def run(where, progress=None):
        job = make_job(where, progress=progress, checkpoint_every=100)
        return bilalora(search_steps=5, finetune_steps=2, warmup_steps=1, lr=1e-3, gate_lr=0.05).run(job), job

    ref, _ = run(tmp_path / "ref")

    def term(done, total, info):
        if done == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run(tmp_path / "cut", progress=term)
    assert (tmp_path / "cut" / "work" / "search.pt").is_file()
    resumed, job = run(tmp_path / "cut")
    assert resumed.info["gates"] == pytest.approx(ref.info["gates"], abs=1e-6)
    assert resumed.info["gate_updates"] == ref.info["gate_updates"] == 4
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert [p["step"] for p in resumed.curves["search"]] == [p["step"] for p in ref.curves["search"]]


@pytest.mark.parametrize("name,params", [
    ("manual_lora", {"sites": ["Encoder.0.layers.0", "Decoder.0.layers.0"], "steps": 5, "lr": 1e-2}),
    ("bilalora", {"search_steps": 3, "finetune_steps": 3, "warmup_steps": 1, "top_k": 2, "lr": 1e-2}),
])
def test_saved_base_plus_adapter_is_exactly_the_scored_convir(tmp_path, name, params):
    """Item 2: BatchNorm statistics stay frozen under LoRA, so base + adapter = the adapted model, bit for bit."""
    from harness.adapt.adapter_io import apply_adapter

    torch.manual_seed(0)
    model = build_backbone("convir", "tiny").deploy()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    job = AdaptJob(model, images(1), images(2), loss_fn, 2, 32, tmp_path / "work", seed=0)
    result = METHODS.build(name, **METHODS.validate(name, params)).run(job)
    stats = [k for k in base if k.endswith(("running_mean", "running_var"))]
    assert len(stats) >= 36  # ConvIR tiny: 18+ BatchNorm layers
    scored = result.model.state_dict()
    assert all(torch.equal(scored[k], base[k]) for k in stats)
    rebuilt = build_backbone("convir", "tiny").deploy()
    rebuilt.load_state_dict(base)
    rebuilt = apply_adapter(rebuilt, result.artifacts["adapter"]).state_dict()
    assert all(torch.equal(rebuilt[k], scored[k]) for k in scored)
    assert any(not torch.equal(scored[k], base[k]) for k in scored)  # and the adaptation did something
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(result.model(x), apply_adapter(build_model(base), result.artifacts["adapter"])(x))


def build_model(state):
    model = build_backbone("convir", "tiny").deploy()
    model.load_state_dict(state)
    return model.eval()


def test_curves_carry_val_loss_on_a_fixed_batch_without_changing_training(tmp_path):
    from harness.adapt.methods import FullFineTune

    def curve(where, val_loss, lr):
        job = make_job(where, val_loss=val_loss, log_every=2)
        return FullFineTune(steps=4, lr=lr).run(job).curves["full_ft"]

    plain, logged = curve(tmp_path / "a", False, 1e-3), curve(tmp_path / "b", True, 1e-3)
    assert [p["step"] for p in logged] == [2, 4] and all("val_loss" in p for p in logged)
    assert [p["loss"] for p in plain] == [p["loss"] for p in logged]  # validation draws nothing from the data RNG
    frozen = curve(tmp_path / "c", True, 0.0)  # lr 0: the model never moves, so one fixed batch gives one value
    assert frozen[0]["val_loss"] == frozen[1]["val_loss"]
