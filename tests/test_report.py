"""Tables come from records only: grouping, seed averaging, best-in-column, n/a."""

from harness.report.tables import comparison_table, to_latex, to_markdown, write_report
from harness.store import RunStore


def record(method: str, seed: int, fade: float, psnr: float | None, index: int) -> dict:
    return {
        "cell": {"index": index, "seed": seed, "labels": {"backbone": "dea_net-tiny", "pretrain": "asm",
                                                         "target": "t", "method": method}},
        "provenance": {"recipe": "demo"},
        "metrics": {"bench": {"fade": fade, "psnr": psnr}},
        "metric_directions": {"fade": True, "psnr": False},
        "efficiency": {"train_seconds": 10.0 + index, "params_total": 1_000_000, "params_trainable": 5000,
                       "flops_256": 2e9, "runtime_ms_256": 3.0, "peak_mem_mb": 100.0},
    }


def test_best_is_bold_by_direction_and_seeds_average():
    recs = [record("a", 0, 1.0, 20.0, 0), record("a", 1, 2.0, 22.0, 1), record("b", 0, 0.5, None, 2)]
    headers, rows, starts = comparison_table(recs)
    assert headers[:3] == ["Method", "FADE↓", "PSNR↑"]
    a, b = rows
    assert a[1].startswith("1.5000 ± 0.707")  # mean and sample std of 1.0, 2.0
    assert b[1] == "**0.5000**"  # lower FADE is better
    assert b[2] == "n/a"  # no PSNR for b: nothing made up
    assert a[2].startswith("21.00 ±")  # only one PSNR value: nothing bold
    md = to_markdown(headers, rows)
    assert md.count("\n") == 4 and "| b | **0.5000** | n/a |" in md
    tex = to_latex(headers, rows, starts, "demo")
    assert r"\textbf{0.5000}" in tex and r"FADE$\downarrow$" in tex and r"$\pm$" in tex


def test_write_report_reads_run_folder(tmp_path):
    store = RunStore(tmp_path)
    store.write_record("x1", record("a", 0, 1.0, 20.0, 0))
    store.write_record("x2", record("b", 0, 3.0, 25.0, 1))
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert "**1.0000**" in md and "**25.00**" in md
    assert paths["latex"].read_text().startswith(r"\begin{table}")


def test_figures_from_sweep_and_two_backbones(tmp_path):
    store = RunStore(tmp_path)
    i = 0
    for backbone in ("a-tiny", "b-tiny"):
        for k in (1, 2, 3):
            rec = record(f"bilalora[top_k={k}]", 0, 1.0 / k, 20.0 + k, i)
            rec["cell"]["labels"]["backbone"] = backbone
            rec["cell"]["method"] = {"type": "bilalora", "top_k": k}
            store.write_record(f"c{i}", rec)
            i += 1
    paths = write_report(tmp_path)
    for name in ("figure:cross_model", "figure:layer_number"):
        assert paths[name].stat().st_size > 5000
    assert "fig_layer_number.png" in paths["md"].read_text()


def test_published_numbers_match_columns_case_insensitively(tmp_path):
    from pathlib import Path

    from harness.report.baselines import baselines_markdown, published_table, load_baseline

    paper = Path(__file__).resolve().parents[1] / "baselines" / "bilalora_paper.yaml"
    headers, rows = published_table(load_baseline(paper), ["rtts/fade", "rtts/psnr", "fattal/entropy"])
    assert headers == ["Published", "rtts/fade", "fattal/entropy"]
    ours = next(r for r in rows if r[0].startswith("BiLaLoRA (DEA) (Table 2"))
    assert ours[1:] == ["0.752", "7.541"]
    assert baselines_markdown([paper], ["hazy/psnr"]) == ""


def test_graft_figure_needs_two_grafted_blocks(tmp_path):
    from harness.report.figures import graft_figure

    source = {"type": "full_ft", "steps": 4}
    recs = [record("pretrained", 0, 1.0, 20.0, 0), record("full_ft", 0, 0.8, 15.0, 1)]
    recs[0]["cell"]["method"], recs[1]["cell"]["method"] = {"type": "none"}, source
    for i, site in enumerate(("block1", "block2")):
        recs.append(record(f"graft[site={site}]", 0, 0.9, 19.5 + i, 2 + i))
        recs[-1]["cell"]["method"] = {"type": "graft", "site": site, "source": source}
    assert graft_figure(recs[:3], tmp_path / "one.png") is None
    assert graft_figure(recs, tmp_path / "g.png").stat().st_size > 5000
