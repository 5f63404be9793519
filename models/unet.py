"""The DDPM / WDDM UNet denoiser in the layout of diffusers' ``UNet2DModel``.

Per level: ``layers_per_block`` ResNet blocks (GroupNorm, SiLU, 3x3 conv, time-embedding bias, GroupNorm, SiLU,
dropout, 3x3 conv, 1x1 shortcut when the width changes), each followed by a self-attention block where the
level asks for it, then a stride-2 3x3 conv downsample (all levels but the last). Middle: ResNet, attention,
ResNet. Up path: ``layers_per_block + 1`` ResNet blocks per level on the concatenated skip, attention where
configured (the same per-level flags as the down path), nearest 2x upsample + 3x3 conv. Time: sinusoidal
embedding [cos, sin] of width C0 -> Linear(C0, 4 C0) -> SiLU -> Linear(4 C0, 4 C0).

A config's attention flags are always honoured: asking for attention at a level builds it there, and a flag
tuple of the wrong length is an error. Parameter names follow diffusers' ``UNet2DModel`` (``down_blocks.0.
resnets.1.conv1.weight``, ``mid_block.attentions.0.to_q.weight`` ...), so its state dicts load directly.
Attention uses ``F.scaled_dot_product_attention`` (counted by ``bench.evaluate.count_flops`` on every device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import LinearBank, silu_projected, timestep_embedding

__all__ = ["UNetConfig", "UNet", "UNET_CONFIGS"]


@dataclass
class UNetConfig:
    in_channels: int = 3                                       # input channels (12 = 3 x 4 subbands at level 1)
    out_channels: Optional[int] = None                         # output channels; None = in_channels
    image_size: int = 32                                       # input height = width
    block_out_channels: tuple[int, ...] = (128, 256, 256)      # width of each resolution level
    attention_levels: tuple[bool, ...] = (True, True, False)   # self-attention at level i (down and up path)
    layers_per_block: int = 2                                  # ResNet blocks per down level (up: one more)
    mid_attention: bool = True                                 # attention between the two middle ResNet blocks
    dropout: float = 0.1                                       # dropout inside every ResNet block
    norm_groups: int = 32                                      # GroupNorm groups everywhere
    norm_eps: float = 1e-5                                     # GroupNorm epsilon
    attention_head_dim: int = 8                                # channels per attention head (heads = C / this)

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        levels = len(self.block_out_channels)
        if levels < 1:
            raise ValueError("block_out_channels needs at least one level")
        if len(self.attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(self.attention_levels)} flags for {levels} levels "
                             f"(block_out_channels={self.block_out_channels}); give one flag per level")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} ({levels} levels)")
        for c in self.block_out_channels:
            if c % self.norm_groups:
                raise ValueError(f"channel count {c} is not divisible by norm_groups={self.norm_groups}")
        widths = [c for c, a in zip(self.block_out_channels, self.attention_levels) if a]
        widths += [self.block_out_channels[-1]] if self.mid_attention else []
        for c in widths:
            if c % self.attention_head_dim:
                raise ValueError(f"attention width {c} is not divisible by attention_head_dim="
                                 f"{self.attention_head_dim}")


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear on the sinusoidal embedding."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(emb)))


class ResnetBlock(nn.Module):
    """Pre-activation ResNet block with an additive time-embedding bias after the first conv."""

    def __init__(self, cin: int, cout: int, temb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | dict) -> torch.Tensor:
        """``temb``: the time embedding, or the UNet's :class:`LinearBank` result holding this block's
        ``time_emb_proj(SiLU(temb))``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + silu_projected(self.time_emb_proj, temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, GroupNorm first, residual connection."""

    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.heads = channels // cfg.attention_head_dim
        self.group_norm = nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Sequential(nn.Linear(channels, channels))  # indexed ".0" as in diffusers' checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)            # (B, N, C)
        q, k, v = (proj(tokens).reshape(b, h * w, self.heads, c // self.heads).transpose(1, 2)
                   for proj in (self.to_q, self.to_k, self.to_v))                   # (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.to_out(out).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """One down level (diffusers' DownBlock2D, or AttnDownBlock2D when ``attention``); returns the output and
    the skip tensors (after every layer and after the downsample)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, cfg: UNetConfig, attention: bool, downsample: bool):
        super().__init__()
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, temb_dim, cfg) for i in range(n))
        self.attentions = nn.ModuleList(Attention(cout, cfg) for _ in range(n)) if attention else None
        self.downsamplers = nn.ModuleList([Downsample(cout)]) if downsample else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """One up level (diffusers' UpBlock2D, or AttnUpBlock2D when ``attention``): every layer concatenates one
    skip tensor (popped from the end) with its input."""

    def __init__(self, cin_prev: int, cout: int, skip_last: int, temb_dim: int, cfg: UNetConfig,
                 attention: bool, upsample: bool):
        super().__init__()
        n = cfg.layers_per_block + 1
        self.resnets = nn.ModuleList(
            ResnetBlock((cin_prev if i == 0 else cout) + (skip_last if i == n - 1 else cout), cout, temb_dim, cfg)
            for i in range(n))
        self.attentions = nn.ModuleList(Attention(cout, cfg) for _ in range(n)) if attention else None
        self.upsamplers = nn.ModuleList([Upsample(cout)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb: torch.Tensor) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    def __init__(self, channels: int, temb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(channels, channels, temb_dim, cfg) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(channels, cfg)]) if cfg.mid_attention else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, temb)


class UNet(nn.Module):
    """``UNet(cfg)(x, t)``: x (B, in_channels, S, S), t (B,) timesteps (or one scalar) -> (B, out_channels, S, S)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        chans, levels = cfg.block_out_channels, len(cfg.block_out_channels)
        temb_dim = 4 * chans[0]
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb_dim)

        self.down_blocks = nn.ModuleList()
        cin = chans[0]
        for i, cout in enumerate(chans):
            self.down_blocks.append(DownBlock(cin, cout, temb_dim, cfg, cfg.attention_levels[i],
                                              downsample=i < levels - 1))
            cin = cout
        self.mid_block = MidBlock(chans[-1], temb_dim, cfg)

        self.up_blocks = nn.ModuleList()
        prev = chans[-1]
        for i in range(levels):
            level = levels - 1 - i
            skip_last = chans[max(level - 1, 0)]   # the skip from the level above (conv_in's at level 0)
            self.up_blocks.append(UpBlock(prev, chans[level], skip_last, temb_dim, cfg, cfg.attention_levels[level],
                                          upsample=level > 0))
            prev = chans[level]

        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, chans[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)
        # Every ResNet block's time projection of SiLU(temb) in one matmul (state-dict names unchanged).
        self.time_bank = LinearBank([m.time_emb_proj for m in self.modules() if isinstance(m, ResnetBlock)],
                                    silu=True)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        temb = self.time_bank(self.time_embedding(timestep_embedding(
            t, self.cfg.block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0.0).to(x.dtype)))

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb)
            skips.extend(block_skips)
        h = self.mid_block(h, temb)
        for block in self.up_blocks:
            h = block(h, skips, temb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


# Named configurations (WDDM's public UNet2DModel settings). Wavelet inputs: 4^level x 3 channels at
# image/2^level. "ddpm-cifar10-pixel" is the pixel-space baseline with the level-1 widths.
UNET_CONFIGS: dict[str, UNetConfig] = {
    "wddm-cifar10-l1": UNetConfig(in_channels=12, image_size=16, block_out_channels=(128, 256, 256),
                                  attention_levels=(True, True, False), dropout=0.1),
    "wddm-cifar10-l2": UNetConfig(in_channels=48, image_size=8, block_out_channels=(64, 128, 128),
                                  attention_levels=(True, False, False), dropout=0.1),
    "ddpm-cifar10-pixel": UNetConfig(in_channels=3, image_size=32, block_out_channels=(128, 256, 256),
                                     attention_levels=(True, True, False), dropout=0.1),
    "wddm-celebahq256-l1": UNetConfig(in_channels=12, image_size=128, block_out_channels=(128, 128, 256, 256, 256),
                                      attention_levels=(False, False, True, True, False), dropout=0.0),
    "wddm-celebahq256-l2": UNetConfig(in_channels=48, image_size=64, block_out_channels=(64, 128, 128, 256),
                                      attention_levels=(False, True, False, False), dropout=0.0),
}
