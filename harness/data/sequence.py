"""Lazy, cached image sequences, so pretraining sets larger than memory can feed the patch sampler."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from harness.data.io import read_image, shrink, to_tensor


class ImageSequence(Sequence[torch.Tensor]):
    """``paths`` read on demand as CHW tensors (area-shrunk to a longer side of at most ``max_side``
    when given), keeping the ``cache_size`` most recent in memory."""

    def __init__(self, paths: Sequence[Path], cache_size: int = 256, max_side: int | None = None):
        self.paths = list(paths)
        self.cache_size, self.max_side = cache_size, max_side
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        img = shrink(to_tensor(read_image(self.paths[i])), self.max_side)
        self._cache[i] = img
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return img
