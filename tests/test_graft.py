"""The grafting analysis: one adapted block copied into the pretrained model, run as recipe cells."""

import pytest
import torch
import yaml

from harness.adapt.base import AdaptJob
from harness.adapt.graft import graft
from harness.errors import HarnessError
from harness.models import build_backbone
from harness import runner
from harness.plan import build_plan, expand
from harness.validate import load_recipe
from harness.stages import adapt, pretrain
from tests.test_run import TINY

BLOCKS = ["level3_block1", "down_level1_block2"]


def changed(a: torch.nn.Module, b: torch.nn.Module) -> set[str]:
    sa, sb = a.state_dict(), b.state_dict()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def test_graft_copies_exactly_the_group_parameters(tmp_path):
    torch.manual_seed(0)
    base = build_backbone("dea_net", "tiny").deploy()
    source = build_backbone("dea_net", "tiny").deploy()
    source.load_state_dict({k: v + 0.5 for k, v in base.state_dict().items()})  # every value differs
    pristine = {k: v.clone() for k, v in base.state_dict().items()}
    job = AdaptJob(model=base, train_images=[], val_images=[], loss_fn=None, batch_size=1, patch_size=8,
                   workdir=tmp_path, source_model=source)
    result = graft(site="level3_block1", source={"type": "full_ft"}).run(job)
    moved = {k for k, v in result.model.state_dict().items() if not torch.equal(v, pristine[k])}
    # the whole block: its two LoRA sites and its attention (item 5: not only conv1/conv2)
    block = {k for k in pristine if k.startswith("level3_block1.")}
    assert {k.split(".")[1] for k in block} == {"conv1", "conv2", "sa", "ca", "pa"}  # CGA attention included
    assert moved == block and any(".conv" not in k for k in moved)
    for key in moved:
        assert torch.equal(result.model.state_dict()[key], source.state_dict()[key])
    params = dict(base.named_parameters())
    assert result.info["grafted_params"] == sum(params[k].numel() for k in moved if k in params)
    assert result.info["grafted_modules"] == ["level3_block1"]
    with pytest.raises(HarnessError, match="matches no site group"):
        graft(site="no_such_block", source={"type": "full_ft"}).run(job)


def recipe_file(tmp_path, methods):
    path = tmp_path / "graft.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, methods=methods, out=str(tmp_path / "run"))))
    return path


def test_graft_source_is_validated_like_a_method(tmp_path):
    good = recipe_file(tmp_path, [{"type": "graft", "source": {"type": "full_ft", "steps": "4", "lr": "1e-4"},
                                   "sweep": {"site": BLOCKS}}])
    cells = expand(load_recipe(good))
    assert [c.labels["method"] for c in cells] == [f"graft[site={b}]" for b in BLOCKS]
    assert cells[0].method["source"] == {"type": "full_ft", "steps": 4, "lr": 1e-4}  # typed
    for source, message in [({"type": "full_fine"}, "unknown method 'full_fine'"),
                            ({"type": "full_ft", "step": 4}, "unknown key 'methods\\[0\\].source.step'")]:
        bad = recipe_file(tmp_path, [{"type": "graft", "site": "level3_block1", "source": source}])
        with pytest.raises(HarnessError, match=message):
            load_recipe(bad)
    with pytest.raises(HarnessError, match="sweep 'site' of methods\\[0\\] lists no values"):
        load_recipe(recipe_file(tmp_path, [{"type": "graft", "source": {"type": "full_ft"}, "sweep": {"site": []}}]))


@pytest.mark.slow  # a whole run: pretraining, the embedded guide, full FT, two grafts, scoring
def test_graft_cells_reuse_the_source_adaptation_and_differ_from_base_only_in_their_block(tmp_path):
    full_ft = {"type": "full_ft", "steps": 3}
    recipe = load_recipe(recipe_file(tmp_path, [{"type": "none"}, full_ft,
                                                {"type": "graft", "source": full_ft, "sweep": {"site": BLOCKS}}]))
    summary = runner.run(recipe, tmp_path / "run")
    assert sum(t.startswith("score:") for t in summary.ran) == 4
    # the graft source is the full_ft cell's own adaptation: trained once, not three times
    assert len(list((tmp_path / "run" / "adapted").glob("*/model.safetensors"))) == 4  # none, full_ft, 2 grafts
    ctx = runner.context(build_plan(recipe), tmp_path / "run")
    cells = {c.labels["method"]: c for c in ctx.plan.cells}
    base = pretrain.load(cells["none"].pretrain_id, cells["none"].backbone, ctx)
    tuned, _ = adapt.load(cells["full_ft"].adapt_id, cells["full_ft"].backbone, ctx)
    assert len(changed(base, tuned)) > 10
    for block in BLOCKS:
        cell = cells[f"graft[site={block}]"]
        grafted, meta = adapt.load(cell.adapt_id, cell.backbone, ctx)
        diff = changed(base, grafted)
        assert diff and diff == {k for k in changed(base, tuned) if k.startswith(f"{block}.")}
        donor, got = tuned.state_dict(), grafted.state_dict()
        whole = [k for k in donor if k.startswith(f"{block}.")]
        assert all(torch.equal(got[k], donor[k]) for k in whole)  # every key of the block, moved or not
        if block.startswith("level3"):  # DEA-Net's level-3 blocks carry CGA attention (level 1-2 blocks do not)
            assert {k.split(".")[1] for k in whole} == {"conv1", "conv2", "sa", "ca", "pa"}
        assert meta["info"]["grafted_groups"] == [block]
    grafts = [r for r in ctx.store.records() if r["cell"]["method"]["type"] == "graft"]
    assert sorted(r["method_info"]["grafted_groups"][0] for r in grafts) == sorted(BLOCKS)
    assert all(r["efficiency"]["params_trainable"] == 0 for r in grafts)
