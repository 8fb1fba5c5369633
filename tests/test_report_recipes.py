"""The study recipes reproduce the paper's designs, and `harness doctor RECIPE` says what each still needs."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from harness.doctor import recipe_needs
from harness.validate import load_recipe
from harness.report.baselines import load_baseline
from harness.report.frame import groups_of
from harness.report.tables import ablation_config
from tests.report_fixtures import REPO

from harness.plan import expand

STUDIES = ("cross_model", "cross_domain", "ablation_h2c", "layer_number", "efficiency")


@pytest.mark.parametrize("name", STUDIES)
def test_study_recipes_load_and_adapt_on_images_disjoint_from_the_benchmarks(name):
    spec = load_recipe(REPO / "recipes" / f"{name}.yaml", check_paths=False)
    assert expand(spec)
    (target,) = spec.target
    assert target.type == "folder" and "fade" in str(target.params["root"]).lower()  # FADE's foggy set, not RTTS
    assert target.params["root"] not in {b.params.get("root") for b in spec.benchmarks}
    assert {b.type for b in spec.benchmarks} == {"rtts", "urhi", "fattal"}


def test_ablation_recipe_has_every_configuration_of_the_papers_table3():
    spec = load_recipe(REPO / "recipes" / "ablation_h2c.yaml", check_paths=False)
    records = [{"cell": c.model_dump(), "metrics": {}} for c in expand(spec)]
    ours = sorted(ablation_config(g) for g in groups_of(records))
    paper = load_baseline(REPO / "baselines" / "bilalora_paper.yaml")
    table3 = next(t for t in paper.tables if t["id"] == "table3_ablation")["rows"]
    assert ours == sorted((r["positive"], r["negative"], r["positioning"]) for r in table3)


def test_cross_model_and_layer_number_designs():
    cells = expand(load_recipe(REPO / "recipes" / "cross_model.yaml", check_paths=False))
    assert {c.backbone["type"] for c in cells} == {"dea_net", "msbdn", "convir", "dehamer"}
    assert {c.method["type"] for c in cells} == {"none", "bilalora"}
    sweep = expand(load_recipe(REPO / "recipes" / "layer_number.yaml", check_paths=False))
    assert sorted(c.method.get("top_k", 0) for c in sweep) == [0, 1, 2, 3, 4, 5, 6, 8]


def _recipe(tmp_path: Path, folder: Path) -> Path:
    text = f"""
name: needs
backbones: [{{type: dea_net, variant: tiny}}]
pretrain: [{{type: synthetic, source: skimage, kind: asm, count: 4, size: 32}}]
target: [{{type: folder, root: {folder}}}]
benchmarks: [{{type: fattal, root: {tmp_path / 'no-fattal'}}}]
metrics: [fade, {{type: musiq, weights: {tmp_path / 'musiq.pth'}}}, {{type: biqme, optional: true}}]
guide: {{type: open_clip, model: ViT-B-32, pretrained: {tmp_path / 'clip.safetensors'}}}
methods: [{{type: none}}]
budget: {{patch_size: 32}}
"""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_doctor_recipe_names_each_missing_thing_and_its_key(tmp_path):
    folder = tmp_path / "fade500"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    rows = {key: (status, detail) for _, key, status, detail in recipe_needs(_recipe(tmp_path, folder))}
    assert rows["pretrain[0]"][0] == "built-in"
    assert rows["target[0]"] == ("ready", f"3 image(s) under {folder}")
    assert rows["benchmarks[0].root"][0] == "missing" and "set benchmarks[0].root" in rows["benchmarks[0].root"][1]
    assert rows["metrics[1].weights"][0] == "missing" and rows["metrics[2].model"][0] == "optional"
    assert rows["guide.pretrained"][0] == "missing"
    (tmp_path / "musiq.pth").write_bytes(b"x")
    (tmp_path / "clip.safetensors").write_bytes(b"x")
    rows = {key: status for _, key, status, _ in recipe_needs(_recipe(tmp_path, folder))}
    assert rows["metrics[1].weights"] == rows["guide.pretrained"] == "present"
    result = CliRunner().invoke(app, ["doctor", str(_recipe(tmp_path, folder))])
    assert result.exit_code == 1 and "1 item(s) still needed" in result.output  # only Fattal is left


def test_doctor_recipe_passes_when_nothing_is_missing():
    result = CliRunner().invoke(app, ["doctor", str(REPO / "recipes" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "everything this recipe needs is here" in result.output
