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

Implementation: a two-stage butterfly of elementwise sums and differences on strided views, written with
``out=`` into preallocated tensors (no stack / cat of temporaries): the forward pass sums row pairs (contiguous
rows) into one buffer, then column pairs (stride-2 reads) straight into the four bands; the inverse mirrors it.
The 1/2 normalisation (times the papers' 1/2^J in ``wavelet_encode``, or any power of two a caller passes as
``scale``) is one in-place multiply of the buffer by a power of two, so it is exact (and skipped when it is one).
No filters or matrix products: nothing here is counted as FLOPs, any float dtype and device work, and autograd goes
through a custom function whose backward is the other transform (the transform is orthogonal, so its adjoint is
its inverse; double backward works too).
"""
from __future__ import annotations

import math

import torch

__all__ = ["haar_dwt", "haar_idwt", "haar_ll", "wavelet_encode", "wavelet_decode", "BAND_NAMES"]

BAND_NAMES = ("LL", "LH", "HL", "HH")


def _check(x: torch.Tensor, levels: int, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"{name}: levels must be an integer >= 1, got {levels!r}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")


def _dwt1(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """One level, times ``scale`` (a power of two); no autograd."""
    b, c, h, w = x.shape
    rows = x.contiguous().view(b, c, h // 2, 2, w)
    # Stage 1, along H: buf[0] = row 2i + row 2i+1 (low), buf[1] = their difference (high).
    buf = x.new_empty(2, b, c, h // 2, w)
    torch.add(rows[:, :, :, 0], rows[:, :, :, 1], out=buf[0])
    torch.sub(rows[:, :, :, 0], rows[:, :, :, 1], out=buf[1])
    if scale != 2.0:  # a multiply by one is no op
        buf.mul_(0.5 * scale)
    # Stage 2, along W, into out[b, kw, kh] (band 2 kw + kh: LL, LH, HL, HH); both H-bands per op.
    out = x.new_empty(b, 4 * c, h // 2, w // 2)  # returned as allocated (not a view: autograd may edit it)
    even, odd = buf[..., 0::2], buf[..., 1::2]
    by_kh = out.view(b, 2, 2, c, h // 2, w // 2).permute(2, 0, 1, 3, 4, 5)  # (kh, b, kw, c, h/2, w/2)
    torch.add(even, odd, out=by_kh[:, :, 0])
    torch.sub(even, odd, out=by_kh[:, :, 1])
    return out


def _idwt1(y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Inverse of one level, times ``scale`` (a power of two); no autograd."""
    b, c4, h, w = y.shape
    c = c4 // 4
    bands = y.contiguous().view(b, 2, 2, c, h, w).permute(2, 0, 1, 3, 4, 5)  # (kh, b, kw, c, h, w)
    # Stage 1, along W: interleave low + high / low - high into the columns of buf[kh].
    buf = y.new_empty(2, b, c, h, 2 * w)
    torch.add(bands[:, :, 0], bands[:, :, 1], out=buf[..., 0::2])
    torch.sub(bands[:, :, 0], bands[:, :, 1], out=buf[..., 1::2])
    if scale != 2.0:
        buf.mul_(0.5 * scale)
    # Stage 2, along H: rows 2i and 2i+1.
    x = y.new_empty(b, c, 2 * h, 2 * w)
    rows = x.view(b, c, h, 2, 2 * w)
    torch.add(buf[0], buf[1], out=rows[:, :, :, 0])
    torch.sub(buf[0], buf[1], out=rows[:, :, :, 1])
    return x


def _ll1(x: torch.Tensor, scale: float) -> torch.Tensor:
    """The LL band of one level times ``scale`` (a power of two); no autograd. Bit for bit ``_dwt1``'s LL band
    times ``scale``: that band is ``(r0 / 2) + (r1 / 2)`` with ``r0``, ``r1`` the sums of the column pairs' row pairs
    (rows first, as there), and halving and scaling by powers of two commute with rounding, so one multiply of
    ``r0 + r1`` at the end gives the same value (for values whose halves are normal floats)."""
    b, c, h, w = x.shape
    rows = x.contiguous().view(b, c, h // 2, 2, w)
    r = torch.add(rows[:, :, :, 0], rows[:, :, :, 1])
    return torch.add(r[..., 0::2], r[..., 1::2]).mul_(0.5 * scale)


def _ll_adjoint(grad: torch.Tensor, scale: float) -> torch.Tensor:
    """The LL band's adjoint: every pixel of a 2x2 block gets (scale / 2) times its block's gradient (exact, as the
    whole inverse transform of (grad, 0, 0, 0) gives it); differentiable ops, so double backward works."""
    b, c, h, w = grad.shape
    up = torch.mul(grad[:, :, :, None, :, None].expand(b, c, h, 2, w, 2), 0.5 * scale)
    return up.view(b, c, 2 * h, 2 * w)


class _Haar(torch.autograd.Function):
    """One level of a transform (``kind``: "dwt", "idwt", "ll") times ``scale``; its backward is the adjoint,
    itself differentiable: (s W)^T = s W^{-1} for the orthogonal W, so the DWT's is the IDWT and back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, kind: str) -> torch.Tensor:
        ctx.scale, ctx.kind = scale, kind
        return _LEVEL[kind](x, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.kind == "ll":
            return _ll_adjoint(grad, ctx.scale), None, None
        return _Haar.apply(grad, ctx.scale, "idwt" if ctx.kind == "dwt" else "dwt"), None, None


_LEVEL = {"dwt": _dwt1, "idwt": _idwt1, "ll": _ll1}


def _level(kind: str, x: torch.Tensor, scale: float) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        return _Haar.apply(x, scale, kind)
    return _LEVEL[kind](x, scale)


def _forward(x: torch.Tensor, levels: int, scale: float) -> torch.Tensor:
    _check(x, levels, "haar_dwt")
    h, w = x.shape[-2:]
    f = 2**levels
    if h % f or w % f:
        raise ValueError(
            f"haar_dwt with levels={levels} needs even height and width divisible by {f}, got {h}x{w}"
        )
    for j in range(levels):
        x = _level("dwt", x, scale if j == levels - 1 else 1.0)
    return x


def _inverse(y: torch.Tensor, levels: int, scale: float) -> torch.Tensor:
    _check(y, levels, "haar_idwt")
    if y.shape[1] % (4**levels):
        raise ValueError(
            f"haar_idwt with levels={levels} needs a channel count divisible by {4**levels}, got {y.shape[1]}"
        )
    for j in range(levels):
        y = _level("idwt", y, scale if j == 0 else 1.0)
    return y


def _power_of_two(scale: float, name: str) -> float:
    if not (isinstance(scale, (int, float)) and scale > 0 and math.frexp(scale)[0] == 0.5):
        raise ValueError(f"{name}: scale must be a power of two (exact in floating point), got {scale!r}")
    return float(scale)


def haar_dwt(x: torch.Tensor, levels: int = 1, scale: float = 1.0) -> torch.Tensor:
    """Orthonormal Haar DWT, (B, C, H, W) -> (B, 4^levels C, H / 2^levels, W / 2^levels); times ``scale``, a power
    of two, bit for bit the product without its op (for values whose scaled halves are normal floats)."""
    return _forward(x, levels, _power_of_two(scale, "haar_dwt"))


def haar_idwt(y: torch.Tensor, levels: int = 1, scale: float = 1.0) -> torch.Tensor:
    """Inverse of :func:`haar_dwt` (exact up to float rounding); times ``scale``, a power of two, as there."""
    return _inverse(y, levels, _power_of_two(scale, "haar_idwt"))


def haar_ll(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The LL band of one level, ``haar_dwt(x)[:, :C] * scale`` (``scale`` a power of two) bit for bit, without
    the detail bands: (B, C, H, W) -> (B, C, H/2, W/2), three ops where the whole transform and a slice are eight,
    and a backward of two."""
    _check(x, 1, "haar_ll")
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"haar_ll needs even height and width, got {x.shape[-2]}x{x.shape[-1]}")
    return _level("ll", x, _power_of_two(scale, "haar_ll"))


def wavelet_encode(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """The papers' diffusion space: ``haar_dwt(x, levels) / 2**levels`` (LL equals a 2^levels average pool)."""
    return _forward(x, levels, 1.0 / 2**levels)


def wavelet_decode(y: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`wavelet_encode`."""
    return _inverse(y, levels, float(2**levels))
