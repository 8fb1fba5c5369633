"""Where adaptation lost, image by image: each adapted method against the pretrained model of its
context, per benchmark and metric, from the per-image scores the records point to
(``artifacts.scores``: ``scores/<cell>/<benchmark>.csv``), means over seeds.

A benchmark mean hides a method that gains on most images and fails badly on a few: on real haze
both methods raised Entropy on the 19 colour photos and lost it on the 2 monochrome ones
(docs/guide.md). Only the paper's metrics with a known direction are listed; the sanity metrics
already compare each output with its own input. Records whose score files are not in the run
folder (e.g. cells copied alone) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.frame import (SANITY, Cell, Column, Group, Row, Table, category, contexts, directions,
                                  format_number, groups_of, in_paper_order, metric_digits, metric_name, paper_order)

SHOWN = 3  # the images with the largest losses, per row


def image_scores(group: Group, bench: str, root: Path) -> pd.DataFrame | None:
    """Per-image scores of ``group`` on ``bench`` (index: image name), the mean over its seeds;
    None unless every seed's score file is there."""
    frames = []
    for rec in group.records:
        folder = (rec.get("artifacts") or {}).get("scores")
        path = Path(root) / folder / f"{bench}.csv" if folder else None
        if path is None or not path.is_file():
            return None
        frames.append(pd.read_csv(path).set_index("image"))
    return pd.concat(frames).groupby(level=0).mean(numeric_only=True)


def _losses(before: pd.Series, after: pd.Series, lower: bool, digits: int) -> tuple[int, str]:
    """(images worse after, the worst few as ``name before→after``)."""
    harm = (after - before) if lower else (before - after)
    worse = harm[harm > 0].sort_values(ascending=False)
    shown = [f"{name} {format_number(before[name], digits)}→{format_number(after[name], digits)}"
             for name in worse.index[:SHOWN]]
    return len(worse), "; ".join(shown) or "none"


def per_image_table(records: list[dict[str, Any]], root: Path, groups: list[Group] | None = None) -> Table | None:
    """Rows: adapted methods; per benchmark and metric where the method is worse than the pretrained
    model on some image, on how many, its mean change, and the images where it lost most."""
    groups = groups if groups is not None else groups_of(records)
    lower_is_better = directions(records)
    columns = [Column("bench", "Benchmark", digits=None, align="l"), Column("metric", "Metric", digits=None, align="l"),
               Column("worse", "Worse on", digits=None), Column("change", "Mean change", digits=None),
               Column("losses", f"Largest losses (pretrained→method, up to {SHOWN})", digits=None, align="l")]
    table = Table("per_image", "Where each method lost, per image", columns)
    for _, title, members in contexts(groups):
        baseline = next((g for g in members if g.kind == "none"), None)
        if baseline is None:
            continue
        befores: dict[str, pd.DataFrame | None] = {}  # the pretrained model's, read once per benchmark
        for g in (g for g in in_paper_order(members) if g.kind not in ("none", "graft")):
            for bench in g.benchmarks():
                if bench not in befores:
                    befores[bench] = image_scores(baseline, bench, root)
                before, after = befores[bench], image_scores(g, bench, root)
                if before is None or after is None:
                    continue
                images = before.index.intersection(after.index)
                for metric in paper_order(m for m in after.columns if m in before.columns and m not in SANITY):
                    lower = lower_is_better.get(metric)
                    if lower is None:
                        continue
                    digits = metric_digits(metric)
                    b, a = before.loc[images, metric], after.loc[images, metric]
                    worse, shown = _losses(b, a, lower, digits)
                    if not worse:
                        continue
                    cells = {"bench": Cell(text=bench), "metric": Cell(text=metric_name(metric)),
                             "worse": Cell(text=f"{worse} / {len(images)}"),
                             "change": Cell(text=f"{(a - b).mean():+.{digits}f}"), "losses": Cell(text=shown)}
                    table.rows.append(Row(g.label, cells, section=title, group=category(g)))
    if not table.rows:
        return None
    table.notes.append("Per image the mean over seeds; worse: against the metric's direction (↑/↓ as in the "
                       "comparison), by any amount; mean change: method minus pretrained, over the images. "
                       "A metric on which a method is worse on no image has no row.")
    return table
