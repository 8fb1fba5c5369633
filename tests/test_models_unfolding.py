"""Deep unfolding backbones LoRun and VLU-Net: shapes, gradients, sizes, stage adapters, guide, phases."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.model_checks import assert_state_dict_round_trip
from harness.adapt.lora import inject_lora, lora_modules, merge_lora
from harness.errors import HarnessError
from harness.guide.model import TINY_MODEL, load_open_clip
from harness.models import BACKBONE_CARDS, build_backbone, count_params
from harness.models.lorun import Denoiser, HazeEstimator, scattering_step
from harness.models.restormer_blocks import transposed_attention
from harness.pretrain.supervised import pretrain_supervised

NAMES = ["lorun", "vlu_net"]


@pytest.fixture(scope="module")
def guide():
    """A randomly initialised tiny CLIP: enough to drive VLU-Net's prompts in shape tests."""
    torch.manual_seed(0)
    return load_open_clip(TINY_MODEL, None)


def tiny(name: str, guide, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = build_backbone(name, "tiny", **kw)
    return model.attach_guide(guide) if model.needs_guide else model


def image(h: int, w: int, seed: int = 1, n: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model: nn.Module, scale: float = 0.05) -> None:
    """Move LoRun's stage adapters off their zero start so every stage differs."""
    with torch.no_grad():
        for p in model.adapter_parameters():
            p.add_(scale * torch.randn_like(p))


# --------------------------------------------------------------- both backbones


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(97, 131), (37, 53), (5, 7)])
def test_output_shape_matches_odd_input(name, size, guide, one_thread):
    with torch.no_grad():
        out = tiny(name, guide)(image(*size))
    assert out.shape == (1, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter_and_never_the_guide(name, guide, one_thread):
    model = tiny(name, guide)
    if name == "lorun":
        randomise_adapters(model)  # with every up-projection at zero the down-projections get zero gradient
    model(image(37, 53, n=2)).square().mean().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []
    assert all(p.grad is None for p in guide.model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_and_determinism(name, guide, one_thread):
    x = image(21, 27)
    source, target = tiny(name, guide, seed=0), tiny(name, guide, seed=1)
    if name == "lorun":
        randomise_adapters(source)
    assert_state_dict_round_trip(source, target, x)


@pytest.mark.parametrize("name", NAMES)
def test_a_few_training_steps_fit_a_fixed_batch(name, guide, one_thread):
    model, x = tiny(name, guide), image(32, 32, n=2)
    target = 0.5 * x + 0.25
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = F.l1_loss(model(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["full", "tiny"])
def test_lora_sites_name_conv_modules(name, variant):
    with torch.device("meta"):
        model = build_backbone(name, variant)
    modules = dict(model.named_modules())
    groups = model.lora_sites()
    flat = [s for sites in groups.values() for s in sites]
    assert groups and all(groups.values()) and len(flat) == len(set(flat))
    assert all(isinstance(modules[s], nn.Conv2d) for s in flat)


# --------------------------------------------------------------- LoRun


def test_scattering_step_is_a_gradient_step_on_the_scattering_energy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    t = 0.1 + 0.9 * torch.rand(2, 1, 5, 6, generator=g)
    a = torch.rand(2, 3, 1, 1, generator=g)
    rho = torch.tensor(0.7)
    xr = x.clone().requires_grad_(True)
    energy = 0.5 * ((xr * t + a * (1 - t) - y) ** 2).sum()  # 1/2 |Phi x - y|^2, Phi x = t x + A (1 - t)
    (grad,) = torch.autograd.grad(energy, xr)
    torch.testing.assert_close(scattering_step(x, y, t, a, rho), x - rho * grad)
    inverted = (y - a * (1 - t)) / t  # the scattering model's inversion is the step's fixed point
    torch.testing.assert_close(scattering_step(inverted, y, t, a, rho), inverted)


def test_lorun_rank_rule_and_full_size_against_a_hand_count():
    model = build_backbone("lorun", "full")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # ceil(min(in, out) * 10 / 100): 32 -> 96 qkv: ceil(3.2) = 4; 3 -> 32 embedding: ceil(0.3) = 1
    assert shapes["denoiser.encoder1.0.attn.qkv.stages.0.down.weight"] == (4, 32, 1, 1)
    assert shapes["denoiser.encoder1.0.attn.qkv.stages.8.up.weight"] == (96, 4, 1, 1)
    assert shapes["denoiser.embed.stages.3.down.weight"] == (1, 3, 3, 3)
    assert shapes["denoiser.latent.3.ffn.project_out.stages.0.down.weight"] == (13, 340, 1, 1)  # min 128 -> 13
    assert "denoiser.encoder1.0.attn.qkv_dwconv.stages.0.down.weight" not in shapes  # depthwise: no adapter
    # the unshared network: nine separate plain denoisers + the same heads and step sizes
    plain = count_params(Denoiser(32, (2, 2, 4), (1, 2, 4), 2.66))
    heads = count_params(HazeEstimator(16))
    assert model.unshared_params() == 9 * plain + heads + 9 + 9  # + step sizes and strengths
    adapters = sum(p.numel() for p in model.adapter_parameters())
    assert count_params(model) == plain + heads + 9 + 9 + adapters
    assert 0.2 < count_params(model) / model.unshared_params() < 0.25  # 3.05 M vs 13.54 M
    assert len([g for g in model.lora_sites() if g.startswith("stage")]) == 9


def test_lorun_fresh_adapters_make_every_stage_the_shared_denoiser(one_thread):
    model, y = tiny("lorun", None), image(16, 20)
    with torch.no_grad():
        t, a = model.estimator(y)
        x = y
        for k in range(9):  # by hand: nine gradient steps, each followed by the bare denoiser
            x = model.denoiser(scattering_step(x, y, t, a, model.rho[k]))
        torch.testing.assert_close(model(y), x)
        randomise_adapters(model)
        assert not torch.allclose(model(y), x)


def test_lorun_single_block_mode_is_one_step_of_the_bare_denoiser(one_thread):
    model, y = tiny("lorun", None), image(16, 20)
    randomise_adapters(model)
    model.single_block = True
    with torch.no_grad():
        t, a = model.estimator(y)
        expected = model.denoiser(scattering_step(y, y, t, a, model.rho[0]))
        torch.testing.assert_close(model(y), expected)


def test_lorun_phase_two_starts_exactly_where_the_single_block_ended(one_thread):
    model, y = tiny("lorun", None), image(16, 20)
    with torch.no_grad():
        for p in model.parameters():  # a "trained" base and step sizes; adapters stay at zero
            if p.dim() > 1 and not any(p is q for q in model.adapter_parameters()):
                p.add_(0.02 * torch.randn_like(p))
        model.rho.uniform_(0.5, 1.5)
    single, stages = model.pretrain_phases(10)
    single.setup()
    with torch.no_grad():
        after_phase_one = model(y)
    stages.setup()
    with torch.no_grad():
        outputs = model.stage_outputs(y)
    assert len(outputs) == 9
    for x in outputs:  # stage 1 is the single block, stages 2..9 start as identities
        torch.testing.assert_close(x, after_phase_one)


def test_lorun_stage_site_changes_only_its_stage_and_merges_exactly(one_thread):
    model, y = tiny("lorun", None), image(16, 20)
    randomise_adapters(model)
    with torch.no_grad():
        before = model.stage_outputs(y)
    inject_lora(model, {"stage5": model.lora_sites()["stage5"]}, rank=2, alpha=2, gate_init=2.0)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.normal_(0, 0.1)
        after = model.stage_outputs(y)
        for k in range(4):  # stages 1-4 run before stage 5's branch
            torch.testing.assert_close(after[k], before[k])
        assert not torch.allclose(after[4], before[4])
        merged = merge_lora(model)
        torch.testing.assert_close(merged.stage_outputs(y)[-1], after[-1], atol=1e-5, rtol=0)


def test_lorun_two_phase_pretraining_trains_what_each_phase_names(tmp_path, one_thread):
    torch.manual_seed(0)
    model = build_backbone("lorun", "tiny")
    clear = [torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    hazy = [0.6 * c + 0.4 for c in clear]
    start = copy.deepcopy(model.state_dict())
    phases = model.pretrain_phases(6)
    assert [(p.name, p.steps, p.loss) for p in phases] == [("pretraining_base", 3, "l2"), ("pretraining_stages", 3, "l2")]

    after_base = {}

    def watch(done, total, info):
        if done == 3:
            after_base.update(copy.deepcopy(model.state_dict()))

    pretrain_supervised(model, hazy, clear, steps=6, lr=1e-3, batch_size=2, patch_size=16, seed=0,
                        state_path=tmp_path / "state.pt", checkpoint_every=100, progress=watch)
    end = model.state_dict()

    def moved(a, b, keys):
        return {k for k in keys if not torch.equal(a[k], b[k])}

    adapters = {k for k in start if ".stages." in k}
    base = set(start) - adapters - {"rho", "strength"}
    assert moved(start, after_base, adapters) == set()  # phase 1: adapters untouched
    assert moved(start, after_base, base) == base  # ... every base weight learns
    assert moved(after_base, end, base) == set()  # phase 2: the shared denoiser and heads frozen
    assert {k for k in moved(after_base, end, adapters) if k.endswith("up.weight")}  # adapters learn
    assert torch.equal(after_base["rho"][1:], torch.ones(8))  # phase 1 only steps rho_1 ...
    assert not torch.equal(after_base["rho"][0], torch.tensor(1.0))
    assert torch.equal(after_base["strength"], torch.ones(9))
    assert not torch.equal(end["strength"][1:], torch.zeros(8))  # phase 2 grows stages 2..9 from identity
    assert (tmp_path / "state-pretraining_base.pt").is_file()  # ... and leaves its final state for a rerun
    assert not model.single_block and all(p.requires_grad for p in model.parameters())


def test_lorun_resume_in_phase_two_matches_an_uninterrupted_run(tmp_path, one_thread):
    clear = [torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    hazy = [0.6 * c + 0.4 for c in clear]

    def train(folder, progress=None):
        torch.manual_seed(0)
        model = build_backbone("lorun", "tiny")
        pretrain_supervised(model, hazy, clear, steps=8, lr=1e-3, batch_size=2, patch_size=16, seed=0,
                            state_path=folder / "state.pt", checkpoint_every=2, progress=progress)
        return model

    class Killed(Exception):
        pass

    def kill(done, total, info):
        if done == 7:  # phase 2's third step, after its checkpoint at step 2 of 4
            raise Killed

    full = train(tmp_path / "a")
    with pytest.raises(Killed):
        train(tmp_path / "b", progress=kill)
    assert torch.load(tmp_path / "b" / "state-pretraining_stages.pt", weights_only=False)["step"] == 2
    base_steps = []
    resumed = train(tmp_path / "b", progress=lambda done, total, info: base_steps.append(done))
    assert base_steps == [7, 8]  # phase 1 is not repeated
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


# --------------------------------------------------------------- VLU-Net


def test_vlu_net_full_size_matches_published_without_clip():
    with torch.device("meta"):
        for de_dim, published in ((7, 35.35e6), (5, 34.36e6)):
            measured = count_params(build_backbone("vlu_net", "full", de_dim=de_dim))
            assert abs(measured / published - 1) < 0.02, measured
    assert BACKBONE_CARDS["vlu_net"].needs_guide and BACKBONE_CARDS["vlu_net"].variants["full"].params == 35_350_000


def test_vlu_net_keys_and_shapes_follow_the_official_formulas():
    with torch.device("meta"):
        model = build_backbone("vlu_net", "full")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # prompt bank: de_dim x (dim // 10 * level) channels x (96 // level) pixels a side
    assert shapes["encoder_level1.gradient_descent.prompt_param"] == (1, 7, 4, 96, 96)
    assert shapes["encoder_level2.gradient_descent.prompt_param"] == (1, 7, 18, 48, 48)
    assert shapes["latent.gradient_descent.prompt_param"] == (1, 7, 152, 24, 24)
    assert shapes["decoder_level1.gradient_descent.prompt_param"] == (1, 7, 9, 96, 96)
    assert shapes["refinement.gradient_descent.linear.weight"] == (7, 512)
    assert shapes["latent.gradient_descent.phi.k.weight"] == (384, 152, 1, 1)
    assert shapes["decoder_level1.denoiser.blocks.3.ffn.project_in.weight"] == (510, 96, 1, 1)  # int(96 * 2.66) * 2
    assert shapes["latent.denoiser.blocks.7.attn.temperature"] == (8, 1, 1)
    assert shapes["encoder_level1.denoiser.blocks.0.norm1.body.bias"] == (48,)
    assert shapes["reduce_chan_level3_img.weight"] == (192, 384, 1, 1)
    assert not any(k.startswith("down1_2_i.") for k in shapes)  # unused by the official forward
    assert len(model.lora_sites()) == 4 + 6 + 6 + 8 + 6 + 6 + 4 + 4


def test_vlu_net_loads_an_official_layout_dropping_the_unused_downsampler(tmp_path):
    from safetensors.torch import save_file

    from harness.models.checkpoints import load_official

    source, target = build_backbone("vlu_net", "tiny"), build_backbone("vlu_net", "tiny")
    official = {**source.state_dict(), "down1_2_i.body.0.weight": torch.zeros(6, 12, 3, 3)}
    save_file({k: v.contiguous() for k, v in official.items()}, str(tmp_path / "vlu.safetensors"))
    report = load_official(target, tmp_path / "vlu.safetensors", "vlu_net", verbose=False)
    assert report.ok and report.dropped == ["down1_2_i.body.0.weight"]
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_vlu_net_prompt_is_the_bank_mixed_by_the_guide_feature():
    torch.manual_seed(0)
    step = build_backbone("vlu_net", "tiny").encoder_level2.gradient_descent
    with torch.no_grad():
        step.linear.weight.zero_()
        step.linear.bias.copy_(torch.tensor([0.0, math.log(3.0), 0.0]))  # softmax -> (1/5, 3/5, 1/5)
        prompt = step.prompt(torch.randn(2, 512), (9, 7))
    bank = step.prompt_param[0]
    mixed = (bank[0] + 3 * bank[1] + bank[2]) / 5
    expected = F.interpolate(mixed[None], (9, 7), mode="bilinear", align_corners=False)
    torch.testing.assert_close(prompt, expected.expand(2, -1, -1, -1))


def test_transposed_attention_matches_a_per_channel_loop():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 3, 5, generator=g) for _ in range(3))
    temperature = torch.tensor([0.5, 2.0]).view(2, 1, 1)
    out = transposed_attention(q, k, v, 2, temperature)
    expected = torch.zeros_like(out)
    for head in range(2):
        rows = range(2 * head, 2 * head + 2)  # the channels of this head
        for i in rows:
            scores = torch.stack([F.cosine_similarity(q[0, i].flatten(), k[0, j].flatten(), dim=0) for j in rows])
            weights = torch.softmax(scores * temperature[head, 0, 0], dim=0)
            expected[0, i] = sum(w * v[0, j] for w, j in zip(weights, rows))
    torch.testing.assert_close(out, expected)


def test_vlu_net_guide_stays_out_of_weights_and_copies(guide):
    model = tiny("vlu_net", guide)
    assert not any("visual" in k or "transformer" in k for k in model.state_dict())
    assert count_params(model) == count_params(build_backbone("vlu_net", "tiny"))
    assert copy.deepcopy(model).guide is guide and model.deploy().guide is guide


def test_vlu_net_refuses_a_missing_or_too_wide_guide(guide):
    with pytest.raises(HarnessError, match="none is attached.*guide:"):
        build_backbone("vlu_net", "tiny")(image(16, 16))
    narrow = build_backbone("vlu_net", "tiny", clip_dim=64).attach_guide(guide)  # the tiny CLIP is 128 wide
    with pytest.raises(HarnessError, match="128-d image embedding.*clip_dim 64.*clip_dim: 128"):
        narrow(image(16, 16))


def test_vlu_net_output_follows_the_guide(guide, one_thread):
    torch.manual_seed(1)
    other = load_open_clip(TINY_MODEL, None)  # same architecture, other weights
    model, x = tiny("vlu_net", guide), image(24, 24)
    with torch.no_grad():
        first = model(x)
        second = model.attach_guide(other)(x)
    assert not torch.allclose(first, second)


def test_pretrain_id_includes_the_guide_only_for_guide_driven_backbones():
    from harness.plan import expand
    from harness.recipe import Recipe

    def ids(guide):
        recipe = Recipe.model_validate({
            "name": "t", "backbones": [{"type": "lorun", "variant": "tiny"}, {"type": "vlu_net", "variant": "tiny"}],
            "pretrain": [{"type": "synthetic"}], "target": [{"type": "synthetic"}], "methods": [{"type": "none"}],
            "benchmarks": [{"type": "synthetic"}], "metrics": [{"type": "psnr"}], "guide": guide})
        return [c.pretrain_id for c in expand(recipe)]

    lorun_a, vlu_a = ids({"type": "embedded"})
    lorun_b, vlu_b = ids({"type": "embedded", "steps": 10})
    lorun_c, vlu_c = ids({"type": "embedded", "positive": "a sunny photo"})  # prompts do not reach the backbone
    assert lorun_a == lorun_b == lorun_c and vlu_a == vlu_c and vlu_a != vlu_b


def test_check_guide_refuses_another_or_unverifiable_guide():
    from harness.guide import check_guide

    trained = {"model": "ViT-B-32", "sha256": "a" * 64}
    check_guide(trained, dict(trained), "ckpt")
    with pytest.raises(HarnessError, match="ckpt was trained with guide ViT-B-32 sha256 aaaaaaaaaaaa.*delete"):
        check_guide(trained, {"model": "ViT-B-32", "sha256": "b" * 64}, "ckpt")
    with pytest.raises(HarnessError, match="has no weights file"):
        check_guide(trained, {"model": "ViT-B-32", "sha256": None}, "ckpt")


def test_models_command_shows_lorun_against_its_unshared_network_and_vlu_net_size(monkeypatch):
    """Display check: the figures themselves are tested against hand counts above."""
    import typer
    from typer.testing import CliRunner

    from harness.models import catalog

    monkeypatch.setenv("COLUMNS", "200")
    rows = catalog.catalog_rows
    monkeypatch.setattr(catalog, "catalog_rows", lambda include_flops=True: rows(False, ["lorun", "vlu_net"]))
    app = typer.Typer()
    app.command()(catalog.models_command)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    out = result.output
    model = build_backbone("lorun", "full")
    shared, unshared = count_params(model), model.unshared_params()
    assert (f"lorun full: {shared / 1e6:.3f} M with its stages sharing one denoiser, {unshared / 1e6:.3f} M "
            f"without sharing ({shared / unshared:.3f}x)") in out
    line = next(l for l in out.splitlines() if "vlu_net" in l and "full" in l)
    # 35.343: our count (a regression pin; the count itself is checked against the published 35.35 M above)
    assert "35.343" in line and "35.350" in line and "-0.0%" in line
    assert "vlu_net: parameters exclude the CLIP guide" in out


def test_a_vlu_net_checkpoint_rebuilds_its_guide_and_refuses_another(tmp_path, one_thread):
    from safetensors.torch import save_file

    from harness.dehaze import load_checkpoint
    from harness.guide import guide_identity
    from harness.store import save_weights

    torch.manual_seed(0)
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in load_open_clip(TINY_MODEL, None).model.state_dict().items()}, str(weights))
    spec = {"type": "open_clip", "model": TINY_MODEL, "pretrained": str(weights)}
    trained_with = load_open_clip(TINY_MODEL, str(weights))
    model = tiny("vlu_net", trained_with)
    path = tmp_path / "model.safetensors"
    save_weights(path, model, {"backbone": "vlu_net", "variant": "tiny", "form": "deploy",
                               "backbone_guide": guide_identity(trained_with, spec)})
    loaded, _ = load_checkpoint(path)
    x = image(24, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    torch.manual_seed(1)  # the guide's weights file is replaced by another CLIP
    save_file({k: v.contiguous() for k, v in load_open_clip(TINY_MODEL, None).model.state_dict().items()}, str(weights))
    with pytest.raises(HarnessError, match="was trained with guide harness-tiny-clip sha256"):
        load_checkpoint(path)


@pytest.mark.slow
def test_both_unfolding_backbones_run_end_to_end_and_reload(tmp_path):
    """The real CLI on a tiny budget: two-phase LoRun and guide-driven VLU-Net, none and bilalora;
    a rerun reuses every cell (the VLU-Net checkpoints pass the guide check) and dehaze reloads VLU-Net."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    recipe = {
        "name": "unfold", "device": "cpu", "out": str(tmp_path / "run"),
        "backbones": [{"type": "lorun", "variant": "tiny"}, {"type": "vlu_net", "variant": "tiny"}],
        "pretrain": [{"type": "synthetic", "source": "skimage", "kind": "asm", "count": 4, "size": 48, "seed": 0}],
        "target": [{"type": "synthetic", "source": "skimage", "kind": "nonuniform", "count": 4, "size": 48, "seed": 1}],
        "benchmarks": [{"type": "synthetic", "source": "skimage", "kind": "nonuniform", "count": 2, "size": 48,
                        "seed": 2}],
        "metrics": ["psnr"], "guide": {"type": "embedded", "steps": 30},
        "budget": {"pretrain_steps": 4, "batch_size": 2, "patch_size": 32, "checkpoint_every": 2},
        "methods": [{"type": "none"}, {"type": "bilalora", "rank": 2, "alpha": 4, "top_k": 2, "search_steps": 3,
                                       "finetune_steps": 2, "warmup_steps": 1}],
    }
    path = tmp_path / "unfold.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}

    def harness(*args):
        return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                              timeout=1200)

    first = harness("run", str(path))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    records = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    assert len(records) == 4 and not list(run.glob("pretrained/*/state*.pt"))
    sidecars = {json.loads(p.read_text())["backbone"]: json.loads(p.read_text())
                for p in run.glob("pretrained/*/model.safetensors.json")}
    assert sidecars["vlu_net"]["backbone_guide"]["spec"] == {"type": "embedded", "steps": 30}
    assert "backbone_guide" not in sidecars["lorun"]
    again = harness("run", str(path))
    assert again.returncode == 0 and "0 task(s) run, 10 of 10 already done" in again.stdout, again.stderr[-2000:]
    vlu = next(p for p in run.glob("pretrained/*/model.safetensors") if "vlu_net" in p.with_name(p.name + ".json").read_text())
    (tmp_path / "in").mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(30, 44, 3).numpy() * 255).astype("uint8")).save(tmp_path / "in" / "a.png")
    restored = harness("dehaze", str(tmp_path / "in"), str(tmp_path / "out"), "--checkpoint", str(vlu))
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert Image.open(tmp_path / "out" / "a.png").size == (44, 30)
