"""Does a merged LoRA adapter cost anything at inference? DEA-Net base vs LoRA at 3 groups, merged.

Prints params, FLOPs at 256x256 and CPU runtime (interleaved repeats, median) of the base, the
unmerged adapted model and the merged one, the ratios to the base, and merged-vs-unmerged max |diff|;
then the cost of switching between two adapters on one loaded base (``AdapterSwitch``) beside
reloading the base checkpoint and merging the adapter.

    python benchmarks/merge_runtime.py [--variant tiny|full] [--size 256] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.adapt.adapter_io import AdapterSwitch, apply_adapter
from harness.adapt.lora import inject_lora, lora_parameters, merge_lora, select_sites
from harness.adapt.adapter_io import save_adapter
from harness.dehaze import load_checkpoint
from harness.metrics.efficiency import flops_256
from harness.models import build_backbone, count_params
from harness.store import file_sha256, save_weights, sidecar

GROUPS = ["level3_block1", "level3_block2", "down_level2_block1"]


@torch.no_grad()
def once(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return (time.perf_counter() - start) * 1e3


def switch_cost(base: torch.nn.Module, variant: str, repeats: int) -> tuple[float, float]:
    """Median ms of (switching adapters on one loaded base, reloading the base and merging one)."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "base.safetensors"
        save_weights(ckpt, base, {"backbone": "dea_net", "variant": variant, "form": "deploy"})
        adapters = []
        for group in GROUPS[:2]:  # a "day" and a "night" adapter at different sites
            model = copy.deepcopy(base)
            sites = select_sites(model, [group])
            inject_lora(model, sites, rank=8, alpha=16)
            with torch.no_grad():
                for p in lora_parameters(model):
                    p.normal_(std=0.02)
            path = save_adapter(model, sites, 8, 16, Path(tmp) / f"{group}.safetensors")
            meta = json.loads(sidecar(path).read_text())
            sidecar(path).write_text(json.dumps({**meta, "base_sha256": file_sha256(ckpt)}))
            adapters.append(path)
        switch = AdapterSwitch(load_checkpoint(ckpt)[0], ckpt)
        switching, reloading = [], []
        for i in range(repeats):
            start = time.perf_counter()
            switch.use(adapters[i % 2])
            switching.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            apply_adapter(load_checkpoint(ckpt)[0], adapters[i % 2], ckpt)
            reloading.append((time.perf_counter() - start) * 1e3)
    return statistics.median(switching), statistics.median(reloading)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = build_backbone("dea_net", args.variant).deploy().eval()
    adapted = copy.deepcopy(base)
    inject_lora(adapted, select_sites(adapted, GROUPS), rank=8, alpha=16)
    with torch.no_grad():
        for p in lora_parameters(adapted):
            p.normal_(std=0.02)
    adapted.eval()
    merged = merge_lora(copy.deepcopy(adapted)).eval()
    x = torch.rand(1, 3, args.size, args.size)
    with torch.no_grad():
        diff = (merged(x) - adapted(x)).abs().max().item()
    models = {"base": base, "unmerged": adapted, "merged": merged}
    times: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        once(m, x)  # warm-up
    for _ in range(args.repeats):  # interleaved so load drift hits all three alike
        for k, m in models.items():
            times[k].append(once(m, x))
    rows = {k: (count_params(m), flops_256(m), statistics.median(times[k])) for k, m in models.items()}
    b = rows["base"]
    print(f"DEA-Net {args.variant}, LoRA rank 8 at {', '.join(GROUPS)}; runtime at {args.size}px, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'model':<10}{'params':>12}{'GFLOPs@256':>12}{'ms':>10}{'params x':>10}{'flops x':>9}{'time x':>8}")
    for k, (p, f, t) in rows.items():
        print(f"{k:<10}{p:>12,}{f / 1e9:>12.3f}{t:>10.1f}{p / b[0]:>10.4f}{f / b[1]:>9.4f}{t / b[2]:>8.3f}")
    print(f"merged vs unmerged max |diff| = {diff:.2e}")
    switching, reloading = switch_cost(base, args.variant, args.repeats)
    print(f"adapter switch on a loaded base {switching:.1f} ms vs reload base + merge {reloading:.1f} ms "
          f"(x{switching / reloading:.2f})")


if __name__ == "__main__":
    main()
