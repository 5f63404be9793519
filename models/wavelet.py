"""The one orthonormal Haar wavelet transform every variant uses.

Layout. ``haar_dwt`` maps (B, C, H, W) to (B, 4C, H/2, W/2) in *subband-major* order::

    channels [0:C)   LL  (low-pass along H and W)         = pywt cA
    channels [C:2C)  LH  (high-pass along H, low along W) = pywt cH  ("horizontal detail", pywt key 'da')
    channels [2C:3C) HL  (low along H, high-pass along W) = pywt cV  ("vertical detail",   pywt key 'ad')
    channels [3C:4C) HH  (high-pass along H and W)        = pywt cD

with exactly PyWavelets' ``dwt2(x, 'haar')`` values and signs (tested to 1e-6). For one 2x2 block
[[a, b], [c, d]] (rows along H): LL = (a+b+c+d)/2, LH = (a+b-c-d)/2, HL = (a-b+c-d)/2, HH = (a-b-c+d)/2.

``levels=J`` applies the transform J times to *all* channels (the full wavelet-packet split WDDM uses):
(B, 4^J C, H/2^J, W/2^J). The transform is orthonormal and unscaled; the papers' scaling (WaveDiff divides
by 2, WDDM by 2^level so the LL band stays in [-1, 1]) is the separate pair ``wavelet_encode`` /
``wavelet_decode``.

Implementation: reshapes and sums (a two-stage butterfly), no filters, any float dtype, any device, autograd-safe.
"""
from __future__ import annotations

import torch

__all__ = ["haar_dwt", "haar_idwt", "wavelet_encode", "wavelet_decode", "BAND_NAMES"]

BAND_NAMES = ("LL", "LH", "HL", "HH")


def _check(x: torch.Tensor, levels: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"{name}: levels must be an integer >= 1, got {levels!r}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")


def _dwt1(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_dwt needs even height and width at every level, got {h}x{w}")
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    top, bottom = x[:, :, :, 0], x[:, :, :, 1]          # rows 2i and 2i+1: (b, c, h/2, w/2, 2)
    lo_h, hi_h = top + bottom, top - bottom             # low/high-pass along H (unnormalised)
    # The two 1/sqrt(2) factors are applied once as an exact multiplication by 0.5.
    ll = (lo_h[..., 0] + lo_h[..., 1]) * 0.5
    hl = (lo_h[..., 0] - lo_h[..., 1]) * 0.5
    lh = (hi_h[..., 0] + hi_h[..., 1]) * 0.5
    hh = (hi_h[..., 0] - hi_h[..., 1]) * 0.5
    return torch.cat((ll, lh, hl, hh), dim=1)


def _idwt1(y: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = y.shape
    if c4 % 4:
        raise ValueError(f"haar_idwt needs a channel count divisible by 4, got {c4}")
    ll, lh, hl, hh = y.chunk(4, dim=1)
    lo_h = torch.stack((ll + hl, ll - hl), dim=-1)      # (b, c, h, w, 2): the two columns, unnormalised
    hi_h = torch.stack((lh + hh, lh - hh), dim=-1)
    x = torch.stack((lo_h + hi_h, lo_h - hi_h), dim=3) * 0.5  # (b, c, h, 2, w, 2)
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)


def haar_dwt(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Orthonormal Haar DWT, (B, C, H, W) -> (B, 4^levels C, H / 2^levels, W / 2^levels)."""
    _check(x, levels, "haar_dwt")
    h, w = x.shape[-2:]
    f = 2**levels
    if h % f or w % f:
        raise ValueError(
            f"haar_dwt with levels={levels} needs even height and width divisible by {f}, got {h}x{w}"
        )
    for _ in range(levels):
        x = _dwt1(x)
    return x


def haar_idwt(y: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`haar_dwt` (exact up to float rounding)."""
    _check(y, levels, "haar_idwt")
    if y.shape[1] % (4**levels):
        raise ValueError(
            f"haar_idwt with levels={levels} needs a channel count divisible by {4**levels}, got {y.shape[1]}"
        )
    for _ in range(levels):
        y = _idwt1(y)
    return y


def wavelet_encode(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """The papers' diffusion space: ``haar_dwt(x, levels) / 2**levels`` (LL equals a 2^levels average pool)."""
    return haar_dwt(x, levels) / (2**levels)


def wavelet_decode(y: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`wavelet_encode`."""
    return haar_idwt(y * (2**levels), levels)
