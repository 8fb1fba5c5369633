"""Random training patches with flips and 90-degree rotations, paired or unpaired, seeded."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale an image whose shorter side is below ``size`` so a patch fits."""
    h, w = img.shape[-2:]
    if min(h, w) >= size:
        return img
    scale = size / min(h, w)
    out = F.interpolate(img[None], size=(max(size, round(h * scale)), max(size, round(w * scale))),
                        mode="bilinear", align_corners=False)
    return out[0]


def sample_patches(
    images: list[torch.Tensor],
    batch_size: int,
    size: int,
    generator: torch.Generator,
    targets: list[torch.Tensor] | None = None,
    augment: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``batch_size`` random ``size``-square crops (same crop from ``targets`` when paired).

    Images are CHW float tensors. Returns ``(inputs, targets_or_None)`` as NCHW batches.
    """
    xs, ys = [], []
    for _ in range(batch_size):
        i = int(torch.randint(len(images), (1,), generator=generator))
        x = _fit(images[i], size)
        y = _fit(targets[i], size) if targets is not None else None
        h, w = x.shape[-2:]
        top = int(torch.randint(h - size + 1, (1,), generator=generator))
        left = int(torch.randint(w - size + 1, (1,), generator=generator))
        x = x[:, top : top + size, left : left + size]
        y = y[:, top : top + size, left : left + size] if y is not None else None
        if augment:
            k = int(torch.randint(4, (1,), generator=generator))
            flip = bool(torch.randint(2, (1,), generator=generator))
            x = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
            if y is not None:
                y = torch.rot90(y.flip(-1) if flip else y, k, dims=(-2, -1))
        xs.append(x)
        if y is not None:
            ys.append(y)
    return torch.stack(xs), (torch.stack(ys) if targets is not None else None)
