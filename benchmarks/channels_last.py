"""Which backbones train and infer faster on the CPU with channels-last (NHWC) tensors, as ratios.

For each backbone variant (default: the ``tiny`` variant of every registered backbone whose forward
needs no guide), one training step
is ``L1(model(x), target).backward()`` plus an Adam step on a random batch, and one inference pass is
the model on one larger image under ``no_grad``. Each is timed with the backbone's
``channels_last`` off and on (``DehazeNet.channels_last``: ``restore`` sees an NHWC tensor; the
last column is what ``register_backbone`` sets), the two
layouts interleaved over ``--rounds`` rounds after a warm-up, and the medians' ratio printed
(NHWC / NCHW: below 1 is faster). A layout a network fails on (e.g. a ``view`` that needs NCHW) is
reported in its row. The two layouts give the same function up to float summation order, so the
ratio is the whole difference. Ratios only; nothing is asserted.

    python benchmarks/channels_last.py [--backbones aod_net,dea_net] [--variant tiny] [--threads 2]
        [--batch 8] [--patch 48] [--size 256] [--steps 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from harness.models import build_backbone
from harness.models.base import BACKBONE_CARDS


def seconds(model: torch.nn.Module, channels_last: bool, batch: torch.Tensor, image: torch.Tensor,
            steps: int) -> tuple[float, float]:
    """Seconds per training step and per inference pass of ``model`` in the given layout."""
    model.channels_last = channels_last
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = time.perf_counter()
    for _ in range(steps):
        loss = F.l1_loss(model(batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    train = (time.perf_counter() - start) / steps
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(max(steps // 4, 1)):
            model(image)
        infer = (time.perf_counter() - start) / max(steps // 4, 1)
    return train, infer


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default=",".join(sorted(n for n, card in BACKBONE_CARDS.items()
                                                               if not card.needs_guide)))
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); training: batch {args.batch} x {args.patch}px, inference: 1 x {args.size}px; "
          f"median of {args.rounds} rounds; ratio NHWC / NCHW (below 1: channels-last is faster)")
    print(f"{'backbone':<18} {'train NCHW':>11} {'NHWC':>9} {'ratio':>6} {'infer NCHW':>11} {'NHWC':>9} {'ratio':>6}  default")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name in args.backbones.split(","):
        torch.manual_seed(0)
        model = build_backbone(name, args.variant)
        default = BACKBONE_CARDS[name].channels_last
        batch = torch.rand(args.batch, 3, args.patch, args.patch, generator=generator)
        image = torch.rand(1, 3, args.size, args.size, generator=generator)
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        try:
            for layout in (False, True):  # warm-up
                seconds(model, layout, batch, image, 2)
            for _ in range(args.rounds):
                for layout in (False, True):
                    times[layout].append(seconds(model, layout, batch, image, args.steps))
        except (RuntimeError, ValueError) as error:
            print(f"{name:<18} fails: {str(error).splitlines()[0][:90]}")
            rows.append({"backbone": name, "error": str(error).splitlines()[0]})
            continue
        (train0, infer0), (train1, infer1) = (
            tuple(statistics.median(t[i] for t in times[layout]) for i in range(2)) for layout in (False, True))
        print(f"{name:<18} {train0 * 1e3:9.2f}ms {train1 * 1e3:7.2f}ms {train1 / train0:6.2f} "
              f"{infer0 * 1e3:9.2f}ms {infer1 * 1e3:7.2f}ms {infer1 / infer0:6.2f}  {'NHWC' if default else 'NCHW'}")
        rows.append({"backbone": name, "train_ratio": train1 / train0, "infer_ratio": infer1 / infer0,
                     "registered_channels_last": default})
    return rows


if __name__ == "__main__":
    main()
