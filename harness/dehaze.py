"""Restore a folder of images at full resolution with a saved checkpoint (and optional adapter).

Images larger than ``tile`` pixels on a side are processed in overlapping tiles blended with
linear ramps, so memory stays bounded whatever the photo size; the network pads each tile to its
own multiple. Every input file gets one PNG output with the same stem (and same size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer
from torch import nn

from harness.data.io import read_image, to_array, to_tensor, write_image
from harness.errors import HarnessError
from harness.models.base import build_backbone
from harness.store import load_weights, sidecar


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A deploy-form model from ``model.safetensors`` and its ``.json`` sidecar."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} not found", "pass --checkpoint RUN_DIR/pretrained/<id>/model.safetensors")
    if not sidecar(path).is_file():
        raise HarnessError(f"checkpoint {path} has no sidecar {sidecar(path).name}",
                           "use a checkpoint written by `harness run` (it records the backbone)")
    import json

    meta = json.loads(sidecar(path).read_text())
    model = build_backbone(meta["backbone"], meta["variant"], **meta.get("options", {}))
    if model.needs_guide:  # e.g. VLU-Net: rebuild the guide it was trained with (never stored with it)
        from harness.guide import guide_from_identity

        guide = guide_from_identity(meta.get("backbone_guide"), str(path))
        guide.model.to(device)
        model.attach_guide(guide)
    if meta.get("form") == "deploy":
        model = model.deploy()
    load_weights(path, model)
    return model.to(device).eval(), meta


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    w = torch.ones(length)
    if overlap > 0:
        ramp = torch.linspace(0, 1, overlap + 2)[1:-1]
        if not at_start:
            w[:overlap] = ramp
        if not at_end:
            w[-overlap:] = ramp.flip(0)
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


@torch.no_grad()
def restore_tiled(model: nn.Module, image: torch.Tensor, tile: int | None = 1024, overlap: int = 32) -> torch.Tensor:
    """Restore a 3xHxW image, in overlapping ``tile``-sized tiles when it is larger than that."""
    device = next(model.parameters()).device
    h, w = image.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return model(image[None].to(device))[0].cpu()
    if overlap * 2 >= tile:
        raise HarnessError(f"tile overlap {overlap} is too large for tile {tile}", "use overlap < tile / 2")
    out = torch.zeros(3, h, w)
    weight = torch.zeros(1, h, w)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = model(image[None, :, y:y + th, x:x + tw].to(device))[0].cpu()
            wy = _ramp(th, overlap, y == ys[0], y == ys[-1])
            wx = _ramp(tw, overlap, x == xs[0], x == xs[-1])
            mask = (wy[:, None] * wx[None, :])[None]
            out[:, y:y + th, x:x + tw] += piece * mask
            weight[:, y:y + th, x:x + tw] += mask
    return out / weight


def dehaze_folder(model: nn.Module, input_dir: Path, output_dir: Path, tile: int | None = 1024,
                  overlap: int = 32, progress=None) -> list[Path]:
    """Restore every file in ``input_dir`` into ``output_dir`` as ``<stem>.png``; returns the outputs."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise HarnessError(f"input folder {input_dir} does not exist", "pass a folder of hazy images")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise HarnessError(f"input folder {input_dir} has no files", "pass a folder of hazy images")
    stems = [p.stem for p in files]
    written = []
    for i, path in enumerate(files):
        # two inputs with one stem (a.jpg, a.png) keep their suffix in the output name
        name = f"{path.stem}.png" if stems.count(path.stem) == 1 else f"{path.name}.png"
        restored = restore_tiled(model, to_tensor(read_image(path)), tile, overlap)
        target = output_dir / name
        write_image(target, to_array(restored))
        written.append(target)
        if progress is not None:
            progress(i + 1, len(files), {})
    return written


def dehaze_command(
    input_dir: Path = typer.Argument(..., help="folder of hazy images (any format, decoded by content)"),
    output_dir: Path = typer.Argument(..., help="where restored PNGs go, one per input, same size"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.safetensors written by `harness run`"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="adapter.safetensors to merge first"),
    tile: int = typer.Option(1024, "--tile", help="largest side restored in one pass; larger images are tiled"),
    overlap: int = typer.Option(32, "--overlap", help="tile overlap in pixels, blended linearly"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
) -> None:
    """Restore every image in INPUT_DIR at full resolution into OUTPUT_DIR."""
    from rich.progress import Progress

    from harness.runner import resolve_device

    model, _ = load_checkpoint(checkpoint, resolve_device(device))
    if adapter is not None:
        from harness.adapt.adapter_io import apply_adapter

        apply_adapter(model, adapter, base_checkpoint=checkpoint)
    with Progress() as bar:
        task = bar.add_task("dehazing", total=None)
        written = dehaze_folder(model, input_dir, output_dir, tile=tile, overlap=overlap,
                                progress=lambda done, total, _: bar.update(task, completed=done, total=total))
    print(f"wrote {len(written)} image(s) to {output_dir}")
