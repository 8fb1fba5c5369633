"""GridDehazeNet (Liu et al., ICCV 2019): attention-based multi-scale grid of residual dense blocks.

Pre-processing (3x3 conv + RDB) feeds a grid of ``rows`` scales x ``cols`` columns. Row ``i`` has
``width * 2**i`` channels; along a row, RDBs; down a column, stride-2 downsamplers (first half of
the columns); up a column, transposed-conv upsamplers (second half). Where two streams meet, they
are summed with learned per-channel weights (the "attention"). Post-processing: RDB, 3x3 conv,
ReLU.

Names follow proteus1991/GridDehazeNet ``model.py``: ``conv_in``, ``rdb_in``, ``rdb_module['i_j']``
(RDB from column j to j+1 of row i), ``downsample_module['i_j']`` (row i to i+1 at column j),
``upsample_module['i_j']`` (row i+1 to i at column j), ``coefficient[i, j, stream, channel]``
(stream 0 = along the row, 1 = across rows), ``rdb_out``, ``conv_out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import (
    DehazeNet,
    Published,
    register_backbone,
    sites_under,
    variant_config,
)
from harness.models.blocks import ResidualDenseBlock, conv3x3


class DownSample(nn.Module):
    """Halve the size (3x3 stride-2 conv) and double the channels (3x3 conv), both with ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, stride=2)
        self.conv2 = conv3x3(channels, 2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UpSample(nn.Module):
    """Double the size to ``size`` (3x3 stride-2 transposed conv) and halve the channels, with ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(channels, channels, 3, stride=2, padding=1)
        self.conv = conv3x3(channels, channels // 2)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.relu(self.conv(F.relu(self.deconv(x, output_size=size))))


class GridDehazeNet(DehazeNet):
    """The grid network; the paper's is ``width=16, rows=3, cols=6``, RDBs of 4 layers x 16."""

    multiple = 1

    def __init__(self, width: int = 16, rows: int = 3, cols: int = 6, dense_layers: int = 4,
                 growth: int = 16):
        super().__init__()
        if cols % 2 or cols < 4:
            raise ValueError("GridDehazeNet needs an even number of columns >= 4")
        self.rows, self.cols = rows, cols
        self.widths = [width * 2**i for i in range(rows)]

        def rdb(channels: int) -> ResidualDenseBlock:
            return ResidualDenseBlock(channels, dense_layers, growth)

        self.conv_in = conv3x3(3, width)
        self.rdb_in = rdb(width)
        self.rdb_module = nn.ModuleDict(
            {f"{i}_{j}": rdb(self.widths[i]) for i in range(rows) for j in range(cols - 1)})
        self.downsample_module = nn.ModuleDict(
            {f"{i}_{j}": DownSample(self.widths[i]) for i in range(rows - 1) for j in range(cols // 2)})
        self.upsample_module = nn.ModuleDict(
            {f"{i}_{j}": UpSample(self.widths[i + 1]) for i in range(rows - 1) for j in range(cols // 2, cols)})
        # official shape: one slot per node and stream, sized for the widest row (mostly unused)
        self.coefficient = nn.Parameter(torch.ones(rows, cols, 2, self.widths[-1]))
        self.rdb_out = rdb(width)
        self.conv_out = conv3x3(width, 3)

    def _weighted(self, i: int, j: int, along: torch.Tensor, across: torch.Tensor) -> torch.Tensor:
        c = self.widths[i]
        w_along, w_across = self.coefficient[i, j, 0, :c], self.coefficient[i, j, 1, :c]
        return w_along[:, None, None] * along + w_across[:, None, None] * across

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols, half = self.rows, self.cols, self.cols // 2
        grid: list[list[torch.Tensor | None]] = [[None] * cols for _ in range(rows)]
        grid[0][0] = self.rdb_in(self.conv_in(x))
        for i in range(rows):  # downsampling half: left to right, top to bottom
            for j in range(half):
                if i == 0 and j == 0:
                    continue
                along = self.rdb_module[f"{i}_{j - 1}"](grid[i][j - 1]) if j > 0 else None
                across = self.downsample_module[f"{i - 1}_{j}"](grid[i - 1][j]) if i > 0 else None
                if along is None or across is None:  # first row or first column: one stream
                    grid[i][j] = along if across is None else across
                else:
                    grid[i][j] = self._weighted(i, j, along, across)
        for i in range(rows - 1, -1, -1):  # upsampling half: bottom row first
            for j in range(half, cols):
                along = self.rdb_module[f"{i}_{j - 1}"](grid[i][j - 1])
                if i == rows - 1:
                    grid[i][j] = along
                else:
                    across = self.upsample_module[f"{i}_{j}"](grid[i + 1][j], grid[i][j - 1].shape[-2:])
                    grid[i][j] = self._weighted(i, j, along, across)
        return F.relu(self.conv_out(self.rdb_out(grid[0][cols - 1])))

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per RDB (its dense 3x3 convs and 1x1 fusion) and per down/up sampler."""
        groups = {"rdb_in": sites_under(self, "rdb_in"), "rdb_out": sites_under(self, "rdb_out")}
        for kind in ("rdb_module", "downsample_module", "upsample_module"):
            for key in getattr(self, kind):
                groups[f"{kind}.{key}"] = sites_under(self, f"{kind}.{key}")
        return groups


_CONFIGS = {
    "full": {"width": 16, "rows": 3, "cols": 6, "dense_layers": 4, "growth": 16},
    "tiny": {"width": 8, "rows": 3, "cols": 4, "dense_layers": 2, "growth": 8},
}


@register_backbone(
    "grid_dehaze_net",
    variants={
        # 21.4 G is thop's count, which charges each stride-2 transposed conv 4x its real work
        # (our count: 18.7 G); thop's parameter count (0.956 M) also misses the fusion weights
        "full": Published(958_000, 21.4e9, "thop", "GridDehazeNet official repo; MACs by thop"),
        "tiny": None,
    },
    multiple=1,
    channels_last=True,  # CPU training 1.44x (tiny) / 1.11x (full) faster: backbone_throughput.py --compare layout
    description="GridDehazeNet: 3x6 grid of residual dense blocks with learned per-channel stream fusion",
)
def build_grid_dehaze_net(variant: str = "full") -> GridDehazeNet:
    """GridDehazeNet; ``full`` = 3x6 grid at 16/32/64 ch, RDBs 4x16; ``tiny`` = 3x4 grid at 8/16/32
    ch, RDBs 2x8."""
    return GridDehazeNet(**variant_config("grid_dehaze_net", _CONFIGS, variant))
