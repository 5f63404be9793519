"""NCSN++ generator with adaptive GroupNorm: the x0 predictor of DDGAN and WaveDiff.

G(x_{t+1}, t, z) -> x0 (tanh). The latent z drives every GroupNorm through a mapping network; the time
index enters as a sinusoidal embedding added as a bias in every ResBlock. The three W-Generator components of
WaveDiff are independent switches of this one class (all off = the plain generator of DDGAN / WaveDiff):

- ``wavelet_residual``:   the input pyramid downsamples with :class:`WaveletDownsample` instead of FIR + conv.
- ``wavelet_updown``:     the resolution-changing ResBlocks are :class:`WaveletResBlock` (DWT / IDWT with
                          kept detail bands) instead of FIR-resampling ResBlocks.
- ``wavelet_bottleneck``: the middle is a :class:`FrequencyBottleneck` instead of a :class:`MidBlock`.

Layer structure, widths and initialisation follow the public DDGAN / WaveDiff generators (same parameter
counts). Differences that change no parameter: the time embedding's SiLU is applied once per call instead of
in every block; attention uses ``scaled_dot_product_attention`` with fused q/k/v; patching uses
``pixel_unshuffle`` / ``pixel_shuffle`` channel order; FIR resampling uses strided depthwise convolutions;
the adaptive GroupNorm is one fused ``group_norm`` call and residual sums are written in place; all the style
projections of a call are one matmul, and all the time projections another (:class:`models.layers.LinearBank`;
the layers keep their parameters) (:mod:`models.layers`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (AdaptiveGroupNorm, AttnBlock, FirConvDownsample, FrequencyBottleneck, LinearBank, MidBlock,
                           PixelNorm, ResBlock, WaveletDownsample, WaveletResBlock, conv2d, linear, num_groups,
                           timestep_embedding)

__all__ = ["NCSNppConfig", "NCSNppGenerator"]


@dataclass
class NCSNppConfig:
    in_channels: int = 3                        # channels of x given to forward (12 for a wavelet-space input)
    out_channels: int = 3                       # channels of the prediction
    image_size: int = 32                        # side of x given to forward, before patching
    nf: int = 128                               # base width; level i has nf * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)     # width multiplier per resolution level
    num_res_blocks: int = 2                     # ResBlocks per level on the way down (one more on the way up)
    attn_resolutions: tuple[int, ...] = (16,)   # feature-map sides (after patching) with self-attention
    dropout: float = 0.0                        # dropout inside ResBlocks
    nz: int = 100                               # latent dimension
    z_emb_dim: int = 256                        # width of the latent mapping network
    n_mlp: int = 4                              # hidden layers of the mapping network after the first
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)  # separable FIR filter for up/down sampling (even length)
    skip_rescale: bool = True                   # divide residual sums by sqrt(2)
    resblock_type: str = "biggan"               # only "biggan": resampling happens inside ResBlocks
    progressive_input: str = "residual"         # "residual": input pyramid added at each level; or "none"
    progressive_combine: str = "sum"            # only "sum" (used by the input-skip pyramid of NCSN++)
    embedding: str = "positional"               # only "positional": sinusoidal embedding of the integer t
    patch_size: int = 1                         # >1: pixel-unshuffle in, pixel-shuffle out
    wavelet_residual: bool = False              # W-Generator: frequency residual connection (input pyramid)
    wavelet_updown: bool = False                # W-Generator: frequency-aware down / up ResBlocks
    wavelet_bottleneck: bool = False            # W-Generator: frequency bottleneck in the middle

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        self.fir_kernel = tuple(self.fir_kernel)
        choices = {"resblock_type": ("biggan",), "progressive_input": ("residual", "none"),
                   "progressive_combine": ("sum",), "embedding": ("positional",)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if len(self.fir_kernel) % 2:
            raise ValueError(f"fir_kernel must have even length, got {self.fir_kernel}")
        if not self.ch_mult or self.patch_size < 1:
            raise ValueError("ch_mult must be non-empty and patch_size >= 1")

    def check_sizes(self) -> None:
        """Size constraints, checked when the network is built (configs may get their size later)."""
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        res = self.image_size // self.patch_size
        if res % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"network input side {res} must be divisible by 2^(len(ch_mult)-1)")
        if self.wavelet_bottleneck and (res // 2 ** (len(self.ch_mult) - 1)) % 2:
            raise ValueError("wavelet_bottleneck needs an even side at the lowest resolution")

    @property
    def resolutions(self) -> list[int]:
        """Feature-map side at each level (after patching)."""
        return [self.image_size // self.patch_size // 2**i for i in range(len(self.ch_mult))]


class NCSNppGenerator(nn.Module):
    """forward(x (B, in_channels, S, S), t (B,) long, z (B, nz)) -> x0 prediction (B, out_channels, S, S)."""

    def __init__(self, cfg: NCSNppConfig):
        super().__init__()
        cfg.check_sizes()
        self.cfg = cfg
        nf, p = cfg.nf, cfg.patch_size
        tdim, zdim = 4 * nf, cfg.z_emb_dim
        common = dict(temb_dim=tdim, zemb_dim=zdim, dropout=cfg.dropout, skip_rescale=cfg.skip_rescale)
        fir = dict(fir_kernel=cfg.fir_kernel)
        levels = len(cfg.ch_mult)
        self.attn_levels = [r in cfg.attn_resolutions for r in cfg.resolutions]

        mapping: list[nn.Module] = [PixelNorm(), linear(cfg.nz, zdim, mode="fan_out"), nn.SiLU()]
        for _ in range(cfg.n_mlp):
            mapping += [linear(zdim, zdim, mode="fan_out"), nn.SiLU()]
        self.z_mapping = nn.Sequential(*mapping)
        self.time_embed = nn.Sequential(linear(nf, tdim), nn.SiLU(), linear(tdim, tdim))

        # Down path. skip_ch lists the channels of every tensor pushed for the up path.
        net_in = cfg.in_channels * p * p
        self.conv_in = conv2d(net_in, nf, 3)
        skip_ch, ch, pyramid_ch = [nf], nf, net_in
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.blocks.append(ResBlock(ch, nf * mult, resample="none", **common, **fir))
                ch = nf * mult
                skip_ch.append(ch)
            if self.attn_levels[i]:
                level.attns = nn.ModuleList(AttnBlock(ch, cfg.skip_rescale) for _ in range(cfg.num_res_blocks))
            if i != levels - 1:
                if cfg.wavelet_updown:
                    level.downsample = WaveletResBlock(ch, ch, resample="down", **common)
                else:
                    level.downsample = ResBlock(ch, ch, resample="down", **common, **fir)
                if cfg.progressive_input == "residual":
                    if cfg.wavelet_residual:
                        level.pyramid = WaveletDownsample(pyramid_ch, ch)
                    else:
                        level.pyramid = FirConvDownsample(pyramid_ch, ch, cfg.fir_kernel)
                    pyramid_ch = ch
                skip_ch.append(ch)
            self.down.append(level)

        mid_cls = FrequencyBottleneck if cfg.wavelet_bottleneck else MidBlock
        self.mid = mid_cls(ch, fir_kernel=cfg.fir_kernel, **common)

        # Up path.
        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            level = nn.Module()
            level.blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.blocks.append(ResBlock(ch + skip_ch.pop(), nf * cfg.ch_mult[i], resample="none",
                                             **common, **fir))
                ch = nf * cfg.ch_mult[i]
            if self.attn_levels[i]:
                level.attn = AttnBlock(ch, cfg.skip_rescale)
            if i != 0:
                if cfg.wavelet_updown:
                    level.upsample = WaveletResBlock(ch, ch, resample="up", detail_ch=nf * cfg.ch_mult[i - 1],
                                                     **common)
                else:
                    level.upsample = ResBlock(ch, ch, resample="up", **common, **fir)
            self.up.append(level)
        assert not skip_ch

        self.norm_out = nn.GroupNorm(num_groups(ch), ch, eps=1e-6)
        self.conv_out = conv2d(ch, cfg.out_channels * p * p, 3, init_scale=0.0)

        # Every style and every time projection of a call in one matmul each (the layers stay where they are).
        self.style_bank = LinearBank([m.style for m in self.modules() if isinstance(m, AdaptiveGroupNorm)], pairs=True)
        self.time_bank = LinearBank([m.temb_proj for m in self.modules() if isinstance(m, ResBlock)])

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.patch_size > 1:
            x = F.pixel_unshuffle(x, cfg.patch_size)
        zemb = self.z_mapping(z)
        temb = F.silu(self.time_embed(timestep_embedding(t, cfg.nf)))  # every ResBlock uses SiLU(temb)
        temb, zemb = self.time_bank(temb), self.style_bank(zemb)  # each block's projections, looked up by layer

        pyramid = x
        hs = [self.conv_in(x)]
        details = []
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.blocks):
                h = block(hs[-1], temb, zemb)
                if self.attn_levels[i]:
                    h = level.attns[j](h)
                hs.append(h)
            if hasattr(level, "downsample"):
                if cfg.wavelet_updown:
                    h, d = level.downsample(h, temb, zemb)
                    details.append(d)
                else:
                    h = level.downsample(h, temb, zemb)
                if hasattr(level, "pyramid"):
                    pyramid = level.pyramid(pyramid).add_(h)  # a fresh convolution output: summed in place
                    if cfg.skip_rescale:
                        pyramid = pyramid.div_(math.sqrt(2.0))
                    h = pyramid
                hs.append(h)

        h = self.mid(hs[-1], temb, zemb)

        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb, zemb)
            if hasattr(level, "attn"):
                h = level.attn(h)
            if hasattr(level, "upsample"):
                if cfg.wavelet_updown:
                    h = level.upsample(h, temb, zemb, details.pop())
                else:
                    h = level.upsample(h, temb, zemb)

        h = self.conv_out(F.silu(self.norm_out(h)))
        if cfg.patch_size > 1:
            h = F.pixel_shuffle(h, cfg.patch_size)
        return torch.tanh(h)
