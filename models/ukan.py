"""U-KAN denoiser (the "UKAN" backbone of WDDM): a DDPM conv UNet whose bottleneck is a tokenized-KAN section.

Layout (``C = ch * ch_mult[-1]``, token widths ``[C, 1.5C, 2C]``, ``tdim = 4 ch``)::

    head conv 3x3 -> down path: per level ``num_res_blocks`` ResBlocks (+ self-attention at levels in ``attn``),
                     a stride-2 conv between levels
    KAN bottleneck on the deepest features t3 (C channels):
        patch embed 1: conv 3x3 stride 2 (C -> 1.5C), LayerNorm       -> KAN block (1.5C), LayerNorm -> t4
        patch embed 2: conv 3x3 stride 2 (1.5C -> 2C), LayerNorm      -> KAN block (2C),   LayerNorm
        decoder 1: GroupNorm-Swish-conv (2C -> 1.5C) + time, bilinear up to t4, Swish, + t4
                   -> KAN block (1.5C), LayerNorm
        decoder 2: GroupNorm-Swish-conv (1.5C -> C) + time, bilinear up to t3, Swish, + t3
    up path: per level ``num_res_blocks + 1`` ResBlocks on [h, skip], nearest-upsample + conv between levels
    tail: GroupNorm-Swish-conv 3x3 to ``out_channels``

A KAN block is ``KANLinear(dim, dim)(LayerNorm(tokens)) + Linear(Swish(temb))``, with no residual path, as in
the public U-KAN diffusion model. As there, only the first decoder stage ends with a KAN block.

Differences from the public code (U-KAN ``Model_UKAN_Hybrid.py`` as wrapped by WDDM):
- ``attn`` is honoured: levels listed there get a self-attention block after each ResBlock (the public model
  overwrites the list with ``[]``, so a configuration asking for attention silently had none).
- The sinusoidal time embedding is computed on the fly instead of looked up in a frozen (1000, ch) table, so the
  model holds ``1000 * ch`` fewer (non-trainable) parameters: 128,000 at ch = 128.
- GroupNorm uses 32 groups whenever the width allows it (every paper configuration); for narrow test widths
  such as 48 it uses the largest divisor of the width not above 32.
- The KAN section always runs (the public model skips it when its, off by one level, size estimate is < 4).

Size at batch 1 (FLOPs = 2 x multiply-adds of convolutions and matmuls from torch's FlopCounterMode; the
elementwise B-spline evaluation is not counted): cifar10-l1 23.62M parameters, 2.60 GFLOPs;
cifar10-l1-attn 23.95M, 2.94 GFLOPs; cifar10-l2 6.01M, 0.32 GFLOPs.

Memory: the B-spline basis holds ``tokens x in_features x (grid_size + spline_order)`` values per KANLinear,
8x the layer input at the defaults, and grows with batch x tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.layers import LinearBank, silu_projected, timestep_embedding
from torch import nn

__all__ = ["UKANConfig", "UKAN", "KANLinear", "UKAN_PRESETS"]


@dataclass
class UKANConfig:
    in_channels: int                                 # channels of the (wavelet) input, e.g. 12 for level 1 RGB
    out_channels: int                                # channels of the prediction (usually = in_channels)
    image_size: int                                  # spatial size of the input (square); must divide by 2^(levels-1)
    ch: int = 128                                    # base width; time-embedding width is 4 * ch
    ch_mult: tuple[int, ...] = (1, 2)                # width multiplier per UNet level
    attn: tuple[int, ...] = ()                       # UNet levels (indices into ch_mult) with self-attention
    num_res_blocks: int = 2                          # ResBlocks per level on the way down (+1 on the way up)
    dropout: float = 0.1                             # dropout inside ResBlocks
    grid_size: int = 5                               # B-spline intervals of every KANLinear
    spline_order: int = 3                            # B-spline order (3 = cubic)
    grid_range: tuple[float, float] = (-1.0, 1.0)    # input range covered by the uniform spline grid


# WDDM's CIFAR-10 configurations (level 1: 12 x 16 x 16, level 2: 48 x 8 x 8) as the public model builds them,
# i.e. without attention. WDDM's level-1 config asks for attention at level 0, which the public model drops;
# "cifar10-l1-attn" is that configuration with the attention honoured.
UKAN_PRESETS: dict[str, UKANConfig] = {
    "cifar10-l1": UKANConfig(in_channels=12, out_channels=12, image_size=16, ch=128, ch_mult=(1, 2)),
    "cifar10-l1-attn": UKANConfig(in_channels=12, out_channels=12, image_size=16, ch=128, ch_mult=(1, 2),
                                  attn=(0,)),
    "cifar10-l2": UKANConfig(in_channels=48, out_channels=48, image_size=8, ch=128, ch_mult=(1,)),
}


def _groups(channels: int) -> int:
    """32, or the largest divisor of ``channels`` below it."""
    return max(g for g in range(1, 33) if channels % g == 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels)


class KANLinear(nn.Module):
    """Kolmogorov-Arnold layer in the efficient-KAN form, no bias.

    ``y = W_base SiLU(x) + (W_spline * scaler) B(x)`` where ``B(x)`` are the ``grid_size + spline_order`` B-spline
    basis functions of every input feature on a uniform knot vector over ``grid_range`` extended by
    ``spline_order`` knots on each side. Accepts any leading shape ``(..., in_features)``.

    FLOPs: the two products are ordinary matmuls (``2 * in * out * (1 + grid_size + spline_order)`` per token) and
    are what ``FlopCounterMode`` counts; the B-spline evaluation itself is elementwise and is not counted.
    """

    autocast_weights = ("base_weight",)  # only enters F.linear (bench.train.LowPrecisionWeights casts it once)

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), scale_noise: float = 0.1,
                 scale_spline: float = 1.0) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        lo, hi = grid_range
        step = (hi - lo) / grid_size
        knots = lo + step * torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32)
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())  # (in, grid + 2 order + 1)
        n_basis = grid_size + spline_order
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, n_basis))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters(scale_noise, scale_spline)

    @torch.no_grad()
    def reset_parameters(self, scale_noise: float = 0.1, scale_spline: float = 1.0) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        # Spline coefficients start as small noise (the splines begin close to zero), scaled per edge.
        self.spline_weight.uniform_(-0.5, 0.5).mul_(scale_noise / self.grid_size)
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * scale_spline)

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases, ``(..., in_features) -> (..., in_features, grid_size + spline_order)``.

        Cox-de Boor recursion on all elements at once; the only loop is over the spline order.
        Intervals are half-open ``[t_j, t_{j+1})``, so every basis is zero outside the extended knot span.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected last dimension {self.in_features}, got {tuple(x.shape)}")
        g = self.grid.to(x.dtype)                      # (in, K) with K = grid_size + 2 order + 1 knots
        x = x.unsqueeze(-1)                            # (..., in, 1)
        bases = ((x >= g[:, :-1]) & (x < g[:, 1:])).to(x.dtype)   # order 0: (..., in, K - 1)
        for k in range(1, self.spline_order + 1):
            left = (x - g[:, :-(k + 1)]) / (g[:, k:-1] - g[:, :-(k + 1)])
            right = (g[:, k + 1:] - x) / (g[:, k + 1:] - g[:, 1:-k])
            bases = left * bases[..., :-1] + right * bases[..., 1:]
        return bases

    def scaled_spline_weight(self) -> torch.Tensor:
        return self.spline_weight * self.spline_scaler.unsqueeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        spline = F.linear(self.b_splines(x).flatten(-2), self.scaled_spline_weight().flatten(1))
        return base + spline


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a residual path, written as explicit matmuls."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.xavier_uniform_(self.proj.weight, gain=1e-5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).chunk(3, dim=1)    # each (B, C, HW)
        weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * c ** -0.5, dim=-1)   # (B, HW, HW)
        out = torch.bmm(v, weights.transpose(1, 2)).view(b, c, h, w)
        return x + self.proj(out)


class ResBlock(nn.Module):
    """DDPM residual block: GN-Swish-conv, + time, GN-Swish-dropout-conv, 1x1 shortcut, optional attention."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int, dropout: float, attn: bool) -> None:
        super().__init__()
        self.block1 = nn.Sequential(_group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(_group_norm(out_ch), nn.SiLU(), nn.Dropout(dropout),
                                    nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()
        for m in (self.block1[-1], self.temb_proj[-1], self.block2[-1], self.shortcut):
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.block2[-1].weight, gain=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        """``temb``: the time embedding, or the U-KAN's :class:`LinearBank` result (``temb_proj`` is SiLU, Linear)."""
        h = self.block1(x) + silu_projected(self.temb_proj[1], temb)[:, :, None, None]
        h = self.block2(h) + self.shortcut(x)
        return self.attn(h)


class PatchEmbed(nn.Module):
    """3x3 stride-2 conv to tokens, then LayerNorm: (B, Cin, H, W) -> (B, H'W', Cout), H', W'."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_ch)
        nn.init.normal_(self.proj.weight, 0.0, math.sqrt(2.0 / (9 * out_ch)))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class KANBlock(nn.Module):
    """U-KAN's "shifted block" as used for diffusion: KANLinear(LayerNorm(tokens)) + Linear(Swish(temb))."""

    def __init__(self, dim: int, tdim: int, grid_size: int, spline_order: int,
                 grid_range: tuple[float, float]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.kan = KANLinear(dim, dim, grid_size, spline_order, grid_range)
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, dim))
        nn.init.trunc_normal_(self.temb_proj[1].weight, std=0.02)
        nn.init.zeros_(self.temb_proj[1].bias)

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        return self.kan(self.norm(tokens)) + silu_projected(self.temb_proj[1], temb)[:, None, :]


class DecoderConv(nn.Module):
    """GroupNorm-Swish-conv 3x3 plus a per-channel time bias."""

    def __init__(self, in_ch: int, out_ch: int, tdim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, out_ch))

    def forward(self, x: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        return self.conv(x) + silu_projected(self.temb_proj[1], temb)[:, :, None, None]


def _to_image(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class KANBottleneck(nn.Module):
    """Tokenized-KAN section between the UNet's down and up paths; keeps shape (B, C, H, W)."""

    def __init__(self, c: int, tdim: int, grid_size: int, spline_order: int,
                 grid_range: tuple[float, float]) -> None:
        super().__init__()
        d1, d2 = c * 3 // 2, c * 2
        kan = dict(tdim=tdim, grid_size=grid_size, spline_order=spline_order, grid_range=grid_range)
        self.embed1, self.block1, self.norm1 = PatchEmbed(c, d1), KANBlock(d1, **kan), nn.LayerNorm(d1)
        self.embed2, self.block2, self.norm2 = PatchEmbed(d1, d2), KANBlock(d2, **kan), nn.LayerNorm(d2)
        self.dec1, self.dblock1, self.dnorm1 = DecoderConv(d2, d1, tdim), KANBlock(d1, **kan), nn.LayerNorm(d1)
        self.dec2 = DecoderConv(d1, c, tdim)

    def forward(self, t3: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        tok, h, w = self.embed1(t3)
        t4 = _to_image(self.norm1(self.block1(tok, temb)), h, w)
        tok, h2, w2 = self.embed2(t4)
        x = _to_image(self.norm2(self.block2(tok, temb)), h2, w2)
        x = F.silu(F.interpolate(self.dec1(x, temb), size=(h, w), mode="bilinear")) + t4
        tok = self.dnorm1(self.dblock1(x.flatten(2).transpose(1, 2), temb))
        x = self.dec2(_to_image(tok, h, w), temb)
        return F.silu(F.interpolate(x, size=t3.shape[-2:], mode="bilinear")) + t3


class UKAN(nn.Module):
    """U-KAN denoiser: ``forward(x, t)`` with x (B, in_channels, S, S) and integer steps t (B,) -> (B, out, S, S)."""

    def __init__(self, cfg: UKANConfig) -> None:
        super().__init__()
        levels = len(cfg.ch_mult)
        if any(not 0 <= i < levels for i in cfg.attn):
            raise ValueError(f"attn levels {cfg.attn} out of range for {levels} levels")
        if cfg.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {cfg.image_size} must be divisible by {2 ** (levels - 1)}")
        if cfg.ch % 2:
            raise ValueError("ch must be even (sinusoidal embedding)")
        self.cfg = cfg
        ch, tdim = cfg.ch, 4 * cfg.ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        for m in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        self.head = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips, now = [ch], ch
        for i, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(now, ch * mult, tdim, cfg.dropout, i in cfg.attn))
                now = ch * mult
                skips.append(now)
            if i != levels - 1:
                self.down.append(nn.Conv2d(now, now, 3, stride=2, padding=1))
                skips.append(now)

        self.bottleneck = KANBottleneck(now, tdim, cfg.grid_size, cfg.spline_order, cfg.grid_range)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(skips.pop() + now, ch * mult, tdim, cfg.dropout, i in cfg.attn))
                now = ch * mult
            if i != 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(now, now, 3, padding=1)))
        self.tail = nn.Sequential(_group_norm(now), nn.SiLU(), nn.Conv2d(now, cfg.out_channels, 3, padding=1))

        for m in [self.head, self.tail[-1]] + [m for m in self.down if isinstance(m, nn.Conv2d)] \
                + [m[1] for m in self.up if isinstance(m, nn.Sequential)]:
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.tail[-1].weight, gain=1e-5)
        # Every block's time projection of SiLU(temb) in one matmul (state-dict names unchanged).
        self.time_bank = LinearBank([m.temb_proj[1] for m in self.modules() if hasattr(m, "temb_proj")], silu=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_bank(self.time_mlp(timestep_embedding(t, self.cfg.ch, downscale_freq_shift=0.0).to(x.dtype)))
        h = self.head(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.bottleneck(h, temb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), temb) if isinstance(layer, ResBlock) else layer(h)
        return self.tail(h)
