"""Recipe validation errors and grid expansion."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.recipe_files import write
from harness.errors import HarnessError
from harness.plan import expand
from harness.recipe import apply_overrides
from harness.validate import load_recipe

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


@pytest.fixture
def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


@pytest.fixture
def dea_base(base) -> dict:
    """The quickstart with the tiny DEA-Net (the paper's baseline) on ITS-range haze."""
    base["backbones"] = [{"type": "dea_net", "variant": "tiny"}]
    base["pretrain"][0].update(label="asm", kind="asm")
    base["methods"][2]["sites"] = ["level3_block1", "level3_block2"]
    return base


def test_quickstart_expands_to_one_cell_per_method(base, tmp_path):
    recipe = load_recipe(write(tmp_path, base))
    cells = expand(recipe)
    assert [c.labels["method"] for c in cells] == ["pretrained", "full_ft", "manual_lora", "bilalora"]
    assert len({c.id for c in cells}) == 4
    # all methods share the pretrained checkpoint
    assert len({c.pretrain_id for c in cells}) == 1


def test_expansion_is_a_pure_product_with_stable_ids(base, tmp_path):
    base["seeds"] = [0, 1, 2]
    base["backbones"].append({"type": "dea_net", "variant": "tiny", "label": "second", "width": 1})  # unknown param
    with pytest.raises(HarnessError, match="width"):
        load_recipe(write(tmp_path, base))
    base["backbones"].pop()
    base["methods"][3]["sweep"] = {"top_k": [1, 2, 3]}
    recipe = load_recipe(write(tmp_path, base))
    cells = expand(recipe)
    assert len(cells) == 1 * 1 * 1 * (3 + 3) * 3
    assert [c.index for c in cells] == list(range(len(cells)))
    again = expand(load_recipe(write(tmp_path, base, "again.yaml")))
    assert [c.id for c in cells] == [c.id for c in again]
    sweep = [c for c in cells if c.method["type"] == "bilalora" and c.seed == 0]
    assert [c.method["top_k"] for c in sweep] == [1, 2, 3]
    assert sweep[0].labels["method"] == "bilalora[top_k=1]"


def test_ids_change_with_what_changes_results_only(base, tmp_path):
    ids = {c.labels["method"]: c for c in expand(load_recipe(write(tmp_path, base)))}
    relabelled = dict(base, methods=[dict(m, label=f"x{i}") for i, m in enumerate(base["methods"])])
    assert {c.id for c in expand(load_recipe(write(tmp_path, relabelled)))} == {c.id for c in ids.values()}
    more_steps = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), ["methods.1.steps=61"])
    changed = {c.labels["method"]: c for c in expand(load_recipe(write(tmp_path, more_steps)))}
    assert changed["full_ft"].id != ids["full_ft"].id
    assert changed["bilalora"].id == ids["bilalora"].id
    new_metric = dict(base, metrics=base["metrics"] + [{"type": "ssim", "label": "ssim_y", "y_channel": True}])
    rescored = {c.labels["method"]: c for c in expand(load_recipe(write(tmp_path, new_metric)))}
    # a new metric re-scores (new cell id) without retraining (same adapt id)
    assert rescored["bilalora"].id != ids["bilalora"].id
    assert rescored["bilalora"].adapt_id == ids["bilalora"].adapt_id
    pretrain_longer = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), ["budget.pretrain_steps=7"])
    longer = expand(load_recipe(write(tmp_path, pretrain_longer)))
    assert longer[0].pretrain_id != ids["pretrained"].pretrain_id


def test_typo_key_names_key_and_line(base, tmp_path):
    text = QUICKSTART.read_text().replace("pretrain_steps:", "pretrain_stpes:")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "pretrain_stpes" in l)
    with pytest.raises(HarnessError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"typo.yaml:{line}" in msg and "budget.pretrain_stpes" in msg and "\n" not in msg


def test_unknown_method_param_and_wrong_type(base, tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(base))
    bad["methods"][3]["rnak"] = 4
    with pytest.raises(HarnessError, match=r"unknown key 'methods\[3\]\.rnak'"):
        load_recipe(write(tmp_path, bad))
    bad = yaml.safe_load(yaml.safe_dump(base))
    bad["budget"]["batch_size"] = "eight"
    with pytest.raises(HarnessError, match="budget.batch_size"):
        load_recipe(write(tmp_path, bad))
    bad = yaml.safe_load(yaml.safe_dump(base))
    bad["methods"][0]["type"] = "bilora"
    with pytest.raises(HarnessError, match="unknown method 'bilora'.*bilalora"):
        load_recipe(write(tmp_path, bad))


def test_missing_dataset_folder_fails_before_work(base, tmp_path):
    base["benchmarks"] = [{"type": "rtts", "root": str(tmp_path / "nowhere")}]
    with pytest.raises(HarnessError, match=r"benchmarks\[0\]\.root folder .*nowhere does not exist"):
        load_recipe(write(tmp_path, base))


def test_overrides_parse_yaml_values():
    data = {"budget": {"batch_size": 8}, "methods": [{"type": "none"}, {"type": "full_ft", "lr": 1.0}]}
    apply_overrides(data, ["budget.batch_size=4", "methods.1.lr=1e-3", "seeds=[1, 2]"])
    assert data["budget"]["batch_size"] == 4 and data["methods"][1]["lr"] == 1e-3 and data["seeds"] == [1, 2]
    with pytest.raises(HarnessError, match="index"):
        apply_overrides(data, ["methods.5.lr=1"])
    with pytest.raises(HarnessError, match="key.path=value"):
        apply_overrides(data, ["budget.batch_size"])


def test_scientific_notation_becomes_numbers(base, tmp_path):
    base["methods"][1]["lr"] = "1e-4"  # what YAML 1.1 makes of `lr: 1e-4`
    recipe = load_recipe(write(tmp_path, base))
    assert recipe.methods[1].params["lr"] == 1e-4
    assert expand(recipe)[1].method["lr"] == 1e-4


# ---------------------------------------------------------------- validation before any work (issue 9)


def _method(base: dict, i: int, **changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(base))
    data["methods"][i].update(changes)
    return data


def test_search_without_gate_updates_is_rejected(base, tmp_path):
    """Failure 4: search_steps <= warmup_steps never updates a gate; the search 'keeps' the first sites."""
    for search, warmup in ((5, 5), (3, 10)):
        with pytest.raises(HarnessError, match=rf"search_steps={search} is not above warmup_steps={warmup}"):
            load_recipe(write(tmp_path, _method(base, 3, search_steps=search, warmup_steps=warmup)))
    swept = _method(base, 3, warmup_steps=5, sweep={"search_steps": [20, 5]})  # one swept cell is bad
    with pytest.raises(HarnessError, match=r"methods\[3\]\.sweep.*search_steps=5 is not above"):
        load_recipe(write(tmp_path, swept))
    load_recipe(write(tmp_path, _method(base, 3, search_steps=6, warmup_steps=5)))  # one update: accepted


@pytest.mark.parametrize("index,key,value,expected", [
    (3, "finetune_steps", -4, "greater than or equal to 1"),  # failure 7: was accepted and recorded
    (1, "steps", 0, "greater than or equal to 1"),
    (3, "rank", 0, "greater than or equal to 1"),
    (2, "rank", -2, "greater than or equal to 1"),
    (1, "lr", -1e-4, "greater than 0"),
    (1, "lr", float("nan"), "finite number"),
    (3, "gate_lr", float("inf"), "finite number"),
    (3, "warmup_steps", -1, "greater than or equal to 0"),
    (2, "alpha", 0, "greater than 0"),
])
def test_every_step_count_rank_and_lr_is_validated(base, tmp_path, index, key, value, expected):
    with pytest.raises(HarnessError, match=rf"methods\[{index}\]\.{key}.*{expected}"):
        load_recipe(write(tmp_path, _method(base, index, **{key: value})))


def test_top_k_and_sites_are_checked_against_the_backbones_candidate_groups(dea_base, tmp_path):
    """DEA-Net tiny has 8 candidate groups (4 + 4 blocks, the paper's grouping at tiny width)."""
    with pytest.raises(HarnessError, match=r"top_k=99 but backbone dea_net-tiny has 8 candidate.*at most 8"):
        load_recipe(write(tmp_path, _method(dea_base, 3, top_k=99)))
    with pytest.raises(HarnessError, match=r"top_k=3 but backbone dea_net-tiny has 2 candidate"):
        load_recipe(write(tmp_path, _method(dea_base, 3, top_k=3, sites=["level3_block1", "level3_block2"])))
    with pytest.raises(HarnessError, match=r"backbone dea_net-tiny: LoRA site pattern 'level9\*' matches no"):
        load_recipe(write(tmp_path, _method(dea_base, 2, sites=["level9*"])))
    # every backbone of the recipe: AOD-Net has 5 groups, so top_k 6 fails there only
    two = _method(dea_base, 3, top_k=6)
    two["backbones"].append({"type": "aod_net", "variant": "tiny"})
    with pytest.raises(HarnessError, match=r"methods\[2\]: backbone aod_net-tiny: .*'level3_block1' matches no"):
        load_recipe(write(tmp_path, two))  # manual_lora's DEA-Net sites do not exist on AOD-Net
    two["methods"].pop(2)
    with pytest.raises(HarnessError, match=r"backbone aod_net-tiny has 5"):
        load_recipe(write(tmp_path, two))
    load_recipe(write(tmp_path, _method(dea_base, 3, top_k=8)))


def test_unknown_variant_and_bad_synthetic_parameters_fail_at_validation(dea_base, tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(dea_base))
    bad["backbones"][0]["variant"] = "huge"
    with pytest.raises(HarnessError, match=r"backbones\[0\]: unknown dea_net variant 'huge'.*full, tiny"):
        load_recipe(write(tmp_path, bad))
    for key, value, expected in (("kind", "fog", "'asm', 'ridcp'"), ("count", 0, "at least 1"), ("size", 8, "16")):
        bad = yaml.safe_load(yaml.safe_dump(dea_base))
        bad["target"][0][key] = value
        with pytest.raises(HarnessError, match=rf"target\[0\]\.{key}.*{expected}"):
            load_recipe(write(tmp_path, bad))


def test_duplicate_labels_and_entries_are_refused(base, tmp_path):
    """Failure 8: two differently configured methods with one label were merged into one report row."""
    same_label = yaml.safe_load(yaml.safe_dump(base))
    full_ft = next(m for m in base["methods"] if m["type"] == "full_ft")
    same_label["methods"].append({**full_ft, "steps": 120})  # label 'full_ft' again, other steps
    with pytest.raises(HarnessError,
                       match=r"methods\[4\] and methods\[1\] .* share the label 'full_ft' but differ in steps"):
        load_recipe(write(tmp_path, same_label))
    relabelled = yaml.safe_load(yaml.safe_dump(same_label))
    relabelled["methods"][4]["label"] = "full_ft-120"
    assert len(expand(load_recipe(write(tmp_path, relabelled)))) == 5
    repeated = yaml.safe_load(yaml.safe_dump(base))
    repeated["methods"].append(dict(repeated["methods"][3], label="again"))  # same spec, another label
    with pytest.raises(HarnessError, match=r"methods\[4\] repeats methods\[3\]"):
        load_recipe(write(tmp_path, repeated))
    sweep_twice = _method(base, 3, sweep={"top_k": [1, 2, 1]})
    with pytest.raises(HarnessError, match=r"'bilalora\[top_k=1\]' and 'bilalora\[top_k=1\]' give the same cell"):
        load_recipe(write(tmp_path, sweep_twice))
    two_benchmarks = yaml.safe_load(yaml.safe_dump(base))
    two_benchmarks["benchmarks"].append(dict(two_benchmarks["benchmarks"][0], seed=5))  # label 'nonuniform-test'
    with pytest.raises(HarnessError, match=r"benchmarks\[1\] and benchmarks\[0\].*share the label"):
        load_recipe(write(tmp_path, two_benchmarks))


def test_duplicate_yaml_key_names_both_lines(tmp_path):
    text = QUICKSTART.read_text().replace("  batch_size: 8\n", "  batch_size: 8\n  batch_size: 2\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    first = next(i for i, l in enumerate(text.splitlines(), 1) if "batch_size: 8" in l)
    with pytest.raises(HarnessError, match=rf"dup.yaml:{first + 1}: key 'budget.batch_size' is given twice "
                                           rf"\(first on line {first}\)"):
        load_recipe(path)


def test_name_must_not_be_a_path(base, tmp_path):
    for name in ("../../escape", "a/b", ".hidden", ""):
        with pytest.raises(HarnessError, match=r"bad value for 'name'"):
            load_recipe(write(tmp_path, dict(base, name=name)))
    assert load_recipe(write(tmp_path, dict(base, name="study-2.v1_b"))).run_dir() == Path("results/study-2.v1_b")


def test_top_level_on_corrupt_becomes_every_datasets_default(base, tmp_path):
    recipe = load_recipe(write(tmp_path, dict(base, on_corrupt="skip")))
    assert all(e.params["on_corrupt"] == "skip" for e in recipe.pretrain + recipe.target + recipe.benchmarks)
    own = yaml.safe_load(yaml.safe_dump(base))
    own["benchmarks"][0]["on_corrupt"] = "fail"
    recipe = load_recipe(write(tmp_path, dict(own, on_corrupt="skip")))
    assert recipe.benchmarks[0].params["on_corrupt"] == "fail" and recipe.target[0].params["on_corrupt"] == "skip"
    # the default ('fail') is not written into the entries, so the cells of existing recipes keep their ids
    assert "on_corrupt" not in load_recipe(write(tmp_path, base)).benchmarks[0].params


def test_a_target_shrunk_below_the_adaptation_patch_is_refused(base, tmp_path):
    bad = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), ["budget.adapt.max_side=64",
                                                                 "budget.adapt.patch_size=96"])
    with pytest.raises(HarnessError, match=r"budget.adapt.max_side=64 is smaller than the adaptation patch size 96"):
        load_recipe(write(tmp_path, bad))
    load_recipe(write(tmp_path, apply_overrides(bad, ["budget.adapt.max_side=96"])))


def test_the_h2c_distance_term_is_refused_with_the_ablation_modes(base, tmp_path):
    data = apply_overrides(yaml.safe_load(yaml.safe_dump(base)), ["guide.distance_weight=2"])
    data["methods"].append({"type": "bilalora", "label": "positive-only", "h2c": {"mode": "positive"}})
    with pytest.raises(HarnessError, match=r"methods\[4\] \(positive-only\) uses the H2C mode 'positive' with the "
                                           r"distance weight 2.*h2c: \{distance_weight: 0\}"):
        load_recipe(write(tmp_path, data))
    data["methods"][4]["h2c"]["distance_weight"] = 0
    assert load_recipe(write(tmp_path, data)).guide.distance_weight == 2


def test_patch_size_larger_than_every_training_image_is_refused(dea_base, tmp_path):
    """The quickstart's pretraining images are 96 px: a 512 px patch would upscale each one 5.3x."""
    bad = yaml.safe_load(yaml.safe_dump(dea_base))
    bad["budget"]["patch_size"] = 512
    with pytest.raises(HarnessError, match=r"pretrain\[0\] \(asm\): budget.patch_size=512 is larger than every "
                                           r"image.*at most 96"):
        load_recipe(write(tmp_path, bad))
    bad["budget"]["patch_size"] = 96
    load_recipe(write(tmp_path, bad))


def test_each_stage_checks_its_own_patch_size_and_the_target_its_shrunk_sizes(base, tmp_path):
    """Target photos 40x120 shrunk to a longer side of 60 are 20x60: a 48 px adaptation patch is larger
    than every one of them; the pretraining's own 512 px patch is named by its own key."""
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 120, 3), 60 * i, np.uint8)).save(folder / f"w{i}.png")
    data = yaml.safe_load(yaml.safe_dump(base))
    data["target"] = [{"type": "folder", "label": "wide", "root": str(folder)}]
    data["budget"]["adapt"] = {"patch_size": 48, "max_side": 60}
    with pytest.raises(HarnessError, match=r"target\[0\] \(wide\): budget.adapt.patch_size=48 is larger than every "
                                           r"image \(after budget.adapt.max_side=60\) \(largest short side 20 px\)"):
        load_recipe(write(tmp_path, data))
    data["budget"]["adapt"] = {"patch_size": 32}  # unshrunk, the photos are 40 px high
    load_recipe(write(tmp_path, data))
    data["budget"]["pretrain"] = {"patch_size": 512}
    with pytest.raises(HarnessError, match=r"pretrain\[0\] \(light\): budget.pretrain.patch_size=512 is larger"):
        load_recipe(write(tmp_path, data))


@pytest.mark.parametrize("override, key, fix", [
    ("guide.adversarial_steps=0", "guide.adversarial_steps", "at least 1"),
    ("guide.align_radius=-0.1", "guide.align_radius", "at least 0"),
    ("guide.rank_weight=-1", "guide.rank_weight", "at least 0"),
    ("guide.cast_weight=-1", "guide.cast_weight", "at least 0"),
    ("guide.blur=-1", "guide.blur", "at least 0"),
    ("guide.blur=11", "guide.blur", "too wide for guide.image_size 32"),
])
def test_embedded_guide_training_options_out_of_range_are_refused_naming_the_key(override, key, fix):
    with pytest.raises(HarnessError) as err:
        load_recipe(QUICKSTART, [override])
    assert key in str(err.value) and fix in str(err.value)


def test_a_guide_option_written_as_an_integer_names_the_same_guide_as_its_float():
    """`guide.cast_weight=1` and `=1.0` train one guide: the recipe keeps the typed value, so the
    weights id (the guide's cache file and what results record) is the float's."""
    from harness.guide import weights_id

    ids = {text: weights_id(r.guide.type, **r.guide.params)
           for text in ("1", "1.0") for r in [load_recipe(QUICKSTART, [f"guide.cast_weight={text}", "guide.steps=3"])]}
    assert ids["1"] == ids["1.0"] == weights_id("embedded", cast_weight=1.0, steps=3)
    assert ids["1"] != weights_id("embedded", steps=3)
