"""How far one cell trained over several processes lands from the same cell on one process.

Runs the tiny recipe of ``tests/test_run.py`` (pretraining, full FT, BiLaLoRA with its bilevel
search) once in one process, then under ``--launcher torchrun --nproc-per-node 2`` (DDP, gloo) and
``--launcher deepspeed`` with ZeRO-1 and ZeRO-2, all with the same global batch, and prints per
configuration the largest absolute and relative difference of every metric and of the searched
gates, the kept sites, and the wall time.

    python benchmarks/distributed_agreement.py [--batch 4] [--steps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_run import TINY  # noqa: E402

CONFIGS = {
    "1 process": [],
    "torchrun x2 (DDP)": ["--launcher", "torchrun", "--nproc-per-node", "2"],
    "deepspeed x2 ZeRO-1": ["--launcher", "deepspeed", "--nproc-per-node", "2", "--set", "engine.zero_stage=1"],
    "deepspeed x2 ZeRO-2": ["--launcher", "deepspeed", "--nproc-per-node", "2", "--set", "engine.zero_stage=2"],
}


def run(folder: Path, recipe: dict, extra: list[str], env: dict[str, str]) -> tuple[dict, float]:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(dict(recipe, out=str(folder / "run"))))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(path), *extra], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    records = [json.loads(p.read_text()) for p in (folder / "run" / "cells").glob("*.json")]
    return {r["cell"]["method"]["type"]: r for r in records}, time.perf_counter() - start


def differences(one: dict, other: dict) -> tuple[float, float, float, bool]:
    abs_metric = rel_metric = gate = 0.0
    for method, rec in one.items():
        for bench, scores in rec["metrics"].items():
            for name, value in scores.items():
                if value is None:
                    continue
                d = abs(other[method]["metrics"][bench][name] - value)
                abs_metric, rel_metric = max(abs_metric, d), max(rel_metric, d / max(abs(value), 1e-12))
    g1, g2 = one["bilalora"]["method_info"]["gates"], other["bilalora"]["method_info"]["gates"]
    gate = max(abs(g1[k] - g2[k]) for k in g1)
    same_sites = one["bilalora"]["method_info"]["selected"] == other["bilalora"]["method_info"]["selected"]
    return abs_metric, rel_metric, gate, same_sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4, help="global batch (split over the ranks)")
    args = parser.parse_args()
    recipe = dict(TINY, budget=dict(TINY["budget"], batch_size=args.batch))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
               "HARNESS_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
        results = {}
        for name, extra in CONFIGS.items():
            folder = Path(tmp) / name.replace(" ", "_")
            folder.mkdir()
            results[name] = run(folder, recipe, extra, env)
            print(f"{name}: {results[name][1]:.1f} s", flush=True)
    one, _ = results["1 process"]
    gates = one["bilalora"]["method_info"]["gates"]
    print(f"\nreference (1 process): kept {one['bilalora']['method_info']['selected']}, "
          f"gates {', '.join(f'{k}={v:.6f}' for k, v in gates.items())}")
    print(f"{'configuration':24} {'max |d metric|':>15} {'max rel':>10} {'max |d gate|':>13} {'same sites':>11}")
    for name, (records, seconds) in results.items():
        if name == "1 process":
            continue
        a, r, g, same = differences(one, records)
        print(f"{name:24} {a:15.3e} {r:10.3e} {g:13.3e} {str(same):>11}")


if __name__ == "__main__":
    main()
