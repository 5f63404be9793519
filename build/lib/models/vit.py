"""A ViT as facebookresearch/dinov2's hub entry points build DINOv2 backbones (``DinoVisionTransformer``: no
registers, layer scale, unchunked blocks), with the same state_dict keys, so the hub's ``*_pretrain.pth`` files load
strictly. A metric backbone (bench/backbones.py), not a generator: here because it is a network and nothing else."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ViTConfig", "DinoV2ViT"]


@dataclass(frozen=True)
class ViTConfig:
    """A DINOv2 backbone's architecture (the hub's ``_make_dinov2_model`` arguments)."""
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str = "mlp"            # mlp | swiglu (ViT-g: SwiGLU with hidden width 2/3 * 4 * dim rounded up to 8)
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 518         # the position-embedding grid the weights hold (37 x 37 patches), interpolated

    def __post_init__(self):
        if self.ffn not in ("mlp", "swiglu") or self.embed_dim % self.num_heads or self.img_size % self.patch_size:
            raise ValueError(f"not a DINOv2 architecture: {self}")


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class _Block(nn.Module):
    def __init__(self, arch: ViTConfig):
        super().__init__()
        dim = arch.embed_dim
        ffn = {"mlp": _Mlp, "swiglu": _SwiGLU}[arch.ffn]
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim, eps=1e-6), _Attention(dim, arch.num_heads), _LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim, eps=1e-6), ffn(dim, int(dim * arch.mlp_ratio)), \
            _LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, arch: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, arch.embed_dim, arch.patch_size, stride=arch.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2ViT(nn.Module):
    """The DINOv2 ViT (see the module docstring).

    ``forward(x)``: normalised float images (B, 3, H, W), H and W multiples of the patch size -> the CLS token after
    the final LayerNorm (B, embed_dim), what the hub model returns and torch-fidelity's ``dinov2`` feature is.
    """

    def __init__(self, arch: ViTConfig):
        super().__init__()
        self.arch = arch
        grid = arch.img_size // arch.patch_size
        self.patch_embed = _PatchEmbed(arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, arch.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, arch.embed_dim))  # unused here; part of the hub's state_dict
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.embed_dim, eps=1e-6)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """The hub's ``interpolate_pos_encoding``: bicubic, scale factors with its 0.1 offset, no antialiasing."""
        pos = self.pos_embed
        n, dim = pos.shape[1] - 1, pos.shape[2]
        h0, w0 = h // self.arch.patch_size, w // self.arch.patch_size
        if h0 * w0 == n and h == w:
            return pos
        m = int(math.sqrt(n))
        patch = F.interpolate(pos[:, 1:].float().reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                              antialias=False, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m))
        assert patch.shape[-2:] == (h0, w0), patch.shape
        patch = patch.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
        return torch.cat((pos[:, :1].float(), patch), dim=1).to(pos.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self._pos_embed(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
