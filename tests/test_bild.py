"""BILD: the one-pass per-patch dot products against explicit per-patch gradients, the entropy
gradient against autograd, the direction of both reward terms on data built to have one answer,
resume, two ranks against one process, and the recipe/runner hook."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.recipe_files import write
from harness.engine.strategy import Strategy
from harness.errors import HarnessError
from harness.models import build_backbone
from harness.plugins import load_plugins
from harness.pretrain.bild import (
    BILD,
    Reweighter,
    batch_weights,
    entropy_share_gradient,
    per_patch_dots,
    per_patch_loss,
    replayed_rng,
    rng_snapshot,
    split_pairs,
    weight_entropy,
)
from harness.plan import expand
from harness.recipe import dataset_spec
from harness.validate import load_recipe
from harness.registry import REWEIGHTS

load_plugins()


class SmallNet(nn.Module):
    """Conv + BatchNorm (training mode: each patch's loss depends on the batch) + ReLU + conv."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x):
        return self.body(x) + x


def explicit_dots(model, direction, x, y, loss):
    """One reverse pass per patch: <grad l_i, direction> from each patch's own gradient."""
    params = [p for _, p in model.named_parameters()]
    losses = per_patch_loss(loss, model(x), y)
    out = []
    for i in range(len(x)):
        grads = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        out.append(sum((g * direction[n]).sum() for (n, _), g in zip(model.named_parameters(), grads)
                       if g is not None))
    return torch.stack(out)


@pytest.mark.parametrize("net,loss", [("small_bn", "l1"), ("small_bn", "l2"), ("aod_net", "l1"), ("ffa_net", "l1"),
                                      ("dehamer", "l1")])
def test_one_pass_dots_equal_explicit_per_patch_gradients(net, loss, one_thread):
    torch.manual_seed(0)
    model = (SmallNet() if net == "small_bn" else build_backbone(net, "tiny")).train().double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 12, 12, generator=g, dtype=torch.float64)
    y = torch.rand(6, 3, 12, 12, generator=g, dtype=torch.float64)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    direction = {n: torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in model.named_parameters()}
    stats_before = {n: b.clone() for n, b in model.named_buffers()}
    draws = rng_snapshot(torch.device("cpu"))  # DeHamer's drop-path: both passes draw the same masks
    with replayed_rng(draws):
        batched = per_patch_dots(model, params, direction, x, y, loss)
    for n, b in model.named_buffers():  # the extra pass leaves batch-norm statistics alone
        assert torch.equal(b, stats_before[n]), n
    torch.set_rng_state(draws["cpu"])
    expected = explicit_dots(model, direction, x, y, loss)
    assert batched.shape == (6,)
    torch.testing.assert_close(batched, expected, rtol=1e-9, atol=1e-12)
    assert expected.abs().max() > 1e-6  # not a vacuous comparison of zeros


def test_weights_and_entropy_by_hand():
    logits = torch.tensor([0.0, 0.0, 0.0, 0.0])
    w = batch_weights(logits)
    assert torch.allclose(w, torch.ones(4))  # uniform weights are plain L1
    assert weight_entropy(w).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert torch.allclose(entropy_share_gradient(w), torch.zeros(4), atol=1e-7)  # the maximum
    w = batch_weights(torch.tensor([2.0, 0.0, -1.0]))
    assert w.sum().item() == pytest.approx(3.0)
    # closed form against autograd of H(w / sum w), per unit of share (x sum w)
    free = w.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(weight_entropy(free), free)
    torch.testing.assert_close(entropy_share_gradient(w), grad * w.sum())
    # the heaviest patch's share must fall for the entropy to rise: its reward term is negative
    assert entropy_share_gradient(w)[0] < 0 < entropy_share_gradient(w)[2]


def test_validation_split_is_ten_percent_disjoint_and_seed_free():
    train, held = split_pairs(30, 0.1)
    assert len(held) == 3 and len(train) == 27 and not set(train) & set(held)
    assert sorted(train + held) == list(range(30))
    assert split_pairs(30, 0.1) == (train, held)
    assert len(split_pairs(5, 0.1)[1]) == 1  # at least one
    with pytest.raises(HarnessError, match="at least 2"):
        split_pairs(1, 0.1)


def corrupted_pairs(n=12, size=24, val_fraction=0.2):
    """Pairs hazy = 0.6 clear + 0.4; every other training pair (never a held-out one) is corrupted:
    its 'clear' image is hazier than its hazy one (0.6 hazy + 0.4), so its gradient opposes dehazing.
    Returns hazy, clear and the corrupted indices."""
    g = torch.Generator().manual_seed(0)
    clear = [torch.rand(3, size, size, generator=g) * 0.5 + 0.25 for _ in range(n)]
    hazy = [0.6 * c + 0.4 for c in clear]
    train, _ = split_pairs(n, val_fraction)
    bad = train[::2]
    targets = [0.6 * h + 0.4 if i in bad else c for i, (h, c) in enumerate(zip(hazy, clear))]
    return hazy, targets, bad


def bild_stepper(tmp_path, hazy, clear, steps, **config):
    from harness.engine.loop import TrainLoop

    torch.manual_seed(0)
    model = build_backbone("aod_net", "tiny")
    stepper = BILD(**config).stepper(model, hazy, clear, steps=steps, lr=2e-3, batch_size=8, patch_size=16,
                                     strategy=Strategy("cpu"))
    result = TrainLoop("pretraining", steps, tmp_path / "state.pt", seed=0, checkpoint_every=1000).run(stepper)
    return stepper, result


@pytest.mark.parametrize("objective", ["validation"])
def test_reward_sign_downweights_corrupted_pairs(tmp_path, objective, one_thread):
    """Corrupted pairs' gradients oppose the clean validation gradient: BILD must score them lower
    (a sign error in the reward or the update would score them higher)."""
    hazy, clear, bad = corrupted_pairs()
    stepper, _ = bild_stepper(tmp_path, hazy, clear, 40, alpha=0.5, lr=0.01, val_fraction=0.2, objective=objective)
    with torch.no_grad():
        scores = stepper.reweighter(torch.stack(hazy)[..., :16, :16], torch.stack(clear)[..., :16, :16])
    good = [i for i in range(len(hazy)) if i not in bad]
    assert scores[good].min() > scores[bad].max(), (scores[good], scores[bad])


def test_entropy_term_keeps_weights_spread(tmp_path, one_thread):
    hazy, clear, _ = corrupted_pairs(8)
    _, free = bild_stepper(tmp_path / "a", hazy, clear, 20, alpha=0.0, lr=0.01)
    _, held = bild_stepper(tmp_path / "b", hazy, clear, 20, alpha=1.0, lr=0.01)
    lowest = {name: min(p["entropy"] for p in r.curve) for name, r in (("free", free), ("held", held))}
    assert lowest["held"] > 0.99 > lowest["free"]  # normalised entropy: 1 = uniform weights


def test_bild_resume_after_kill_matches_uninterrupted(tmp_path, one_thread):
    hazy, clear, _ = corrupted_pairs(8)
    config = BILD(alpha=1.0, lr=0.01)

    def run(folder, steps_before_kill=None):
        torch.manual_seed(0)
        model = build_backbone("aod_net", "tiny")

        class Killed(Exception):
            pass

        def progress(done, total, info):
            if done == steps_before_kill:
                raise Killed

        try:
            _, _, stepper = config.pretrain(model, hazy, clear, steps=12, lr=2e-3, batch_size=4, patch_size=16,
                                            seed=0, state_path=folder / "state.pt", checkpoint_every=5,
                                            progress=progress)
        except Killed:
            return None
        return model, stepper

    model, stepper = run(tmp_path / "a")
    assert run(tmp_path / "b", steps_before_kill=7) is None
    saved = torch.load(tmp_path / "b" / "state.pt", weights_only=False)
    assert saved["step"] == 5 and "reweighter_model" in saved and "reweighter_optimiser" in saved
    resumed, resumed_stepper = run(tmp_path / "b")
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    for a, b in zip(stepper.reweighter.state_dict().values(), resumed_stepper.reweighter.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_training_objective_holds_nothing_out():
    hazy, clear, _ = corrupted_pairs(10)
    model = build_backbone("aod_net", "tiny")
    common = dict(steps=1, lr=1e-3, batch_size=2, patch_size=16, strategy=Strategy("cpu"))
    val = BILD(objective="validation").stepper(model, hazy, clear, **common)
    assert (len(val.hazy), len(val.outer_hazy)) == (9, 1)
    both = BILD(objective="training").stepper(model, hazy, clear, **common)
    assert (len(both.hazy), len(both.outer_hazy), both.summary()["pairs_held_out"]) == (10, 10, 0)


TWO_RANK_SCRIPT = """
import sys, torch
from harness.engine.strategy import DataParallel, Strategy
from harness.models import build_backbone
from harness.pretrain.bild import BILD
from harness.engine.loop import TrainLoop
from harness.launch.distributed import rank_world
g = torch.Generator().manual_seed(0)
clear = [torch.rand(3, 20, 20, generator=g) for _ in range(6)]
hazy = [0.7 * c + 0.3 for c in clear]
rank, world = rank_world()
strategy = DataParallel(torch.device("cpu")) if world > 1 else Strategy("cpu")
torch.manual_seed(0)
model = build_backbone("aod_net", "tiny")
stepper = BILD(alpha=0.5, lr=0.01, reward=sys.argv[2]).stepper(model, hazy, clear, steps=3, lr=1e-2, batch_size=4,
                                                             patch_size=16, strategy=strategy)
TrainLoop("pretraining", 3, sys.argv[1] + f".state{rank}", seed=0, strategy=strategy).run(stepper)
if rank == 0:
    torch.save({"model": model.state_dict(), "reweighter": stepper.reweighter.state_dict()}, sys.argv[1])
"""


@pytest.mark.slow  # ~45 s each: three processes start torch
@pytest.mark.parametrize("reward", ["raw", "standardised"])
def test_two_ranks_train_what_one_process_trains(tmp_path, reward):
    script = tmp_path / "bild2.py"
    script.write_text(TWO_RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), reward], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "two.pt"), reward], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=1e-5, msg=name)
    # f_w is compared by the weights it gives: directions that shift every logit alike change no
    # weight, get float-noise gradients, and Adam's ~lr * sign steps move them apart in the two runs
    g = torch.Generator().manual_seed(5)
    probe = [torch.rand(8, 3, 16, 16, generator=g) for _ in range(2)]
    weights = []
    for state in (a, b):
        net = Reweighter()
        net.load_state_dict(state["reweighter"])
        with torch.no_grad():
            weights.append(batch_weights(net(*probe)))
    spread = (weights[0] - 1).abs().max()
    assert spread > 1e-3  # the outer step did move the weights
    # measured: the two runs differ by 0.02 % (raw) and 2.5 % (standardised: dividing by the batch's std
    # amplifies float noise) of the spread; a per-rank std instead of the global one gives 117 %
    assert (weights[0] - weights[1]).abs().max() < 0.1 * spread


# ------------------------------------------------------------------ the recipe and runner hook

def recipe_dict(tmp_path, reweight):
    pretrain = {"type": "synthetic", "source": "skimage", "kind": "nonuniform", "count": 6, "size": 48, "seed": 0}
    if reweight is not None:
        pretrain["reweight"] = reweight
    return {
        "name": "bild", "out": str(tmp_path / "run"), "device": "cpu",
        "backbones": [{"type": "aod_net", "variant": "tiny"}],
        "pretrain": [pretrain],
        "target": [{"type": "synthetic", "source": "skimage", "kind": "nonuniform", "count": 2, "size": 32, "seed": 1}],
        "benchmarks": [{"type": "synthetic", "label": "test", "source": "skimage", "kind": "nonuniform", "count": 2,
                        "size": 48, "seed": 2}],
        "metrics": ["psnr"],
        "budget": {"pretrain_steps": 6, "batch_size": 4, "patch_size": 16, "checkpoint_every": 3},
        "methods": [{"type": "none"}],
    }


def test_recipe_accepts_reweight_and_keys_the_pretraining_by_it(tmp_path):
    plain = expand(load_recipe(write(tmp_path, recipe_dict(tmp_path, None)), check_paths=False))[0]
    spec = {"type": "bild", "alpha": "1e-2", "lr": 0.1, "val_fraction": 0.1, "objective": "validation"}
    bild = expand(load_recipe(write(tmp_path, recipe_dict(tmp_path, spec)), check_paths=False))[0]
    ablation = expand(load_recipe(write(tmp_path, recipe_dict(tmp_path, {**spec, "objective": "training"})),
                                  check_paths=False))[0]
    assert len({plain.pretrain_id, bild.pretrain_id, ablation.pretrain_id}) == 3
    assert bild.pretrain["reweight"]["alpha"] == 0.01  # typed: YAML's "1e-2" string became a float
    assert "reweight" not in dataset_spec(bild.pretrain) and dataset_spec(bild.pretrain) == plain.pretrain
    assert bild.labels["pretrain"] == "synthetic+bild" and plain.labels["pretrain"] == "synthetic"


@pytest.mark.parametrize("reweight,message", [
    ({"type": "bild", "alpah": 1}, "unknown key 'pretrain[0].reweight.alpah' for reweighting 'bild'"),
    ({"type": "bild", "val_fraction": 1.5}, "val_fraction must be in (0, 1)"),
    ({"type": "bild", "objective": "test"}, "bad value for 'pretrain[0].reweight.objective'"),
    ({"type": "mwn"}, "unknown reweighting 'mwn' in pretrain[0].reweight"),
    ("bild", "pretrain[0].reweight must be a mapping with a type"),
])
def test_bad_reweight_is_one_line_naming_the_key(tmp_path, reweight, message):
    path = write(tmp_path, recipe_dict(tmp_path, reweight))
    with pytest.raises(HarnessError) as err:
        load_recipe(path, check_paths=False)
    text = str(err.value)
    assert message in text and "\n" not in text
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.strip().startswith("reweight:"))
    assert f"r.yaml:{line}" in text


def test_runner_pretrains_with_bild_and_deploys_the_backbone_alone(tmp_path, one_thread):
    from harness.runner import run as run_recipe

    spec = {"type": "bild", "alpha": 1.0, "lr": 0.01, "val_fraction": 0.2}
    recipe = load_recipe(write(tmp_path, recipe_dict(tmp_path, spec)))
    run_recipe(recipe, tmp_path / "run")
    record = json.loads(next((tmp_path / "run" / "cells").glob("*.json")).read_text())
    run = tmp_path / "run"
    for key in ("reweighter", "patch_weights", "patch_weights_figure"):
        assert (run / record["artifacts"][key]).is_file()
    weights = json.loads((run / record["artifacts"]["patch_weights"]).read_text())
    first = torch.tensor(weights["images"][0]["weights"])
    assert first.shape == (3, 3) and first.mean().item() == pytest.approx(1.0, abs=1e-5)
    deployed = set(json.loads(Path(str(run / record["artifacts"]["pretrained"]) + ".json").read_text()))
    assert {"reweight", "artifacts"} <= deployed
    from safetensors.torch import load_file

    keys = set(load_file(run / record["artifacts"]["pretrained"]))
    assert keys == set(build_backbone("aod_net", "tiny").state_dict())  # no reweighter inside
    assert record["cell"]["pretrain"]["reweight"]["type"] == "bild"
    assert math.isfinite(record["metrics"]["test"]["psnr"])  # scored; 6 steps train nothing worth a range


def test_registry_builds_bild_with_documented_defaults():
    config = REWEIGHTS.build("bild")  # the paper's split, objective and reward; the outer lr is 0.01, not 0.1
    assert (config.lr, config.val_fraction, config.objective, config.reward) == (0.01, 0.1, "validation", "raw")


# ------------------------------------------------------------------ the benchmark scripts run (nothing timed)

def test_step_cost_benchmark_runs(one_thread):
    from tests.test_benchmarks_smoke import _load

    out = _load("bild_step_cost").main(["--backbones", "aod_net", "--batch", "2", "--patch", "16", "--repeats", "1"])
    ratios = out["ratios"]["aod_net"]
    assert set(ratios) == {"a", "b", "j", "e"} and all(math.isfinite(v) and v > 0 for v in ratios.values())


@pytest.mark.slow  # ~18 s: renders the 48 Kodak pairs
def test_nonuniform_study_runs_end_to_end(tmp_path, shared_data, one_thread):
    from tests.test_benchmarks_smoke import _load

    out = _load("bild_nonuniform").main(["--out", str(tmp_path), "--models", "aod_net", "--methods", "l1,bild",
                                         "--seeds", "0", "--steps", "3", "--batch", "2", "--patch", "32"])
    bild = next(r for r in out["results"] if r["method"] == "bild")
    assert bild["bild"]["tiles"] == 32 * 16 and not math.isnan(bild["bild"]["spearman_weight_density"])
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "grid_aod_net.png").is_file()


def test_replayed_rng_repeats_the_draws_and_leaves_the_stream_alone():
    torch.manual_seed(0)
    snapshot = rng_snapshot(torch.device("cpu"))
    first = torch.rand(3)
    with replayed_rng(snapshot):
        again = torch.rand(3)
    after = torch.rand(3)
    torch.manual_seed(0)
    torch.rand(3)
    assert torch.equal(first, again) and torch.equal(after, torch.rand(3))
