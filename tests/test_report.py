"""Tables come from records only; every expected number here is computed by hand in the test."""

import pytest

from harness.report.frame import group_id, groups_of
from harness.report.render import to_latex, to_markdown
from harness.report.tables import ablation_table, before_after_table, comparison_table, efficiency_tables
from tests.report_fixtures import COLLAPSED, SANE, record


def _three_methods() -> list[dict]:
    """pretrained, full_ft (2 seeds), bilalora on benchmarks A and B (FADE lower, Entropy higher)."""
    return [
        record({"type": "none"}, "pretrained", {"A": {"fade": 1.50, "entropy": 7.00},
                                                "B": {"fade": 1.10, "entropy": 7.10}}),
        record({"type": "full_ft", "steps": 60}, "full_ft", {"A": {"fade": 1.00, "entropy": 7.30},
                                                            "B": {"fade": 0.60, "entropy": 7.20}}, seed=0),
        record({"type": "full_ft", "steps": 60}, "full_ft", {"A": {"fade": 1.20, "entropy": 7.10},
                                                            "B": {"fade": 0.80, "entropy": 7.40}}, seed=1),
        record({"type": "bilalora", "top_k": 3}, "bilalora", {"A": {"fade": 0.90, "entropy": 7.20},
                                                             "B": {"fade": 0.95, "entropy": 7.25}}),
    ]


def _cells(table, label):
    row = next(r for r in table.rows if r.label == label)
    return {c.key: row.cells[c.key] for c in table.columns}


def test_comparison_values_marks_and_average_by_hand():
    table = comparison_table(_three_methods())
    keys = [c.key for c in table.columns]
    assert keys == ["A/fade", "A/entropy", "B/fade", "B/entropy", "Average/fade", "Average/entropy"]
    assert [c.header for c in table.columns[:2]] == ["FADE↓", "Entropy↑"]
    ft, bila, pre = _cells(table, "full_ft"), _cells(table, "bilalora"), _cells(table, "pretrained")
    # full_ft: A/fade mean(1.0, 1.2) = 1.1, sample std 0.1414; Average per seed (1.0+0.6)/2=0.8, (1.2+0.8)/2=1.0
    assert ft["A/fade"].stat.mean == pytest.approx(1.1) and ft["A/fade"].stat.std == pytest.approx(0.141421, 1e-4)
    assert ft["Average/fade"].stat.mean == pytest.approx(0.9) and ft["Average/fade"].stat.n == 2
    assert ft["Average/entropy"].stat.mean == pytest.approx((7.25 + 7.25) / 2)
    assert bila["Average/fade"].stat.mean == pytest.approx(0.925) and bila["Average/fade"].stat.std is None
    assert pre["Average/entropy"].stat.mean == pytest.approx(7.05)
    # FADE lower is better: A best bilalora 0.90, second full_ft 1.10; B best full_ft 0.70, second bilalora 0.95
    assert (bila["A/fade"].mark, ft["A/fade"].mark, pre["A/fade"].mark) == ("best", "second", None)
    assert (ft["B/fade"].mark, bila["B/fade"].mark) == ("best", "second")
    assert (ft["Average/fade"].mark, bila["Average/fade"].mark) == ("best", "second")
    # Entropy higher is better: Average full_ft 7.25 = bilalora 7.225 -> 7.250 vs 7.225 (shown values differ)
    assert (ft["Average/entropy"].mark, bila["Average/entropy"].mark, pre["Average/entropy"].mark) == \
        ("best", "second", None)
    # A/entropy: full_ft 7.20 (mean of 7.3, 7.1) ties bilalora 7.20: both bold, pretrained 7.00 second
    assert (ft["A/entropy"].mark, bila["A/entropy"].mark, pre["A/entropy"].mark) == ("best", "best", "second")
    md = to_markdown(table)
    assert "| bilalora | **0.900** | **7.200** | <u>0.950</u> | <u>7.250</u> | <u>0.925</u> | <u>7.225</u> |" in md
    assert "**0.900 ± 0.141**" in md  # full_ft's Average FADE with its seed spread
    tex = to_latex(table)
    assert r"\textbf{0.900}" in tex and r"\underline{0.950}" in tex and r"\multicolumn{2}{c}{Average}" in tex
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"FADE$\downarrow$" in tex


def test_same_label_different_cells_stay_apart_and_are_named_by_what_differs():
    """Issue 8.8: two full_ft cells (60 and 600 steps) used to become one row 'x ± std'."""
    recs = [record({"type": "full_ft", "steps": 60}, "full_ft", {"A": {"fade": 0.2}}),
            record({"type": "full_ft", "steps": 600}, "full_ft", {"A": {"fade": 0.4}}),
            record({"type": "full_ft", "steps": 600}, "full_ft", {"A": {"fade": 0.6}}, seed=1)]
    table = comparison_table(recs)
    labels = {r.label: r.cells["A/fade"].stat for r in table.rows}
    assert set(labels) == {"full_ft [steps=60]", "full_ft [steps=600]"}
    assert labels["full_ft [steps=60]"].mean == pytest.approx(0.2) and labels["full_ft [steps=60]"].n == 1
    assert labels["full_ft [steps=600]"].mean == pytest.approx(0.5) and labels["full_ft [steps=600]"].n == 2


def test_group_id_from_the_record_or_derived_without_seed_and_ids():
    a = record({"type": "bilalora", "top_k": 2}, "x", {"A": {"fade": 1.0}}, seed=0)
    b = record({"type": "bilalora", "top_k": 2}, "renamed", {"A": {"fade": 2.0}}, seed=3)
    b["cell"].update(index=7, id="other", adapt_id="zz")
    assert group_id(a["cell"]) == group_id(b["cell"])  # seed, index, ids and labels are not identity
    c = record({"type": "bilalora", "top_k": 3}, "x", {"A": {"fade": 1.0}})
    assert group_id(c["cell"]) != group_id(a["cell"])
    given = record({"type": "none"}, "x", {"A": {"fade": 1.0}}, group_id="g-42")
    assert group_id(given["cell"]) == "g-42"
    assert len(groups_of([a, b, c])) == 2


def test_a_rescored_record_of_the_same_seed_adds_metrics_not_a_seed():
    old = record({"type": "none"}, "p", {"A": {"fade": 1.0}})
    new = record({"type": "none"}, "p", {"A": {"fade": 1.0, "entropy": 7.0}})
    new["provenance"]["finished_at"] = "2026-02-01T00:00:00+00:00"
    (g,) = groups_of([old, new])
    assert len(g.records) == 1 and g.value("A", "entropy").mean == 7.0 and g.value("A", "fade").n == 1


def test_collapsed_method_is_flagged_and_never_marked():
    recs = _three_methods()
    for rec in recs:
        for bench in rec["metrics"].values():
            bench.update(SANE)
    for rec in recs[1:3]:  # full_ft: the best FADE on B, by turning everything red
        rec["metrics"]["B"].update(COLLAPSED)
    table = comparison_table(recs)
    ft, bila = _cells(table, "full_ft"), _cells(table, "bilalora")
    assert all(c.mark is None for c in ft.values())
    assert bila["B/fade"].mark == "best" and bila["Average/fade"].mark == "best"
    assert [c.key for c in table.columns[-3:]] == ["Average/lab_shift", "Average/colourfulness_delta",
                                                   "Average/luma_ssim_input"]
    assert ft["Average/lab_shift"].stat.mean == pytest.approx((4.0 + 38.0) / 2)  # shown beside the metrics
    row = next(r for r in table.rows if r.label == "full_ft")
    assert any("colour cast on B" in f for f in row.flags) and any("structure lost on B" in f for f in row.flags)
    md = to_markdown(table)
    assert "| full_ft ⚠ |" in md and "⚠ full_ft: outputs collapsed (colour cast on B (Lab shift 38.0 > 15)" in md
    assert r"full\_ft \ddag{}" in to_latex(table)


def test_clipped_detail_is_flagged_above_five_points_only():
    recs = _three_methods()
    for rec in recs:
        for bench in rec["metrics"].values():
            bench.update(SANE, clipped_delta=1.0)
    for rec in recs[1:3]:  # full_ft: shadows crushed on B, 5.5 points more black pixels on average
        rec["metrics"]["B"]["clipped_delta"] = 5.5
    recs[3]["metrics"]["B"]["clipped_delta"] = 4.9  # bilalora: under the threshold
    table = comparison_table(recs)
    rows = {r.label: r for r in table.rows}
    assert rows["full_ft"].flags == ("detail clipped on B (Clipped +% 5.5 > 5)",)
    assert not rows["bilalora"].flags and table.columns[-1].key == "Average/clipped_delta"
    assert "Clipped +%" in to_markdown(table)


def test_efficiency_table_has_the_paper_shape_and_rate():
    recs = _three_methods()
    for ft in recs[1:3]:
        ft["efficiency"].update(train_seconds=4.215 * 3600, params_trainable=3_653_000)
    recs[3]["efficiency"].update(train_seconds=0.940 * 3600, params_unmerged=3_764_000, params_trainable=110_592)
    (table,) = efficiency_tables(recs)
    rows = {r.label: r for r in table.rows}
    assert [c.header for c in table.columns] == ["full_ft", "bilalora", "Rate"]
    train = rows["Train time (h)"].cells
    assert train["g0"].text == "4.215 ± 0.000" and train["g1"].text == "0.940"
    assert rows["Train time (h)"].cells["rate0"].text == "↓77.70%"  # (0.940 - 4.215) / 4.215
    assert rows["FADE↓"].cells["rate0"].text == "↑2.78%"  # Average FADE 0.9 -> 0.925
    # full fine-tuning adds no branch: its unmerged count is its deployed count
    assert rows["Params (M, unmerged)"].cells["g0"].text.startswith("3.653")
    assert rows["Params (M, unmerged)"].cells["rate0"].text == "↑3.04%"  # 3.764 / 3.653 - 1


def test_ablation_rows_follow_the_paper_order_with_check_marks():
    recs = [record({"type": "bilalora"}, "bilevel", {"A": {"fade": 0.6}}),
            record({"type": "manual_lora", "h2c": {"mode": "positive"}}, "pos-manual", {"A": {"fade": 0.9}}),
            record({"type": "naive_joint", "h2c": {"mode": "negative"}}, "neg-naive", {"A": {"fade": 0.8}}),
            record({"type": "none"}, "pretrained", {"A": {"fade": 1.0}}),
            record({"type": "full_ft"}, "full_ft", {"A": {"fade": 0.5}})]
    table = ablation_table(recs)
    marks = [(r.label, *(r.cells[k].text for k in ("positive", "negative", "naive", "bilevel"))) for r in table.rows]
    assert marks == [("pretrained", "×", "×", "×", "×"), ("pos-manual", "✓", "×", "×", "×"),
                     ("neg-naive", "×", "✓", "✓", "×"), ("bilevel", "✓", "✓", "×", "✓")]
    assert table.rows[-1].cells["A/fade"].mark == "best"  # full fine-tuning is not an ablation row


def test_cross_model_table_ranks_methods_within_each_backbone():
    recs = []
    for backbone, (before, after) in {"dea_net": (1.4, 0.8), "msbdn": (1.2, 1.3)}.items():
        recs.append(record({"type": "none"}, "pretrained", {"A": {"fade": before}}, backbone=backbone))
        recs.append(record({"type": "bilalora"}, "bilalora", {"A": {"fade": after}}, backbone=backbone))
    table = before_after_table(recs, "backbone")
    dea, msbdn = table.rows
    assert (dea.label, msbdn.label) == ("dea_net-tiny", "msbdn-tiny")
    assert dea.cells["A/fade|bilalora"].mark == "best" and msbdn.cells["A/fade|pretrained"].mark == "best"
    assert before_after_table(recs, "pretrain") is None  # one pretraining set: no cross-domain table


def test_per_image_table_counts_and_names_each_methods_losses_by_hand(tmp_path):
    """Per-image scores of two seeds: the pretrained model's Entropy means are 7, 6, 5, 4.1 and full_ft's
    7.5, 5, 5.2, 3.5, so full_ft is worse on b and d (by 1.0 and 0.6) and changes the mean by -0.225;
    its FADE (lower is better) 0.5, 1.3, 0.9, 1.0 against 1 is worse on b alone. A method whose score
    file is missing for one seed, a metric it improves on every image, and the sanity metric give no row."""
    import pandas as pd

    from harness.report.per_image import per_image_table

    images = ["a.png", "b.png", "c.png", "d.png"]
    scores = {("none", 0): ([7, 6, 5, 4.0], [1, 1, 1, 1]), ("none", 1): ([7, 6, 5, 4.2], [1, 1, 1, 1]),
              ("full_ft", 0): ([7.5, 5, 5.2, 3.6], [0.5, 1.2, 0.9, 1]),
              ("full_ft", 1): ([7.5, 5, 5.2, 3.4], [0.5, 1.4, 0.9, 1]),
              ("bilalora", 0): ([1, 1, 1, 1], [9, 9, 9, 9])}
    records = []
    for (kind, seed), (entropy, fade) in scores.items():
        folder = f"scores/{kind}{seed}"
        (tmp_path / folder).mkdir(parents=True)
        psnr = [10.0 if kind == "none" else 11.0] * 4  # better on every image: no row
        pd.DataFrame({"image": images, "entropy": entropy, "fade": fade, "psnr": psnr,
                      "lab_shift": [50.0] * 4}).to_csv(tmp_path / folder / "B.csv", index=False)
        means = {"B": {"entropy": sum(entropy) / 4, "fade": sum(fade) / 4, "lab_shift": 50.0}}
        records.append(record({"type": kind}, "pretrained" if kind == "none" else kind, means, seed=seed,
                              artifacts={"scores": folder}))
    records.append(record({"type": "bilalora"}, "bilalora", {"B": {"entropy": 1.0}}, seed=1,
                          artifacts={"scores": "scores/missing"}))
    table = per_image_table(records, tmp_path)
    rows = [(r.label, r.cells["metric"].text, r.cells["worse"].text, r.cells["change"].text, r.cells["losses"].text)
            for r in table.rows]
    assert rows == [("full_ft", "FADE", "1 / 4", "-0.075", "b.png 1.000→1.300"),
                    ("full_ft", "Entropy", "2 / 4", "-0.225", "b.png 6.000→5.000; d.png 4.100→3.500")]
