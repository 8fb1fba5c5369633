"""A training step with another program busy on the machine: torch's default threads vs the share rule.

Each measurement is a fresh process (torch fixes its thread pool at start) that builds DEA-Net
(``--variant``), then times ``--steps`` supervised steps (forward, L1 loss, backward, Adam) on a
random ``--batch`` x 3 x ``--patch``^2 batch after two warm-up steps, and prints the median step.
``default``: torch as it starts (one thread per core); ``rule``: ``apply_thread_share()`` first,
as ``harness`` does at start (``harness/launch/threads.py``). Rounds alternate the two, with a
second process spinning (``python -c 'while 1: pass'``) for the whole run, and optionally
(``--idle-too``) without it. Nothing is asserted; the numbers depend on what else runs.

    python benchmarks/thread_share.py [--rounds 3] [--steps 10] [--variant tiny] [--idle-too]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
rule = sys.argv[1] == "rule"
if rule:
    from harness.launch.threads import apply_thread_share
    share = apply_thread_share()
import torch
from harness.models import build_backbone
torch.manual_seed(0)
model = build_backbone("dea_net", sys.argv[2]).deploy()
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.rand(int(sys.argv[4]), 3, int(sys.argv[5]), int(sys.argv[5]))
times = []
for i in range(int(sys.argv[3]) + 2):
    start = time.perf_counter()
    loss = (model(x) - x).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "step_s": sorted(times[2:])[len(times[2:]) // 2],
                  "rule": share.describe() if rule else "torch default"}))
"""


def measure(mode: str, args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, args.variant, str(args.steps), str(args.batch),
                          str(args.patch)], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(args, label: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {"default": [], "rule": []}
    for r in range(args.rounds):
        for mode in (("default", "rule") if r % 2 == 0 else ("rule", "default")):
            found[mode].append(measure(mode, args))
            print(f"  {label} round {r + 1} {mode:7s}: {found[mode][-1]['threads']} thread(s), "
                  f"step {found[mode][-1]['step_s'] * 1000:.1f} ms", flush=True)
    return found


def summary(label: str, found: dict[str, list[dict]]) -> None:
    med = {m: statistics.median(x["step_s"] for x in v) for m, v in found.items()}
    print(f"{label}: default {found['default'][0]['threads']} thread(s) {med['default'] * 1000:.1f} ms/step, "
          f"rule {found['rule'][0]['threads']} thread(s) {med['rule'] * 1000:.1f} ms/step; "
          f"default / rule = {med['default'] / med['rule']:.2f}x  ({found['rule'][0]['rule']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--idle-too", action="store_true", help="also measure without the busy process")
    args = parser.parse_args()
    loads = {}
    if args.idle_too:
        loads["no extra busy process"] = rounds(args, "idle")
    busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(2)
        loads["one extra busy process"] = rounds(args, "busy")
    finally:
        busy.kill()
        busy.wait()
    for label, found in loads.items():
        summary(label, found)


if __name__ == "__main__":
    main()
