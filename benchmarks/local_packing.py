"""Packing cells onto a machine's workers: ``harness run --launcher local --workers N`` against one worker.

Runs the same 4-cell tiny recipe (one backbone, four full fine-tuning cells that differ in steps,
so they share one pretrained checkpoint and train in parallel) into fresh run folders, alternating
the configurations over ``--rounds`` rounds so that a change of machine load hits both, and prints
each configuration's wall times and the ratio of medians. The embedded guide is trained once
beforehand into a shared cache, so neither configuration pays for it.

    python benchmarks/local_packing.py --workers 1,2 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

RECIPE = {
    "name": "packing",
    "device": "cpu",
    "backbones": [{"type": "dea_net", "variant": "tiny"}],
    "pretrain": [{"type": "synthetic", "label": "asm", "source": "skimage", "kind": "asm", "count": 8, "size": 64,
                  "seed": 0}],
    "target": [{"type": "synthetic", "label": "hard", "source": "skimage", "kind": "nonuniform", "count": 8,
                "size": 64, "seed": 1}],
    "benchmarks": [{"type": "synthetic", "label": "test", "source": "skimage", "kind": "nonuniform", "count": 4,
                    "size": 64, "seed": 2}],
    "metrics": ["entropy", "psnr"],
    "guide": {"type": "embedded", "steps": 60},
    "budget": {"pretrain_steps": 40, "batch_size": 4, "patch_size": 48},
    "methods": [{"type": "full_ft", "label": f"ft{n}", "steps": n, "lr": 1e-4} for n in (40, 41, 42, 43)],
}


def run(folder: Path, workers: int, env: dict[str, str]) -> float:
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(RECIPE, out=str(folder / "run"))))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(recipe), "--launcher", "local",
                           "--workers", str(workers)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HARNESS_CACHE": str(Path(tmp) / "cache")}
        warm = Path(tmp) / "warm"
        warm.mkdir()
        run(warm, 1, env)  # trains the guide once and builds the synthetic sets
        times: dict[int, list[float]] = {n: [] for n in counts}
        for r in range(args.rounds):
            for n in counts if r % 2 == 0 else reversed(counts):
                folder = Path(tmp) / f"r{r}-w{n}"
                folder.mkdir()
                times[n].append(run(folder, n, env))
                print(f"round {r}: --workers {n}: {times[n][-1]:.1f} s", flush=True)
    load = os.getloadavg()[0]
    base = statistics.median(times[counts[0]])
    print(f"\n4 cells (1 pretraining, 4 adaptations, 4 scorings); {os.cpu_count()} cores; load average {load:.1f}")
    for n in counts:
        med = statistics.median(times[n])
        print(f"--workers {n}: median {med:.1f} s over {len(times[n])} run(s) "
              f"({', '.join(f'{t:.1f}' for t in times[n])}); speed-up x{base / med:.2f}")


if __name__ == "__main__":
    main()
