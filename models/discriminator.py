"""Time-conditioned discriminator of DDGAN / WaveDiff: ``D(x_t, t, x_{t+1}) -> logit``.

Layout (``ngf`` base width, ``act`` = LeakyReLU(0.2))::

    t (integer step) -> sinusoidal(t_emb_dim) -> Linear -> act -> Linear -> act              = temb
    concat(x_t, x_{t+1}) (2 * in_channels) -> 1x1 conv to 2 ngf
    num_layers DownBlocks, each:
        h = act(x) -> conv 3x3 -> + Linear(temb) -> act -> [FIR downsample] -> conv 3x3
        s = [FIR downsample] x -> 1x1 conv (no bias)
        out = (h + s) / sqrt(2)
    minibatch standard deviation (group 4, 1 feature) -> conv 3x3 -> act -> sum over H, W -> Linear -> (B,)

Block widths (out channels, in units of ngf) and whether the block halves the resolution:

    kind="small" (CIFAR-10, STL-10): 2 (keep), 4 (down), 8 (down), then 8 (down) for every further layer
    kind="large" (CelebA-HQ, LSUN):  4 (down), 8 (down), then 8 (down) for every further layer

Paper configurations (``num_layers``, parameters): DDGAN CIFAR-10 small/4 on 3x32x32, 12.74M; WaveDiff
CIFAR-10 small/3 on 12x16x16, 7.63M; WaveDiff STL-10 small/4 on 12x32x32, 12.74M; WaveDiff CelebA-HQ 256 and
LSUN large/5 on 12x128x128, 22.63M; DDGAN CelebA-HQ 256 large/6 on 3x256x256 and WaveDiff CelebA-HQ 512
large/6 on 12x256x256 (and CelebA-HQ 1024 on 12x512x512), 27.74M.

FIR downsampling (``models.layers.FirDownsample``) is the kernel ``outer(k, k) / sum`` (k = (1, 3, 3, 1))
applied as a fixed depthwise stride-2 convolution with padding 1, i.e. upfirdn2d with down=2; the filter is a
registered (non-persistent) buffer. Time embedding: ``models.layers.timestep_embedding``.

Initialisation: weights uniform in +-sqrt(3 scale / fan_out) (fan_out = out_channels x kernel area), biases
zero; scale 0 stands for 1e-10. The second conv of every block and, for kind="small", the final conv start at
scale 0. This is what the public code does (its "fan_avg" mode falls through to fan_out).

Differences from the public code:
- ``num_layers`` is not capped (public: small 3-4, large 3-6); extra layers are 8 ngf -> 8 ngf down blocks,
  and the final conv takes the width of the last block.
- The minibatch-stddev group is the largest divisor of the batch size not above 4 (the public code uses
  ``min(4, B)`` and fails when B is not a multiple of it); for B divisible by 4 or B < 4 both agree.
- Returns logits of shape (B,) instead of (B, 1); WaveDiff's unused ``patch_size`` input patching and "local
  loss" head are not included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import FirDownsample, LinearBank, linear, projected, timestep_embedding, variance_scaling_

__all__ = [
    "DiscriminatorConfig",
    "Discriminator",
    "DISCRIMINATOR_PRESETS",
    "minibatch_stddev",
]


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3                          # channels of ONE x_t; the network sees 2 * in_channels
    image_size: int = 32                          # spatial size of x_t (square)
    ngf: int = 64                                 # base width; blocks are 2, 4 or 8 x ngf wide
    kind: str = "small"                           # "small": first block keeps resolution; "large": all downsample
    num_layers: int = 4                           # number of DownBlocks (small 3-4, large 3-6 in the papers)
    t_emb_dim: int = 256                          # sinusoidal time embedding and time-MLP width
    leaky_slope: float = 0.2                      # negative slope of every LeakyReLU
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)    # 1-D FIR taps (even length) of the downsampler
    stddev_group: int = 4                         # minibatch-stddev group size (largest divisor of B <= this)
    stddev_feat: int = 1                          # minibatch-stddev features appended

    def __post_init__(self) -> None:
        if self.kind not in ("small", "large"):
            raise ValueError(f"kind must be 'small' or 'large', got {self.kind!r}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        n_down = sum(down for _, down in self.blocks())
        if self.image_size % (2 ** n_down):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{n_down} "
                             f"(the number of downsampling blocks)")
        if len(self.fir_kernel) < 2 or len(self.fir_kernel) % 2:
            raise ValueError(f"fir_kernel needs an even number of taps, got {self.fir_kernel}")

    def blocks(self) -> list[tuple[int, bool]]:
        """(out width multiplier of ngf, downsample) for every DownBlock."""
        if self.kind == "small":
            spec = [(2, False), (4, True), (8, True)]
        else:
            spec = [(4, True), (8, True)]
        spec += [(8, True)] * max(0, self.num_layers - len(spec))
        return spec[: self.num_layers]


# The papers' discriminators (see the module docstring for their parameter counts).
DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "ddgan-cifar10": DiscriminatorConfig(in_channels=3, image_size=32, kind="small", num_layers=4),
    "ddgan-celebahq256": DiscriminatorConfig(in_channels=3, image_size=256, kind="large", num_layers=6),
    "wavediff-cifar10": DiscriminatorConfig(in_channels=12, image_size=16, kind="small", num_layers=3),
    "wavediff-stl10": DiscriminatorConfig(in_channels=12, image_size=32, kind="small", num_layers=4),
    "wavediff-celebahq256": DiscriminatorConfig(in_channels=12, image_size=128, kind="large", num_layers=5),
    "wavediff-lsun256": DiscriminatorConfig(in_channels=12, image_size=128, kind="large", num_layers=5),
    "wavediff-celebahq512": DiscriminatorConfig(in_channels=12, image_size=256, kind="large", num_layers=6),
    # The public WaveDiff 1024 run patches only the generator's input (patch size 2); D sees 12x512x512.
    "wavediff-celebahq1024": DiscriminatorConfig(in_channels=12, image_size=512, kind="large", num_layers=6),
}


def _conv(cin: int, cout: int, k: int, bias: bool = True, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    variance_scaling_(conv.weight, scale, mode="fan_out")
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def _dense(cin: int, cout: int, scale: float = 1.0) -> nn.Linear:
    return linear(cin, cout, init_scale=scale, mode="fan_out")


def minibatch_stddev(h: torch.Tensor, group_size: int = 4, num_features: int = 1, batches: int = 1) -> torch.Tensor:
    """Append ``num_features`` channels holding the mean (over C, H, W) within-group standard deviation.

    Groups are strided: sample ``i`` belongs to group member ``i // (B / g)`` of set ``i % (B / g)``, with ``g``
    the largest divisor of B not above ``group_size``. ``batches``: ``h`` holds that many minibatches of B
    samples end to end (the discriminator's real and fake passes as one call), each grouped on its own as if
    alone.
    """
    n, c, height, width = h.shape
    if n % batches:
        raise ValueError(f"minibatch_stddev: {n} samples do not split into {batches} minibatches")
    b = n // batches
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = h.view(batches, g, b // g, num_features, c // num_features, height, width)
    y = torch.sqrt(y.var(dim=1, unbiased=False) + 1e-8)          # (batches, B/g, F, C/F, H, W)
    y = y.mean(dim=(3, 4, 5))                                    # (batches, B/g, F)
    y = y[:, None, :, :, None, None].expand(batches, g, b // g, num_features, height, width)
    return torch.cat([h, y.reshape(n, num_features, height, width)], dim=1)


class DownBlock(nn.Module):
    """Residual block with a time bias; optional FIR downsampling on both paths; output scaled by 1/sqrt(2)."""

    def __init__(self, cin: int, cout: int, t_emb_dim: int, downsample: bool, slope: float,
                 fir_kernel: tuple[int, ...]):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3)
        self.conv2 = _conv(cout, cout, 3, scale=0.0)
        self.dense_t = _dense(t_emb_dim, cout)
        self.skip = _conv(cin, cout, 1, bias=False)
        self.down_h = FirDownsample(cout, fir_kernel) if downsample else None
        self.down_x = FirDownsample(cin, fir_kernel) if downsample else None
        self.slope = slope

    def forward(self, x: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        """``temb``: the time embedding, or a :class:`LinearBank` result holding ``dense_t``'s output."""
        h = self.conv1(F.leaky_relu(x, self.slope))
        h = F.leaky_relu(h + projected(self.dense_t, temb)[:, :, None, None], self.slope)
        if self.down_h is not None:
            h = self.down_h(h)
            x = self.down_x(x)
        h = self.conv2(h)
        return (h + self.skip(x)) * (1.0 / math.sqrt(2.0))


class Discriminator(nn.Module):
    """``forward(x_t, t, x_tp1) -> logits (B,)``; ``t`` is the integer step index (B,) shared with G."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        ngf, slope, tdim = cfg.ngf, cfg.leaky_slope, cfg.t_emb_dim
        self.t_mlp = nn.Sequential(_dense(tdim, tdim), nn.LeakyReLU(slope), _dense(tdim, tdim))
        self.start_conv = _conv(2 * cfg.in_channels, 2 * ngf, 1)
        blocks, cin = [], 2 * ngf
        for mult, down in cfg.blocks():
            blocks.append(DownBlock(cin, mult * ngf, tdim, down, slope, cfg.fir_kernel))
            cin = mult * ngf
        self.blocks = nn.ModuleList(blocks)
        self.final_conv = _conv(cin + cfg.stddev_feat, cin, 3, scale=0.0 if cfg.kind == "small" else 1.0)
        self.end_linear = _dense(cin, 1)
        self.time_bank = LinearBank([block.dense_t for block in self.blocks])  # every block's time bias, one matmul

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_tp1: torch.Tensor, batches: int = 1) -> torch.Tensor:
        """``batches``: the inputs are that many minibatches end to end, told apart only by the minibatch-stddev
        layer (the one place where samples meet)."""
        cfg = self.cfg
        temb = F.leaky_relu(self.t_mlp(timestep_embedding(t, cfg.t_emb_dim)), cfg.leaky_slope)
        h = self.start_conv(torch.cat([x_t, x_tp1], dim=1))
        temb = self.time_bank(temb)
        for block in self.blocks:
            h = block(h, temb)
        h = minibatch_stddev(h, cfg.stddev_group, cfg.stddev_feat, batches)
        h = F.leaky_relu(self.final_conv(h), cfg.leaky_slope)
        return self.end_linear(h.sum(dim=(2, 3))).squeeze(1)
