"""Restore a folder of images at full resolution with a saved checkpoint (and optional adapter).

Images larger than ``tile`` pixels on a side are processed in overlapping tiles blended with
linear ramps, so memory stays bounded whatever the photo size; the network pads each tile to its
own multiple. Every input file gets one PNG output with the same stem (and same size).

Nothing is lost: everything is checked before the first image is restored (the output folder is
not, and is not inside or around, the input folder; no existing file is replaced without
``overwrite``; the tiling options; every input decodes; checkpoint and adapter fit each other), and
an image with non-finite pixels is never written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from torch import nn

from harness.data.io import image_problem, read_image, to_array, to_tensor, write_image
from harness.errors import HarnessError
from harness.models.base import build_backbone
from harness.store import sidecar

MIN_TILE = 16


def _sidecar_meta(path: Path, role: str) -> dict:
    try:
        return json.loads(sidecar(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise HarnessError(f"{role} {path}: its sidecar {sidecar(path).name} is not readable JSON",
                           f"use the {role} and .json written together by `harness run`") from None


def _tensors(path: Path, role: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        raise HarnessError(f"{role} {path} is not a safetensors file",
                           f"pass the {role} written by `harness run` (RUN_DIR/pretrained/<id>/model.safetensors "
                           "or RUN_DIR/adapted/<id>/)") from None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A deploy-form model from ``model.safetensors`` and its ``.json`` sidecar; a file that is an
    adapter, not safetensors, or of another backbone than its sidecar says is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"checkpoint {path} not found",
                           "pass --checkpoint RUN_DIR/pretrained/<id>/model.safetensors")
    if not sidecar(path).is_file():
        raise HarnessError(f"checkpoint {path} has no sidecar {sidecar(path).name}",
                           "use a checkpoint written by `harness run` (it records the backbone)")
    meta = _sidecar_meta(path, "checkpoint")
    if "sites" in meta:
        raise HarnessError(f"{path} is an adapter, not a model checkpoint",
                           "pass it as --adapter, and the base model.safetensors it was trained on as --checkpoint")
    if "backbone" not in meta:
        raise HarnessError(f"checkpoint {path}: its sidecar names no backbone",
                           "use a checkpoint written by `harness run`")
    model = build_backbone(meta["backbone"], meta.get("variant", "full"), **meta.get("options", {}))
    if model.needs_guide:  # e.g. VLU-Net: rebuild the guide it was trained with (never stored with it)
        from harness.guide import guide_from_identity

        guide = guide_from_identity(meta.get("backbone_guide"), str(path))
        guide.model.to(device)
        model.attach_guide(guide)
    if meta.get("form") == "deploy":
        model = model.deploy()
    state = _tensors(path, "checkpoint")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        name = f"{meta['backbone']}-{meta.get('variant', 'full')}"
        raise HarnessError(
            f"checkpoint {path} does not hold {name} weights, as its sidecar says ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} wrong-shaped tensors; e.g. "
            f"{(missing + unexpected + reshaped)[0]})",
            "pass the model.safetensors and .json written together by `harness run`")
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def merge_adapter(model: nn.Module, adapter: Path, checkpoint: Path, checkpoint_meta: dict) -> nn.Module:
    """Merge ``adapter`` into ``model``: an adapter of another backbone or base is a one-line error."""
    from harness.adapt.adapter_io import apply_adapter

    adapter = Path(adapter)
    if not adapter.is_file() or not sidecar(adapter).is_file():
        raise HarnessError(f"adapter {adapter} (or its {sidecar(adapter).name}) not found",
                           "pass an adapter.safetensors written by `harness run` (RUN_DIR/adapted/<id>/)")
    meta = _sidecar_meta(adapter, "adapter")
    if "sites" not in meta:
        swapped = " (it is a model checkpoint: were --checkpoint and --adapter swapped?)" if "backbone" in meta else ""
        raise HarnessError(f"{adapter} is not an adapter{swapped}",
                           "pass RUN_DIR/adapted/<id>/adapter.safetensors as --adapter and the base "
                           "model.safetensors as --checkpoint")
    ours = (checkpoint_meta["backbone"], checkpoint_meta.get("variant", "full"))
    theirs = (meta.get("backbone", ours[0]), meta.get("variant", ours[1]))
    if theirs != ours:
        raise HarnessError(f"adapter {adapter} belongs to {'-'.join(theirs)}, the checkpoint is {'-'.join(ours)}",
                           "pass the --checkpoint the adapter was trained from (RUN_DIR/pretrained/<id>/)")
    _tensors(adapter, "adapter")  # a clear error for a file that is not safetensors
    try:
        return apply_adapter(model, adapter, base_checkpoint=checkpoint)
    except (KeyError, RuntimeError, AttributeError) as err:
        raise HarnessError(f"adapter {adapter} does not fit the checkpoint ({type(err).__name__}: {err})",
                           "pass the --checkpoint the adapter was trained from") from None


def check_tiling(tile: int | None, overlap: int) -> None:
    """Tiles at least ``MIN_TILE`` px that overlap by ``0 <= overlap < tile / 2`` cover every pixel."""
    if tile is None:
        return
    if tile < MIN_TILE:
        raise HarnessError(f"tile size {tile} is below {MIN_TILE} px", f"use --tile of at least {MIN_TILE} (e.g. 1024)")
    if overlap < 0:
        raise HarnessError(f"tile overlap {overlap} is negative: tiles would leave gaps", "use --overlap 0 or more")
    if overlap * 2 >= tile:
        raise HarnessError(f"tile overlap {overlap} is too large for tile {tile}", "use overlap < tile / 2")


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
    check_tiling(tile, overlap)
    device = next(model.parameters()).device
    h, w = image.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return model(image[None].to(device))[0].cpu()
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


def _check_output(input_dir: Path, output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise HarnessError(f"output {output_dir} is a file", "pass a folder for the outputs (created if missing)")
    src, dst = input_dir.resolve(), output_dir.resolve()
    relation = ("is" if dst == src else "lies inside" if dst.is_relative_to(src)
                else "contains" if src.is_relative_to(dst) else None)
    if relation:
        raise HarnessError(f"output folder {output_dir} {relation} the input folder {input_dir}",
                           f"write the outputs to a folder outside it, e.g. {src.parent / (src.name + '_dehazed')}")


def plan_outputs(input_dir: Path, output_dir: Path, overwrite: bool = False,
                 skip_corrupt: bool = False) -> list[tuple[Path, Path]]:
    """``(input, output)`` pairs after every check that can be made before restoring anything."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise HarnessError(f"input folder {input_dir} does not exist", "pass a folder of hazy images")
    _check_output(input_dir, output_dir)
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise HarnessError(f"input folder {input_dir} has no files", "pass a folder of hazy images")
    stems = [p.stem for p in files]
    # two inputs with one stem (a.jpg, a.png) keep their suffix in the output name
    jobs = [(p, output_dir / (f"{p.stem}.png" if stems.count(p.stem) == 1 else f"{p.name}.png")) for p in files]
    bad = {p: why for p in files if (why := image_problem(p)) is not None}
    if bad:
        listed = ", ".join(f"{p.name} ({why})" for p, why in list(bad.items())[:5]) + (" ..." if len(bad) > 5 else "")
        if not skip_corrupt:
            raise HarnessError(f"{len(bad)} of the {len(files)} files in {input_dir} are not usable images: {listed}",
                               "move them out of the folder, or pass --skip-corrupt to restore the others")
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[yellow]warning:[/] skipping {len(bad)} unusable file(s): {escape(listed)}",
                                   highlight=False, soft_wrap=True)
        jobs = [(src, dst) for src, dst in jobs if src not in bad]
        if not jobs:
            raise HarnessError(f"no file in {input_dir} is a usable image", "pass a folder of hazy images")
    existing = [dst for _, dst in jobs if dst.exists()]
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise HarnessError(f"{len(existing)} of the {len(jobs)} outputs already exist in {output_dir} ({names})",
                           "pass --overwrite to replace them, or choose another output folder")
    return jobs


def dehaze_folder(model: nn.Module, input_dir: Path, output_dir: Path, tile: int | None = 1024,
                  overlap: int = 32, progress=None, overwrite: bool = False,
                  skip_corrupt: bool = False) -> list[Path]:
    """Restore every file in ``input_dir`` into ``output_dir`` as ``<stem>.png``; returns the outputs."""
    check_tiling(tile, overlap)
    jobs = plan_outputs(input_dir, output_dir, overwrite=overwrite, skip_corrupt=skip_corrupt)
    return restore_files(model, jobs, tile, overlap, progress)


def restore_files(model: nn.Module, jobs: list[tuple[Path, Path]], tile: int | None = 1024, overlap: int = 32,
                  progress=None) -> list[Path]:
    """Restore each ``(input, output)`` of :func:`plan_outputs`; returns the outputs written."""
    written = []
    for i, (path, target) in enumerate(jobs):
        restored = restore_tiled(model, to_tensor(read_image(path)), tile, overlap)
        write_image(target, to_array(restored))  # refuses non-finite pixels
        written.append(target)
        if progress is not None:
            progress(i + 1, len(jobs), {})
    return written


def dehaze_command(
    input_dir: Path = typer.Argument(..., help="folder of hazy images (any format, decoded by content)"),
    output_dir: Path = typer.Argument(..., help="where restored PNGs go, one per input, same size; outside INPUT_DIR"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.safetensors written by `harness run`"),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="adapter.safetensors to merge first"),
    tile: int = typer.Option(1024, "--tile", help=f"largest side restored in one pass (>= {MIN_TILE}); larger: tiles"),
    overlap: int = typer.Option(32, "--overlap", help="tile overlap in pixels, blended; 0 <= overlap < tile/2"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace outputs that already exist"),
    skip_corrupt: bool = typer.Option(False, "--skip-corrupt", help="skip files that are not decodable images"),
) -> None:
    """Restore every image in INPUT_DIR at full resolution into OUTPUT_DIR."""
    from rich.progress import Progress

    from harness.validate import check_device

    check_tiling(tile, overlap)
    jobs = plan_outputs(input_dir, output_dir, overwrite=overwrite, skip_corrupt=skip_corrupt)
    model, meta = load_checkpoint(checkpoint, check_device(device))
    if adapter is not None:
        merge_adapter(model, adapter, checkpoint, meta)
    with Progress() as bar:
        task = bar.add_task("dehazing", total=None)
        written = restore_files(model, jobs, tile, overlap,
                                progress=lambda done, total, _: bar.update(task, completed=done, total=total))
    print(f"wrote {len(written)} image(s) to {output_dir}")
