"""The clipping flag's threshold, measured: ``clipped_delta`` of simple edits of real hazy photos.

For every photo of ``--photos`` (default ``../shared/data/real_hazy``), area-downscaled to at most
``--size`` px on its longer side: a dark channel prior (He et al. 2009: the 15 px dark channel of
``harness.models.dehamer``, airlight from its brightest 0.1 %, omega 0.95, transmission at least
0.1, no refinement), the probe's contrast stretch (1st..99th percentile per channel), and a black
point at 20 % (levels ``(x - 0.2) / 0.8``: shadows crushed on purpose). Prints the mean and the
largest value over the photos per edit; ``harness/report/sanity.py`` puts the threshold at about
twice the contrast stretch's largest.

    python benchmarks/sanity_thresholds.py [--photos DIR] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from harness.data.io import list_images, read_image, shrink, to_tensor
from harness.guide.probe import edit
from harness.metrics.sanity import clipped_delta
from harness.models.dehamer import dark_channel


def dark_channel_prior(hazy: torch.Tensor) -> torch.Tensor:
    """He et al.'s dehazing without the soft-matting refinement, on a 1x3xHxW batch in [0, 1]."""
    d = dark_channel(hazy).flatten()
    brightest = d.topk(max(1, d.numel() // 1000)).indices
    airlight = hazy.flatten(2)[0][:, brightest].mean(1).view(1, 3, 1, 1)
    t = (1 - 0.95 * dark_channel(hazy / airlight)).clamp_min(0.1)
    return ((hazy - airlight) / t + airlight).clamp(0, 1)


EDITS = {"dark channel prior": dark_channel_prior,
         "contrast stretch": lambda x: edit("contrast stretch", x, x),
         "black point 20 %": lambda x: ((x - 0.2) / 0.8).clamp(0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/data/real_hazy"))
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    metric = clipped_delta()
    values: dict[str, list[float]] = {name: [] for name in EDITS}
    paths = list_images(args.photos)
    for path in paths:
        x = shrink(to_tensor(read_image(path)), args.size)[None]
        for name, fn in EDITS.items():
            values[name].append(float(metric.score_batch(fn(x), input_images=x)[0]))
    print(f"clipped_delta (percentage points) on {len(paths)} photos of {args.photos} at {args.size} px")
    for name, v in values.items():
        print(f"  {name:20s} mean {sum(v) / len(v):6.2f}   max {max(v):6.2f}   min {min(v):6.2f}")


if __name__ == "__main__":
    main()
