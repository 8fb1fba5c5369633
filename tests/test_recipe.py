"""Recipe validation errors and grid expansion."""

from pathlib import Path

import pytest
import yaml

from harness.errors import HarnessError
from harness.plan import expand
from harness.recipe import apply_overrides, load_recipe

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def write(tmp_path: Path, data: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


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
    new_metric = dict(base, metrics=base["metrics"] + ["psnr"][:0] + [{"type": "ssim", "label": "ssim2"}])
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
