"""Figures and the written report: what each figure groups, and every file `harness report` writes."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from harness.errors import HarnessError
from harness.report.figures import convergence_figure, graft_studies, layer_families
from harness.report.frame import groups_of
from harness.report.writer import write_report
from tests.report_fixtures import demo_run, example_run, record


def test_layer_number_curve_never_mixes_bilalora_with_its_ablations():
    """Issue 8.8: the curve averaged bilalora with its positive-/negative-only ablations per top_k."""
    recs = []
    for k in (1, 2, 3):
        recs.append(record({"type": "bilalora", "top_k": k}, f"bilalora[top_k={k}]", {"A": {"fade": 1.0 / k}}))
        recs.append(record({"type": "bilalora", "top_k": k, "h2c": {"mode": "positive"}}, f"pos[top_k={k}]",
                           {"A": {"fade": 2.0}}))
    recs.append(record({"type": "bilalora", "top_k": 2, "h2c": {"mode": "negative"}}, "neg", {"A": {"fade": 9.0}}))
    families = layer_families(groups_of(recs))
    assert len(families) == 2  # negative-only has one top_k: no curve
    curves = {f[0].h2c_mode(): [g.value("A", "fade").mean for g in f] for f in families}
    assert curves["both"] == pytest.approx([1.0, 0.5, 1 / 3]) and curves["positive"] == [2.0, 2.0, 2.0]


def test_graft_baseline_is_the_pretrained_model_of_the_same_backbone():
    """Issue 8.8: the graft figure's baseline averaged every `none` record across backbones."""
    source = {"type": "full_ft", "steps": 4}
    recs = []
    for backbone, base in (("dea_net", 1.0), ("msbdn", 3.0)):
        recs.append(record({"type": "none"}, "pretrained", {"A": {"fade": base}}, backbone=backbone))
        recs.append(record(source, "full_ft", {"A": {"fade": base - 0.5}}, backbone=backbone))
        for site in ("b1", "b2"):
            recs.append(record({"type": "graft", "site": site, "source": source}, f"graft[site={site}]",
                               {"A": {"fade": base - 0.1}}, backbone=backbone))
    studies = graft_studies(groups_of(recs))
    assert len(studies) == 2
    for grafts, base, src in studies:
        backbone = grafts[0].axis_label("backbone")
        assert base.axis_label("backbone") == backbone and src.axis_label("backbone") == backbone
        assert base.value("A", "fade").n == 1 and src.method == source


def test_convergence_leaves_the_pretraining_curve_out(tmp_path, monkeypatch):
    """The one curve drawn is the adaptation's (seconds, loss) points; the pretraining point is not drawn."""
    from matplotlib.axes import Axes

    drawn, plot = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, *xy, **kw: (drawn.append([list(v) for v in xy]), plot(ax, *xy, **kw))[1])
    pretrained = record({"type": "none"}, "pretrained", {"A": {"fade": 1.0}},
                        curves={"pretrain": [{"step": 0, "seconds": 1.0, "loss": 0.3}]})
    assert convergence_figure([pretrained], tmp_path / "c.png") is None
    adapted = record({"type": "full_ft"}, "full_ft", {"A": {"fade": 0.8}},
                     curves={"pretrain": [{"step": 0, "seconds": 1.0, "loss": 0.3}],
                             "full_ft": [{"step": s, "seconds": float(s), "loss": 1.0 - s / 10} for s in range(5)]})
    assert convergence_figure([pretrained, adapted], tmp_path / "c.png").is_file()
    assert drawn == [[[0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 0.9, 0.8, 0.7, 0.6]]]


def _latex_ok(folder, tex) -> None:
    """Compile with pdflatex where it is installed; otherwise check the structure."""
    text = (folder / tex).read_text()
    inputs = re.findall(r"\\input\{([^}]+)\}", text)
    assert inputs and all((folder / f"{name}.tex").is_file() for name in inputs)
    for name in inputs:
        table = (folder / f"{name}.tex").read_text()
        assert table.count(r"\begin{table}") == table.count(r"\end{table}") == 1
        assert r"\toprule" in table and r"\midrule" in table and r"\bottomrule" in table
        spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", table).group(1)
        body = table.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
        for line in body.splitlines():
            if line.endswith(r"\\") and r"\multicolumn" not in line:
                assert line.count(" & ") == len(spec) - 1, line
    if shutil.which("pdflatex") is None:
        return
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (folder / tex.replace(".tex", ".pdf")).stat().st_size > 10_000


def test_report_on_the_example_run_writes_every_table_and_figure(tmp_path):
    run = example_run(tmp_path / "qs")
    written = write_report(run, ("md", "latex", "html"), with_published=True)
    md = written["md"].read_text()
    for title in ("Comparison on the benchmarks", "Full fine-tuning against BiLaLoRA", "Ablation",
                  "Cost of each method",
                  "Published: BiLaLoRA paper, Table 2 (CVPR 2026)", "Published: BILD paper, Table 1 (ECCV 2022)"):
        assert f"### {title}" in md
    assert {k for k in written if k.startswith("figure:")} == {"figure:layer_number", "figure:gates", "figure:graft"}
    for png in (v for k, v in written.items() if k.startswith("figure:")):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.std() > 10 and png.with_suffix(".pdf").stat().st_size > 5_000
        assert f"]({png.relative_to(run).as_posix()})" in md
    _latex_ok(run, "report.tex")


@pytest.mark.slow
def test_report_on_new_shape_records_draws_curves_gates_and_image_grids(tmp_path):
    run = demo_run(tmp_path / "demo", seeds=(0,))
    written = write_report(run, ("md", "latex"))
    assert {k for k in written if k.startswith("figure:")} == {
        "figure:cross_model", "figure:cross_domain", "figure:convergence", "figure:gates", "figure:samples:RTTS"}
    md = written["md"].read_text()
    assert "### Cross-model: each backbone before and after adaptation" in md and "### Cross-domain" in md
    grid = np.asarray(Image.open(written["figure:samples:RTTS"]).convert("RGB"), dtype=float)
    # the collapsed method's column is red-orange: some region has red far above blue
    assert ((grid[..., 0] - grid[..., 2]) > 150).mean() > 0.02
    _latex_ok(run, "report.tex")


def test_report_command_line(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    run = example_run(tmp_path / "qs")
    done = CliRunner().invoke(app, ["report", str(run), "--format", "md"])
    assert done.exit_code == 0, done.output[-2000:]
    assert (run / "report.md").is_file() and not (run / "report.tex").exists()
    # one HarnessError line (the CLI prints it and exits 2, in the command or in main())
    for args, message in ((["--format", "docx"], "unknown --format 'docx'"), ([], "has no cells/ folder")):
        bad = CliRunner().invoke(app, ["report", str(run if args else tmp_path / "nowhere"), *args])
        assert bad.exit_code != 0 and message in bad.output + str(bad.exception)
        assert isinstance(bad.exception, (SystemExit, HarnessError))


def test_the_sample_grid_and_html_strip_end_with_the_ground_truth_when_the_benchmark_has_one(tmp_path):
    from harness.data.io import write_image
    from harness.report.figures import sample_grid_figure, samples
    from harness.report.html import comparison_view
    from tests.report_fixtures import demo_records

    records = demo_records(tmp_path, seeds=(0,), backbones=("dea_net",), pretrains=("thaze",))
    blue = np.zeros((24, 24, 3), np.float32)
    blue[..., 2] = 1.0
    write_image(tmp_path / "truth.png", blue)  # a colour no input or output of the fixture has
    for rec in records:
        for item in rec["artifacts"].get("samples", {}).get("RTTS", []):
            item["reference"] = "truth.png"
    (bench, entries), = samples(groups_of(records)).items()
    grid = np.asarray(Image.open(sample_grid_figure(tmp_path, bench, entries, tmp_path / "g.png")).convert("RGB"),
                      dtype=float)
    pure_blue = (grid[..., 2] > 200) & (grid[..., 0] < 40) & (grid[..., 1] < 40)
    columns = np.flatnonzero(pure_blue.any(axis=0))
    assert columns.size and columns.min() > 0.8 * grid.shape[1]  # only in the last column
    html = comparison_view(bench, entries, 0)
    assert html.count("<figcaption>ground truth</figcaption>") == len(entries[0][1])
    for rec in records:  # without ground truth: no such column
        for item in rec["artifacts"].get("samples", {}).get("RTTS", []):
            del item["reference"]
    (bench, entries), = samples(groups_of(records)).items()
    plain = np.asarray(Image.open(sample_grid_figure(tmp_path, bench, entries, tmp_path / "p.png")).convert("RGB"),
                       dtype=float)
    assert not ((plain[..., 2] > 200) & (plain[..., 0] < 40) & (plain[..., 1] < 40)).any()
    assert "ground truth" not in comparison_view(bench, entries, 0)
