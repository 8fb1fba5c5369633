"""BILD against plain L1 pretraining on strongly non-uniform haze whose transmission is known.

Data: the 24 Kodak photos (``../shared/data/clean_kodak24``, 500x500 crops) resized to 128x128; depth from
``synth.estimate_depth``; haze by the scattering model with a scattering coefficient that a smooth
random field (``synth.random_field``) modulates 0.1x..2.3x across the image, so one photo holds
near-clear and dense patches: ``t = exp(-beta(x) (0.3 + 0.7 d(x)))``, grey airlight A in
[0.75, 1]. Photos 1-16 (two hazings each: 32 pairs) train, photos 17-24 (two hazings each, other
fields: 16 pairs) test; the test photos are never seen in training.

For each backbone (tiny), method and seed this trains with the harness's own pretraining
(``pretrain_supervised`` or ``BILD.pretrain``, same steps, lr, batch, patches), then reports on the
test pairs PSNR/SSIM (the harness's pyiqa metrics), PSNR over the dense-haze pixels (1 - t > 0.6),
and for BILD the correlation between each 32-px training tile's learned weight and its haze density
mean(1 - t) (and with the trained model's L1 on that tile). Methods: ``l1`` (all 32 pairs),
``l1_90`` (L1 on BILD's 90% training split: what BILD's inner loop sees), ``bild`` (objective
validation: 10% of the pairs held out for the outer loop) and ``bild_train`` (objective training:
Table 3's ablation, no pairs held out). Each finished run is a JSON under ``--out/runs`` and is
reused by a rerun with the same settings; the summary goes to ``--out/summary.md``, the
restored test images (L1 beside BILD) to ``--out/grid_<backbone>.png`` and, per BILD run, the
training tiles' density beside their learned weight to ``runs/<run>/patch_weights.png``.

    OMP_NUM_THREADS=1 python benchmarks/bild_nonuniform.py --out results/bild_nonuniform
    python benchmarks/bild_nonuniform.py --steps 20 --seeds 0 --models aod_net --out /tmp/bild_smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from skimage.transform import resize

from harness.data import synth
from harness.data.io import read_image, to_array, to_tensor, write_image
from harness.errors import HarnessError
from harness.metrics.base import build_metric
from harness.models import build_backbone
from harness.plugins import load_plugins
from harness.pretrain.bild import patch_weight_maps, per_patch_loss, split_pairs, tiles
from harness.pretrain.supervised import pretrain_supervised
from harness.registry import REWEIGHTS

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "clean_kodak24"
METHODS = ("l1", "l1_90", "bild", "bild_train")
DENSE = 0.6  # 1 - t above this counts as dense haze
SIZE = 128  # the 500x500 Kodak crops, resized


def haze(clear: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Strongly non-uniform haze: ``(hazy, t)``."""
    depth = synth.estimate_depth(clear)
    field = synth.random_field(clear.shape[:2], rng, cells=int(rng.integers(2, 4)))
    beta = 0.1 + 2.2 * field
    t = synth.transmission(0.3 + 0.7 * depth, beta)
    airlight = rng.uniform(0.75, 1.0)
    return np.clip(synth.scatter(clear, t, airlight), 0, 1), t


def build_pairs(folder: Path, photos: list[Path], copies: int, seed: int) -> list[dict]:
    """Render (or reuse) ``copies`` hazings of each photo: clear/hazy PNGs and t as .npy."""
    rng = np.random.default_rng(seed)
    pairs = []
    for photo in photos:
        image = read_image(photo)
        clear = np.clip(resize(image, (SIZE, SIZE), anti_aliasing=True), 0, 1).astype(np.float32)
        for k in range(copies):
            name = f"{photo.stem}_{k}"
            paths = {key: folder / f"{name}_{key}.{ext}" for key, ext in (("clear", "png"), ("hazy", "png"),
                                                                          ("t", "npy"))}
            hazy, t = haze(clear, rng)  # drawn even when cached, so the fields do not depend on the cache
            if not all(p.is_file() for p in paths.values()):
                folder.mkdir(parents=True, exist_ok=True)
                write_image(paths["clear"], clear)
                write_image(paths["hazy"], hazy)
                np.save(paths["t"], t)
            pairs.append({"name": name, **paths})
    return pairs


def load(pairs: list[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[np.ndarray]]:
    return ([to_tensor(read_image(p["hazy"])) for p in pairs], [to_tensor(read_image(p["clear"])) for p in pairs],
            [np.load(p["t"]) for p in pairs])


def restore(model: torch.nn.Module, hazy: list[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        return [to_array(model(h[None])[0].clamp(0, 1)) for h in hazy]


def dense_psnr(out: np.ndarray, clear: np.ndarray, t: np.ndarray) -> float:
    """PSNR over the pixels whose haze density 1 - t exceeds ``DENSE`` (all channels)."""
    mask = (1 - t) > DENSE
    if not mask.any():
        return float("nan")
    mse = float(((out - clear) ** 2)[mask].mean())
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def tile_density(t: np.ndarray, size: int) -> np.ndarray:
    """mean(1 - t) of each non-overlapping tile, rows x cols."""
    rows, cols = t.shape[0] // size, t.shape[1] // size
    cut = (1 - t[:rows * size, :cols * size]).reshape(rows, size, cols, size)
    return cut.mean(axis=(1, 3))


def correlations(reweighter, model, hazy, clear, ts, size: int) -> dict[str, float]:
    """Pearson/Spearman of the learned tile weights with haze density and with the model's tile L1."""
    weights = [m.numpy().ravel() for m in patch_weight_maps(reweighter, hazy, clear, size)]
    density = [tile_density(t, size).ravel() for t in ts]
    losses = []
    with torch.no_grad():
        for h, c in zip(hazy, clear):
            th, _, _ = tiles(h, size)
            tc, _, _ = tiles(c, size)
            losses.append(per_patch_loss("l1", model(th), tc).numpy())
    w, d, l = (np.concatenate(v) for v in (weights, density, losses))
    within = [stats.spearmanr(a, b).statistic for a, b in zip(weights, density) if np.ptp(a) > 0]
    return {"pearson_weight_density": float(stats.pearsonr(w, d).statistic),
            "spearman_weight_density": float(stats.spearmanr(w, d).statistic),
            "spearman_weight_density_within_image": float(np.mean(within)) if within else float("nan"),
            "spearman_weight_tile_l1": float(stats.spearmanr(w, l).statistic),
            "spearman_density_tile_l1": float(stats.spearmanr(d, l).statistic),
            "weight_min": float(w.min()), "weight_max": float(w.max()), "weight_std": float(w.std()),
            "tiles": len(w)}


def run_one(backbone: str, method: str, seed: int, args, train, test, work: Path) -> dict:
    hazy, clear, ts = train
    torch.manual_seed(seed)
    model = build_backbone(backbone, "tiny")
    common = dict(steps=args.steps, lr=args.lr, batch_size=args.batch, patch_size=args.patch, seed=seed,
                  state_path=work / "state.pt", checkpoint_every=args.steps + 1)
    start = time.perf_counter()
    info: dict = {}
    if method in ("l1", "l1_90"):
        keep = split_pairs(len(hazy), 0.1)[0] if method == "l1_90" else list(range(len(hazy)))
        model, result = pretrain_supervised(model, [hazy[i] for i in keep], [clear[i] for i in keep], **common)
    else:
        objective = "validation" if method == "bild" else "training"
        config = REWEIGHTS.build("bild", alpha=args.alpha, lr=args.outer_lr, objective=objective,
                                 reward=args.reward)
        model, result, stepper = config.pretrain(model, hazy, clear, **common)
        info = {**stepper.summary(), **correlations(stepper.reweighter, model, hazy, clear, ts, args.patch)}
        torch.save(stepper.reweighter.state_dict(), work / "reweighter.pt")
        weight_density_figure(stepper.reweighter, hazy[:6], clear[:6], ts[:6], args.patch,
                              work / "patch_weights.png")
    seconds = time.perf_counter() - start
    (work / "state.pt").unlink(missing_ok=True)
    outputs = restore(model, test[0])
    psnr, ssim = build_metric("psnr"), build_metric("ssim")
    refs = [to_array(c) for c in test[1]]
    scores = {"psnr": float(np.mean([psnr.score(o, r) for o, r in zip(outputs, refs)])),
              "ssim": float(np.mean([ssim.score(o, r) for o, r in zip(outputs, refs)])),
              "psnr_dense": float(np.nanmean([dense_psnr(o, r, t) for o, r, t in zip(outputs, refs, test[2])]))}
    np.save(work / "outputs.npy", np.stack(outputs))
    return {"backbone": backbone, "method": method, "seed": seed, "seconds": seconds, "scores": scores,
            "bild": info, "curve": result.curve}


def weight_density_figure(reweighter, hazy, clear, ts, size: int, out: Path) -> None:
    """Fig. 7 style, with the ground truth beside it: hazy | tile haze density mean(1 - t) | tile weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = patch_weight_maps(reweighter, hazy, clear, size)
    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.4 * len(maps)), squeeze=False)
    top = max(float((m - 1).abs().max()) for m in maps)
    for row, h, t, m in zip(axes, hazy, ts, maps):
        density = tile_density(t, size)
        row[0].imshow(to_array(h))
        row[1].imshow(density, cmap="gray_r", vmin=0, vmax=1)
        row[2].imshow(m.numpy(), cmap="coolwarm", vmin=1 - top, vmax=1 + top)
        for r in range(density.shape[0]):
            for c in range(density.shape[1]):
                row[1].text(c, r, f"{density[r, c]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if density[r, c] > 0.5 else "black")
                row[2].text(c, r, f"{float(m[r, c]):.2f}", ha="center", va="center", fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], ("hazy", "haze density 1 - t (tile mean)", "BILD weight (mean 1 per image)")):
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def image_grid(rows: list[list[np.ndarray]], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(labels), figsize=(2.2 * len(labels), 1.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r][c].imshow(np.clip(image, 0, 1))
            axes[r][c].set_xticks([])
            axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(labels[c], fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bild_nonuniform"))
    parser.add_argument("--models", default="aod_net,ffa_net")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=10, help="paper: 10")
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--outer-lr", type=float, default=0.01, help="paper: 0.1 (collapses f_w here)")
    parser.add_argument("--reward", choices=("raw", "standardised"), default="raw")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_plugins()
    if not KODAK.is_dir():
        raise HarnessError(f"{KODAK} not found", "run from a worktree next to ../shared/data/clean_kodak24")
    photos = sorted(KODAK.glob("kodim*.png"))
    data = args.out / "data"
    train = load(build_pairs(data / "train", photos[:16], 2, seed=1))
    test_pairs = build_pairs(data / "test", photos[16:], 2, seed=2)
    test = load(test_pairs)
    settings = {k: getattr(args, k) for k in ("steps", "lr", "batch", "patch", "alpha", "outer_lr", "reward")}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    results = []
    for backbone in args.models.split(","):
        for method in args.methods.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                work = args.out / "runs" / f"{backbone}_{method}_s{seed}_{key}"
                record = work / "result.json"
                if not record.is_file():
                    work.mkdir(parents=True, exist_ok=True)
                    res = run_one(backbone, method, seed, args, train, test, work)
                    record.write_text(json.dumps({**res, "settings": settings}, indent=1))
                    print(f"{backbone} {method} seed {seed}: {res['scores']} ({res['seconds']:.0f} s)", flush=True)
                results.append(json.loads(record.read_text()))

    psnr, ssim = build_metric("psnr"), build_metric("ssim")
    hazy_in = [to_array(h) for h in test[0]]
    refs = [to_array(c) for c in test[1]]
    identity = [f"{np.mean([m.score(h, r) for h, r in zip(hazy_in, refs)]):.3f}" for m in (psnr, ssim)]
    identity.append(f"{np.nanmean([dense_psnr(h, r, t) for h, r, t in zip(hazy_in, refs, test[2])]):.3f}")
    lines = [f"settings: {settings}; train {len(train[0])} pairs, test {len(test[0])} pairs; mean ± std over seeds",
             "", "| backbone | method | PSNR | SSIM | PSNR dense (1-t>0.6) | spearman(w, 1-t) | spearman(w, tile L1) "
             "| w range | train s |", "|---|---|---|---|---|---|---|---|---|",
             "| (hazy input) | | " + " | ".join(identity) + " | | | | |"]
    for backbone in args.models.split(","):
        for method in args.methods.split(","):
            rs = [r for r in results if r["backbone"] == backbone and r["method"] == method]
            if not rs:
                continue
            cols = [mean_std([r["scores"][m] for r in rs]) for m in ("psnr", "ssim", "psnr_dense")]
            if rs[0]["bild"]:
                cols += [mean_std([r["bild"]["spearman_weight_density"] for r in rs]),
                         mean_std([r["bild"]["spearman_weight_tile_l1"] for r in rs]),
                         f"{min(r['bild']['weight_min'] for r in rs):.2f}..{max(r['bild']['weight_max'] for r in rs):.2f}"]
            else:
                cols += ["", "", ""]
            lines.append(f"| {backbone} | {method} | " + " | ".join(cols)
                         + f" | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    for backbone in args.models.split(","):  # seed 0 restorations: hazy | L1 | BILD | BILD-train | clear
        shown = [m for m in args.methods.split(",")
                 if (args.out / "runs" / f"{backbone}_{m}_s0_{key}" / "outputs.npy").is_file()]
        if not shown:
            continue
        outs = {m: np.load(args.out / "runs" / f"{backbone}_{m}_s0_{key}" / "outputs.npy") for m in shown}
        rows = [[to_array(test[0][i])] + [outs[m][i] for m in shown] + [to_array(test[1][i])]
                for i in range(0, len(test[0]), 2)]
        image_grid(rows, ["hazy"] + [f"{backbone} {m}" for m in shown] + ["clear"],
                   args.out / f"grid_{backbone}.png")
    return {"results": results, "summary": lines}


if __name__ == "__main__":
    main()
