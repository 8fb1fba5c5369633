"""DeHamer (Guo et al., CVPR 2022): a Swin transformer branch modulating a CNN U-Net.

The transformer branch embeds 2x2 patches, adds a transmission-aware 3D position embedding
(sine codes of x, y and the dark channel of the input) and runs three Swin stages (1/2, 1/4,
1/8). The CNN encoder (conv pairs + max-pool, each followed by pyramid pooling) gives 1/2..1/16
features; at 1/8, 1/4 and 1/2 the decoder concatenates the skip, the skip instance-normalised and
modulated by Swin features (scale and shift from two 3x3 convs), and the upsampled decoder
feature; MIRNet multi-scale residual blocks refine the 1/4 and 1/2 decoder features.

Only the modules the official forward uses are built: the official ``UNet_emb`` also constructs
unused ones (E_block5, _block2, _block6, conv3_3, conv4_1..4, MSRB1, MSRB4 and unused MSRB
branches), which is why its checkpoints hold 132.45 M parameters while 29.45 M are trained.
Module names follow Li-Chongyi/Dehamer ``src/swin_unet.py``; :data:`UNUSED_OFFICIAL_KEYS`
lists the checkpoint keys of the unused modules.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import DehazeNet, Published, register_backbone, sites_under, variant_config
from harness.models.checkpoints import register_key_map

# ---------------------------------------------------------------- transformer branch


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the residual branch per sample with probability ``p``."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.num_heads, n, n)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, drop_path: float,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.window_size, self.shift, self.drop_prob = window_size, shift, drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, mask: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        ws = self.window_size
        y = self.norm1(x).view(b, h, w, c)
        ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
        y = F.pad(y, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = window_merge(self.attn(window_partition(y, ws), mask if self.shift else None), ws, hp, wp)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, c)
        x = x + drop_path(y, self.drop_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training)


class PatchMerging(nn.Module):
    """2x2 token merge: (B, H*W, C) -> (B, H/2*W/2, 2C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = F.pad(x.view(b, h, w, c), (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (windows, ws*ws, ws*ws) keeping attention inside each pre-shift region."""
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    regions = torch.zeros(1, hp, wp, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(cuts):
        for j, wsl in enumerate(cuts):
            regions[:, hs, wsl, :] = 3 * i + j
    ids = window_partition(regions, ws).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating plain and shifted windows, then a merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_paths: list[float],
                 downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = shifted_window_mask(h, w, self.window_size, self.window_size // 2, x.device)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        return x, (self.downsample(x, h, w) if self.downsample is not None else x)


def dark_channel(x: torch.Tensor, kernel: int = 15) -> torch.Tensor:
    """Dark channel prior: min over colour, then a ``kernel`` x ``kernel`` min filter (reflect pad)."""
    pad = (kernel - 1) // 2
    darkest = F.pad(x.amin(dim=1, keepdim=True), (pad,) * 4, mode="reflect")
    return -F.max_pool2d(-darkest, kernel, stride=1)


def position_embedding_3d(h: int, w: int, depth: torch.Tensor, feats: int,
                          temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine codes of x, y (normalised to [0, 2pi]) and of ``depth`` (B, 1, h, w) normalised
    per image; ``feats`` channels each, concatenated x, y, z -> (B, 3 * feats, h, w)."""
    b, eps, scale = depth.shape[0], 1e-6, 2 * math.pi
    dev = depth.device
    ys = torch.arange(h, dtype=torch.float32, device=dev)
    xs = torch.arange(w, dtype=torch.float32, device=dev)
    y_embed = (ys / (ys.max() + eps) * scale)[None, :, None].expand(b, h, w)
    x_embed = (xs / (xs.max() + eps) * scale)[None, None, :].expand(b, h, w)
    z = depth[:, 0].float()
    z_embed = z / (z.reshape(b, -1).amax(dim=1)[:, None, None] + eps) * scale
    dim_t = torch.arange(feats, dtype=torch.float32, device=dev)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)

    def code(e: torch.Tensor) -> torch.Tensor:
        p = e[..., None] / dim_t
        return torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((code(x_embed), code(y_embed), code(z_embed)), dim=3).permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SwinBranch(nn.Module):
    """Swin encoder with the dark-channel 3D position embedding; returns (1/2, 1/4, 1/8) maps."""

    def __init__(self, embed_dim: int = 96, depths=(2, 2, 2), num_heads=(3, 6, 12), window_size: int = 7,
                 patch_size: int = 2, drop_path_rate: float = 0.2):
        super().__init__()
        self.pos_feats = embed_dim // 3
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        n = sum(depths)
        dpr = [drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # plain floats: works on meta too
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList(
            BasicLayer(dims[i], depths[i], num_heads[i], window_size, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                       downsample=i < len(depths) - 1)
            for i in range(len(depths))
        )
        for i, d in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(d))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        depth = dark_channel(x)
        x = self.patch_embed(x)
        b, _, h, w = x.shape
        depth = F.interpolate(depth, size=(h, w), mode="bicubic")
        x = (x + position_embedding_3d(h, w, depth, self.pos_feats)).flatten(2).transpose(1, 2)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x, h, w)
            out = getattr(self, f"norm{i}")(out)
            outs.append(out.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
            h, w = (h + 1) // 2, (w + 1) // 2
        return outs


# ---------------------------------------------------------------- MIRNet refinement (MSRB)


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling with a fixed [1 2 1]^2 / 16 filter (reflect pad)."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ResidualDownSample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.top = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.PReLU(), nn.Conv2d(c, c, 3, 1, 1, bias=False),
                                 nn.PReLU(), BlurDownsample(c), nn.Conv2d(c, 2 * c, 1, bias=False))
        self.bot = nn.Sequential(BlurDownsample(c), nn.Conv2d(c, 2 * c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class ResidualUpSample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.top = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.PReLU(),
                                 nn.ConvTranspose2d(c, c, 3, 2, 1, output_padding=1, bias=False),
                                 nn.PReLU(), nn.Conv2d(c, c // 2, 1, bias=False))
        self.bot = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                 nn.Conv2d(c, c // 2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class Resample(nn.Module):
    """``steps`` residual down- or up-samplings by 2, doubling or halving channels each time."""

    def __init__(self, c: int, steps: int, down: bool):
        super().__init__()
        chans = [c * 2**i for i in range(steps)] if down else [c // 2**i for i in range(steps)]
        self.body = nn.Sequential(*(ResidualDownSample(ch) if down else ResidualUpSample(ch) for ch in chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = nn.Module()  # keeps the official key SA.spatial.conv.weight
        self.spatial.conv = nn.Conv2d(2, 1, 5, padding=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)), dim=1)
        return x * torch.sigmoid(self.spatial.conv(pooled))


class ChannelAttention(nn.Module):
    def __init__(self, c: int, reduction: int = 8):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(c, c // reduction, 1, bias=False), nn.ReLU(inplace=True),
                                     nn.Conv2d(c // reduction, c, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class DAU(nn.Module):
    """Dual attention unit: conv-PReLU-conv, then spatial and channel attention fused by 1x1."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.PReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False))
        self.SA = SpatialAttention()
        self.CA = ChannelAttention(c)
        self.conv1x1 = nn.Conv2d(2 * c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        return x + self.conv1x1(torch.cat((self.SA(res), self.CA(res)), dim=1))


class SKFF(nn.Module):
    """Selective kernel feature fusion of ``height`` same-shape inputs."""

    def __init__(self, c: int, height: int, reduction: int = 8):
        super().__init__()
        d = max(c // reduction, 4)
        self.conv_du = nn.Sequential(nn.Conv2d(c, d, 1, bias=False), nn.PReLU())
        self.fcs = nn.ModuleList(nn.Conv2d(d, c, 1, bias=False) for _ in range(height))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(feats, dim=1)
        z = self.conv_du(stacked.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        weights = torch.stack([fc(z) for fc in self.fcs], dim=1).softmax(dim=1)
        return (stacked * weights).sum(dim=1)


class MSRB(nn.Module):
    """MIRNet multi-scale residual block, height 3 and width 1 as DeHamer configures it:
    a DAU per scale (1, 1/2, 1/4), back to full scale, SKFF, 3x3 conv, residual."""

    def __init__(self, c: int, height: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleList([DAU(c * 2**i)]) for i in range(height))
        self.down = nn.ModuleDict({f"{c * 2**i}_2": Resample(c * 2**i, 1, down=True) for i in range(height - 1)})
        self.last_up = nn.ModuleDict({f"{i}": Resample(c * 2**i, i, down=False) for i in range(1, height)})
        self.selective_kernel = nn.ModuleList([SKFF(c, height)])
        self.conv_out = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, feat = [], x
        for j, blocks in enumerate(self.blocks):
            feat = blocks[0](feat if j == 0 else self.down[f"{feat.shape[1]}_2"](feat))
            feats.append(feat)
        feats = [f if k == 0 else self.last_up[f"{k}"](f) for k, f in enumerate(feats)]
        return x + self.conv_out(self.selective_kernel[0](feats))


# ---------------------------------------------------------------- CNN branch and the network


class PPM(nn.Module):
    """Pyramid pooling: the input plus 1x1-reduced average pools (1, 2, 3, 4 bins), upsampled."""

    def __init__(self, c: int, reduction: int, bins=(1, 2, 3, 4)):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(c, reduction, 1, bias=False), nn.ReLU(inplace=True))
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True)
                                for f in self.features], dim=1)


def _conv_pair(cin: int, cout: int, tail: nn.Module | None) -> nn.Sequential:
    """conv3x3-ReLU-conv3x3 (-ReLU if ``tail``) then ``tail`` (pool or 2x bilinear upsampling)."""
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1)]
    if tail is not None:
        layers += [nn.ReLU(inplace=True), tail]
    return nn.Sequential(*layers)


def _pool() -> nn.Module:
    return nn.MaxPool2d(2, 2)


def _up() -> nn.Module:
    return nn.UpsamplingBilinear2d(scale_factor=2)


class DeHamer(DehazeNet):
    """DeHamer's ``UNet_emb`` restricted to the modules its forward uses.

    ``width`` is the CNN channel count at 1/2 scale before pyramid pooling (32); ``embed_dim``
    the Swin width at 1/2 scale (96).
    """

    multiple = 16

    def __init__(self, width: int = 32, embed_dim: int = 96, depths=(2, 2, 2), num_heads=(3, 6, 12),
                 window_size: int = 7):
        super().__init__()
        w, e = width, embed_dim
        self.swin_1 = SwinBranch(e, depths, num_heads, window_size)
        self.E_block1 = _conv_pair(3, w, _pool())
        self.PPM1 = PPM(w, w // 4)
        self.E_block2 = _conv_pair(2 * w, 2 * w, _pool())
        self.PPM2 = PPM(2 * w, w // 2)
        self.E_block3 = _conv_pair(4 * w, 4 * w, _pool())
        self.PPM3 = PPM(4 * w, w)
        self.E_block4 = _conv_pair(8 * w, 8 * w, _pool())
        self.PPM4 = PPM(8 * w, 2 * w)
        self._block1 = _conv_pair(16 * w, 8 * w, _up())
        self.conv1_1 = nn.Conv2d(4 * e, 8 * w, 3, padding=1)
        self.conv1_2 = nn.Conv2d(4 * e, 8 * w, 3, padding=1)
        self.conv1 = nn.Conv2d(24 * w, 8 * w, 3, padding=1)
        self._block3 = _conv_pair(8 * w, 4 * w, _up())
        self.MSRB2 = MSRB(4 * w)
        self.conv2_1 = nn.Conv2d(2 * e, 4 * w, 3, padding=1)
        self.conv2_2 = nn.Conv2d(2 * e, 4 * w, 3, padding=1)
        self.conv2 = nn.Conv2d(12 * w, 4 * w, 3, padding=1)
        self._block4 = _conv_pair(4 * w, 2 * w, _up())
        self.MSRB3 = MSRB(2 * w)
        self.conv3_1 = nn.Conv2d(e, 2 * w, 3, padding=1)
        self.conv3_2 = nn.Conv2d(e, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(6 * w, 2 * w, 3, padding=1)
        self._block5 = _conv_pair(2 * w, w, _up())
        self.conv4 = nn.Conv2d(w, w, 3, padding=1)
        self._block7 = _conv_pair(w, 3, None)

    @staticmethod
    def _modulate(skip: torch.Tensor, scale: nn.Conv2d, shift: nn.Conv2d, swin: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(skip) * scale(swin) + shift(swin)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        swin = self.swin_1(x)
        s1 = self.PPM1(self.E_block1(x))
        s2 = self.PPM2(self.E_block2(s1))
        s3 = self.PPM3(self.E_block3(s2))
        s4 = self.PPM4(self.E_block4(s3))
        up = self._block1(s4)
        d = F.relu(self.conv1(torch.cat((s3, self._modulate(s3, self.conv1_1, self.conv1_2, swin[2]), up), 1)))
        up = self.MSRB2(self._block3(d))
        d = F.relu(self.conv2(torch.cat((s2, self._modulate(s2, self.conv2_1, self.conv2_2, swin[1]), up), 1)))
        up = self.MSRB3(self._block4(d))
        d = F.relu(self.conv3(torch.cat((s1, self._modulate(s1, self.conv3_1, self.conv3_2, swin[0]), up), 1)))
        return self._block7(F.relu(self.conv4(self._block5(d))))

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per Swin block (its qkv, proj, fc1, fc2 linears) and patch merge, one per
        CNN encoder block (with its pyramid pooling), one per decoder stage (fusion convs,
        modulation convs, upsampling block, MSRB) and the output block."""
        groups: dict[str, list[str]] = {"swin_1.patch_embed": ["swin_1.patch_embed.proj"]}
        for i, layer in enumerate(self.swin_1.layers):
            for j in range(len(layer.blocks)):
                groups[f"swin_1.layers.{i}.blocks.{j}"] = sites_under(self, f"swin_1.layers.{i}.blocks.{j}")
            if layer.downsample is not None:
                groups[f"swin_1.layers.{i}.downsample"] = [f"swin_1.layers.{i}.downsample.reduction"]
        for k in range(1, 5):
            groups[f"E_block{k}"] = sites_under(self, f"E_block{k}", f"PPM{k}")
        groups["decoder3"] = sites_under(self, "_block1", "conv1", "conv1_1", "conv1_2")
        groups["decoder2"] = sites_under(self, "_block3", "MSRB2", "conv2", "conv2_1", "conv2_2")
        groups["decoder1"] = sites_under(self, "_block4", "MSRB3", "conv3", "conv3_1", "conv3_2")
        groups["decoder0"] = sites_under(self, "_block5", "conv4", "_block7")
        return groups


# Official checkpoint keys of modules the official forward never calls (dropped on load).
UNUSED_OFFICIAL_KEYS = (
    r"^(E_block5|_block2|_block6|conv3_3|conv4_[1-4]|MSRB1|MSRB4)\.",
    r"^MSRB[23]\.(up\.|down\.\d+_4\.|selective_kernel\.[12]\.)",
)
register_key_map("dehamer", [(pattern, None) for pattern in UNUSED_OFFICIAL_KEYS])

_CONFIGS = {
    "full": {"width": 32, "embed_dim": 96, "depths": (2, 2, 2), "num_heads": (3, 6, 12)},
    "tiny": {"width": 8, "embed_dim": 24, "depths": (2, 2, 2), "num_heads": (1, 2, 4)},
}
_SOURCE = ("Guo et al., CVPR 2022; Li-Chongyi/Dehamer: 132.45 M built, 29.45 M used/trained "
           "(we build the used 29.45 M); ~48 G MACs at 256x256")


@register_backbone(
    "dehamer",
    variants={"full": Published(29_450_000, 48e9, "macs", _SOURCE), "tiny": None},
    multiple=16,
    description="DeHamer: Swin branch (nn.Linear) + CNN U-Net, dark-channel 3D position embedding",
)
def build_dehamer(variant: str = "full") -> DeHamer:
    """DeHamer as published (``full``: CNN 32..512 ch, Swin 96/192/384) or ``tiny`` (8..128 ch,
    Swin 24/48/96)."""
    return DeHamer(**variant_config("dehamer", _CONFIGS, variant))
