"""Image reading and writing that trusts file content, not extensions.

Reads any format Pillow decodes (PNG, JPEG, BMP, TIFF, ...) by sniffing the bytes, applies EXIF
orientation, drops alpha, expands grayscale, and scales 8/16-bit and float data to [0, 1].
Pillow truncates 16-bit colour PNGs to 8 bits, so those are decoded with OpenCV (a pyiqa dependency).
A file that cannot be decoded raises a one-line :class:`HarnessError` naming it;
:func:`image_problem` says why a file is unusable (undecodable, or under ``MIN_SIDE`` pixels) without
raising, for screening a dataset. Writes are atomic and refuse non-finite pixels.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harness.errors import HarnessError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MIN_SIDE = 16  # smaller images break FADE's blocks, SSIM's window and DEA-Net's padding
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` to a float32 HxWx3 RGB array in [0, 1]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.format == "PNG" and _png_is_16bit_colour(path):
                return _orient(_read_png16(path), im.getexif().get(_ORIENTATION, 1))
            im.load()
            im = ImageOps.exif_transpose(im)
            arr = _to_rgb_float(im)
    except _DECODE_ERRORS as err:
        raise HarnessError(
            f"cannot decode image {path}: {err.__class__.__name__}",
            "replace or delete the file, or set on_corrupt: skip in the recipe (harness eval: --skip-corrupt)",
        ) from None
    return arr


_ORIENTATION = 0x0112


def image_problem(path: str | Path, decode: bool = True) -> str | None:
    """Why ``path`` is not a usable image, or None. ``decode=False`` reads only the header (size).

    Decoding is what finds truncated files (``Image.verify()`` passes a truncated JPEG); JPEGs are
    decoded at reduced scale (``draft``), which still reads every byte of the compressed data.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if min(w, h) < MIN_SIDE:
                return f"{w}x{h} px, under {MIN_SIDE} px"
            if decode:
                if im.format == "JPEG":
                    im.draft(None, (max(MIN_SIDE, w // 8), max(MIN_SIDE, h // 8)))
                im.load()
    except _DECODE_ERRORS as err:
        return f"cannot decode: {err.__class__.__name__}"
    return None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the header, EXIF orientation ignored (the short side is the same)."""
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def _png_is_16bit_colour(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)  # signature (8) + IHDR length/type (8) + width/height (8) + depth + colour type
    return len(head) == 26 and head[24] == 16 and head[25] in (2, 6)


def _read_png16(path: Path) -> np.ndarray:
    import cv2

    data = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if data is None or data.ndim != 3:
        raise ValueError("16-bit PNG could not be decoded")
    return np.ascontiguousarray(data[..., 2::-1]).astype(np.float32) / 65535.0  # BGR(A) -> RGB


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to an HxWxC array."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _to_rgb_float(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float32)
        peak = 65535.0 if arr.max() > 255 or im.mode.startswith("I;16") else 255.0
        arr = np.clip(arr / peak, 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode == "F":
        arr = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HxWx3 float array -> 3xHxW float tensor."""
    import torch  # lazily: evaluation workers scoring with numpy-only metrics start faster without it

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def shrink(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """A 3xHxW image area-downscaled so its longer side is at most ``max_side`` (None: unchanged)."""
    import torch.nn.functional as F

    if max_side is None or max(image.shape[-2:]) <= max_side:
        return image
    scale = max_side / max(image.shape[-2:])
    size = (max(1, round(image.shape[-2] * scale)), max(1, round(image.shape[-1] * scale)))
    return F.interpolate(image[None], size=size, mode="area")[0]


def to_array(t: torch.Tensor) -> np.ndarray:
    """3xHxW (or 1x3xHxW) tensor -> HxWx3 float32 array clipped to [0, 1]."""
    if t.dim() == 4:
        t = t[0]
    return t.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)


def write_image(path: str | Path, arr: np.ndarray) -> None:
    """Write an HxWx3 float array in [0, 1] as an 8-bit image (format from the suffix), atomically.

    Non-finite values are refused: casting them to 8 bits would silently paint those pixels black.
    """
    path = Path(path)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise HarnessError(f"refusing to write {path}: {bad.any(axis=-1).mean():.1%} of its pixels are not finite",
                           "find where the NaN/inf values come from (e.g. a model that diverged)")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray((np.clip(arr, 0, 1) * 255.0 + 0.5).astype(np.uint8))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # open() respects the umask
    try:
        with open(tmp, "xb") as f:
            image.save(f, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
