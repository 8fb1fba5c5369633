"""The plan: pure grid expansion, the cache-key policy of each stage, and the task graph."""

from pathlib import Path

import pytest
import yaml

from tests.recipe_files import write
from harness.errors import HarnessError
from harness.plan import build_plan, expand
from harness.recipe import apply_overrides
from harness.validate import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture
def base() -> dict:
    return yaml.safe_load((RECIPES / "quickstart.yaml").read_text())


def cells_of(tmp_path, data, name="r.yaml"):
    return {c.labels["method"]: c for c in expand(load_recipe(write(tmp_path, data, name)))}


def changed(data: dict, *overrides: str) -> dict:
    return apply_overrides(yaml.safe_load(yaml.safe_dump(data)), list(overrides))


def test_quickstart_expands_to_one_cell_per_method_sharing_one_pretraining(base, tmp_path):
    cells = expand(load_recipe(write(tmp_path, base)))
    assert [c.labels["method"] for c in cells] == ["pretrained", "full_ft", "manual_lora", "bilalora"]
    assert len({c.id for c in cells}) == 4 and len({c.pretrain_id for c in cells}) == 1


def test_expansion_is_a_pure_product_with_stable_ids(base, tmp_path):
    base["seeds"] = [0, 1, 2]
    base["methods"][3]["sweep"] = {"top_k": [1, 2, 3]}
    cells = expand(load_recipe(write(tmp_path, base)))
    assert len(cells) == (3 + 3) * 3 and [c.index for c in cells] == list(range(len(cells)))
    again = expand(load_recipe(write(tmp_path, base, "again.yaml")))
    assert [c.id for c in cells] == [c.id for c in again]
    sweep = [c for c in cells if c.method["type"] == "bilalora" and c.seed == 0]
    assert [c.method["top_k"] for c in sweep] == [1, 2, 3] and sweep[0].labels["method"] == "bilalora[top_k=1]"


def test_seeds_of_one_configuration_share_a_group_and_nothing_else(base, tmp_path):
    base["seeds"] = [0, 1]
    cells = expand(load_recipe(write(tmp_path, base)))
    by_group: dict[str, list] = {}
    for c in cells:
        by_group.setdefault(c.group_id, []).append(c)
    assert len(by_group) == 4 and all(sorted(c.seed for c in g) == [0, 1] for g in by_group.values())
    assert all(len({c.id for c in g}) == 2 for g in by_group.values())


def test_labels_change_no_id(base, tmp_path):
    before = cells_of(tmp_path, base)
    relabelled = dict(base, methods=[dict(m, label=f"x{i}") for i, m in enumerate(base["methods"])])
    after = expand(load_recipe(write(tmp_path, relabelled, "b.yaml")))
    assert {c.id for c in after} == {c.id for c in before.values()}


def test_a_method_parameter_reruns_that_method_only(base, tmp_path):
    before = cells_of(tmp_path, base)
    after = cells_of(tmp_path, changed(base, "methods.1.steps=61"), "b.yaml")
    assert after["full_ft"].adapt_id != before["full_ft"].adapt_id
    assert after["full_ft"].pretrain_id == before["full_ft"].pretrain_id
    assert all(after[m].id == before[m].id for m in ("pretrained", "manual_lora", "bilalora"))


def test_a_new_metric_rescores_without_retraining(base, tmp_path):
    before = cells_of(tmp_path, base)
    after = cells_of(tmp_path, dict(base, metrics=base["metrics"] + [{"type": "ssim", "label": "ssim_y", "y_channel": True}]),
                     "b.yaml")
    assert after["bilalora"].id != before["bilalora"].id
    assert after["bilalora"].adapt_id == before["bilalora"].adapt_id


def test_a_new_sanity_metric_rescores_without_retraining(base, tmp_path, monkeypatch):
    """Records scored before a sanity metric existed lack it: the cell id follows the set."""
    from harness.metrics import sanity

    now = cells_of(tmp_path, base)
    monkeypatch.setattr(sanity, "SANITY_METRICS", sanity.SANITY_METRICS[:-1])
    earlier = cells_of(tmp_path, base, "b.yaml")
    assert now["bilalora"].id != earlier["bilalora"].id
    assert now["bilalora"].adapt_id == earlier["bilalora"].adapt_id


def test_a_channels_last_backbone_pretrains_under_its_own_key(base, tmp_path, monkeypatch):
    """AOD-Net restores in NHWC on the CPU: another summation order than its NCHW checkpoints had,
    so they are not reused."""
    from dataclasses import replace

    from harness.models import BACKBONE_CARDS

    now = cells_of(tmp_path, base)
    card = BACKBONE_CARDS["aod_net"]
    assert card.channels_last
    monkeypatch.setitem(BACKBONE_CARDS, "aod_net", replace(card, channels_last=False))
    nchw = cells_of(tmp_path, base, "b.yaml")
    assert now["bilalora"].pretrain_id != nchw["bilalora"].pretrain_id


def test_the_adaptation_budget_never_retrains_the_pretraining(base, tmp_path):
    """Issue 8 item 9: each stage has its own budget and key."""
    before = cells_of(tmp_path, base)
    after = cells_of(tmp_path, changed(base, "budget.adapt.batch_size=4", "budget.adapt.patch_size=32"), "b.yaml")
    assert after["bilalora"].pretrain_id == before["bilalora"].pretrain_id
    assert after["bilalora"].adapt_id != before["bilalora"].adapt_id
    longer = cells_of(tmp_path, changed(base, "budget.pretrain.steps=7"), "c.yaml")
    assert longer["bilalora"].pretrain_id != before["bilalora"].pretrain_id


def test_the_guide_matters_only_to_methods_that_use_a_loss(base, tmp_path):
    before = cells_of(tmp_path, base)
    after = cells_of(tmp_path, changed(base, "guide.negative=a foggy photo"), "b.yaml")
    assert after["pretrained"].id == before["pretrained"].id  # `none` trains nothing with the guide
    assert after["bilalora"].adapt_id != before["bilalora"].adapt_id


def test_h2c_distance_and_target_shrinking_change_adaptation_keys_only_when_set(base, tmp_path):
    """Off (0 / unset) they leave every key as it was, so results adapted before they existed stay valid."""
    base["guide"] = {"type": "embedded"}
    before = cells_of(tmp_path, base)
    off = cells_of(tmp_path, changed(base, "guide.distance_weight=0"), "b.yaml")
    assert {m: c.id for m, c in off.items()} == {m: c.id for m, c in before.items()}
    distance = cells_of(tmp_path, changed(base, "guide.distance_weight=2"), "c.yaml")
    shrunk = cells_of(tmp_path, changed(base, "budget.adapt.max_side=128"), "d.yaml")
    for on in (distance, shrunk):
        assert on["bilalora"].adapt_id != before["bilalora"].adapt_id
        assert on["bilalora"].pretrain_id == before["bilalora"].pretrain_id
    assert distance["pretrained"].id == before["pretrained"].id  # the guide reaches only methods with a loss


def test_tasks_are_shared_and_ordered_by_dependency(base, tmp_path):
    base["seeds"] = [0, 1]
    plan = build_plan(load_recipe(write(tmp_path, base)))
    kinds = [t.kind for t in plan.tasks.values()]
    assert kinds.count("pretrain") == 2 and kinds.count("adapt") == 8 and kinds.count("score") == 8
    levels = plan.levels()
    assert [sorted({t.kind for t in level}) for level in levels] == [["pretrain"], ["adapt"], ["score"]]
    seen: set[str] = set()
    for task in plan.tasks.values():
        assert set(task.deps) <= seen
        seen.add(task.id)
    pretrain = next(t for t in plan.tasks.values() if t.kind == "pretrain")
    assert len(pretrain.cells) == 4  # one checkpoint serves the four methods of its seed


def test_a_graft_depends_on_its_source_adaptation_and_its_key_follows_the_source(tmp_path):
    data = yaml.safe_load((RECIPES / "analysis.yaml").read_text())
    plan = build_plan(load_recipe(write(tmp_path, data)))
    grafts = [t for t in plan.tasks.values() if t.kind == "adapt" and t.spec["method"]["type"] == "graft"]
    assert grafts and all(len(t.deps) == 2 for t in grafts)
    source = plan.tasks[grafts[0].deps[1]]
    assert source.spec["method"]["type"] == "full_ft"
    # the graft source is the same task as the recipe's own full_ft cell (shared, trained once)
    assert sum(t.kind == "adapt" and t.spec["method"]["type"] == "full_ft" for t in plan.tasks.values()) == 1
    # pretrain -> the full_ft (and other) adaptations -> the graft, after its source -> scores
    level = {t.id: i for i, lvl in enumerate(plan.levels()) for t in lvl}
    graft_level, source_level = {level[g.id] for g in grafts}, level[source.id]
    assert len(plan.levels()) == 4 and source_level == 1 and graft_level == {2}
    longer = build_plan(load_recipe(write(tmp_path, changed(data, "methods.3.source.steps=61"), "b.yaml")))
    assert not {t.key for t in longer.tasks.values() if t.spec.get("method", {}).get("type") == "graft"} & \
        {t.key for t in grafts}


def test_an_unknown_force_stage_is_a_clear_error(base, tmp_path):
    from harness.runner import force

    with pytest.raises(HarnessError, match="unknown --force stage 'train'"):
        force(build_plan(load_recipe(write(tmp_path, base))), tmp_path, "train", None)
