"""Building blocks of the NCSN++ generator with adaptive GroupNorm (DDGAN / WaveDiff).

FIR resampling uses fixed depthwise convolutions whose filters are built once, as non-persistent buffers
sized for the layer's channel count; they run through one autograd function whose backward is the adjoint
convolution (so R1's double backward does not loop over channels), with the filter cast once under autocast. Every DWT / IDWT goes through :mod:`models.wavelet`.

Speed on CPU (same arithmetic as the plain formulation, up to float rounding): the adaptive GroupNorm is one
native ``group_norm`` call over (1, B*C) channels with the per-sample gamma / beta as its affine parameters;
residual sums and the time bias are added in place to freshly computed convolution outputs (never to a tensor
autograd saved); SiLU runs in place when no gradient is being recorded. Each avoids allocating and writing a
full-size activation, which dominates these layers at sampling batch sizes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.wavelet import haar_dwt, haar_idwt, haar_ll, wavelet_encode

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------
# Initialisation (DDPM-style variance scaling, uniform)
# --------------------------------------------------------------------------------------------------


def variance_scaling_(weight: torch.Tensor, scale: float = 1.0, mode: str = "fan_avg") -> torch.Tensor:
    """Uniform variance-scaling init in place; ``scale`` 0 means 1e-10 (a near-zero, trainable layer)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    bound = math.sqrt(3.0 * scale / fan)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, init_scale: float = 1.0, groups: int = 1,
           stride: int = 1) -> nn.Conv2d:
    """Convolution with 'same' padding (for stride 1), DDPM init and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def linear(in_dim: int, out_dim: int, init_scale: float = 1.0, mode: str = "fan_avg") -> nn.Linear:
    """Linear layer with DDPM init and zero bias."""
    lin = nn.Linear(in_dim, out_dim)
    variance_scaling_(lin.weight, init_scale, mode)
    nn.init.zeros_(lin.bias)
    return lin


def num_groups(channels: int) -> int:
    """GroupNorm group count of NCSN++: min(channels // 4, 32)."""
    return max(1, min(channels // 4, 32))


def silu(h: torch.Tensor) -> torch.Tensor:
    """SiLU of a freshly computed tensor: in place unless autograd is recording ``h``."""
    return F.silu(h, inplace=not (torch.is_grad_enabled() and h.requires_grad))


def residual(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """(x + h) * (1 / sqrt 2) (or x + h), written into ``h``: a fresh output that autograd did not save."""
    h = h.add_(x)
    return h.mul_(_INV_SQRT2) if skip_rescale else h


# --------------------------------------------------------------------------------------------------
# Embeddings and normalisation
# --------------------------------------------------------------------------------------------------


_FREQS: dict[tuple[int, float, torch.device], torch.Tensor] = {}  # timestep_embedding's frequencies


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = False,
                       downscale_freq_shift: float = 1.0, max_period: float = 10000.0) -> torch.Tensor:
    """The one sinusoidal embedding of (B,) time indices, (B, dim), parameterised as diffusers'
    ``get_timestep_embedding``: frequencies w_i = max_period^(-i / (half - downscale_freq_shift)), i < half =
    dim // 2; halves [sin(t w), cos(t w)], or [cos, sin] with ``flip_sin_to_cos``; an odd dim gets a zero column.

    The networks' conventions: NCSN++ and the DDGAN discriminators (the defaults: shift 1, sin first); the
    diffusers-layout UNet (shift 0, cos first); U-KAN (shift 0, sin first)."""
    half = dim // 2
    exponent = -math.log(max_period) / max(half - downscale_freq_shift, 1)
    key = (half, exponent, t.device)
    freqs = _FREQS.get(key)
    if freqs is None:  # made once per size and device (a normal tensor even in inference mode: autograd uses it)
        with torch.inference_mode(False):
            freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * exponent)
        if not (freqs.is_cuda and torch.cuda.is_current_stream_capturing()):  # a graph's pool must not keep it
            _FREQS[key] = freqs
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)],
                    dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2) + 1e-8) over the feature dimension."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class _BankLinear(torch.autograd.Function):
    """``F.linear(x, w, b)`` over the concatenated weights of a :class:`LinearBank`, with the gradients the separate
    layers' own linears would give, bit for bit: the weight gradient is one mm (row for row what each layer's
    would be), the bias gradient one sum per layer, and the input's gradient each layer's product summed last layer first,
    as autograd accumulated the separate layers' contributions (one big mm would sum in another order: a rounding
    difference that a GAN's training amplifies within a few dozen steps). With ``bank.layerwise_grads`` off
    (``train.fast_sums``), the input gradient is that one mm and the bias gradient one sum: the same mathematics,
    2 ops where a bank of L layers takes about 3 L, rounded in another order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, bank: "LinearBank") -> torch.Tensor:
        s = F.silu(x) if bank.silu else x
        ctx.save_for_backward(x, s, w)
        ctx.bank, ctx.layerwise = bank, bank.layerwise_grads
        return F.linear(s, w, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, s, w = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        spans = list(zip(ctx.bank.offsets, ctx.bank.widths))
        if not ctx.layerwise:
            spans = [(0, ctx.bank.width)]
        if ctx.needs_input_grad[0]:
            for a, n in reversed(spans):
                part = grad[:, a:a + n].mm(w[a:a + n])
                if ctx.bank.silu:  # each layer's own SiLU backward, as when every layer applied its own SiLU
                    part = torch.ops.aten.silu_backward(part, x)
                grad_x = part if grad_x is None else grad_x + part
        if ctx.needs_input_grad[1]:
            grad_w = grad.t().mm(s)  # laid out like w (autograd's choice for the separate layers too)
        if ctx.needs_input_grad[2]:  # per layer: a sum over one wide row reduces some columns in another order
            grad_b = torch.cat([grad[:, a:a + n].sum(0) for a, n in spans]) if ctx.layerwise else grad.sum(0)
        return grad_x, grad_w, grad_b, None


class LinearBank:
    """Linear layers that read the same input, applied as one matmul: ``x [W_1; W_2; ...]^T + [b_1; b_2; ...]``.

    ``bank(x)`` maps each layer to its output: a (B, out) column slice of the one product, or with ``pairs`` (the
    adaptive GroupNorms' styles: each output is a gamma half and a beta half over C channels) gamma and beta, each
    (B * C,) in the layout that :class:`AdaptiveGroupNorm`'s fused ``group_norm`` takes, all laid out by one gather.
    The layers keep their parameters (state-dict names and shapes unchanged); the concatenation is rebuilt on every
    call (one cat of weights, one of biases, whose backward is slicing), so it follows every update. Not a module:
    the layers are registered where they are built.

    ``silu``: the layers read ``SiLU(x)`` (each of them applied its own, as the DDPM UNet's blocks do): computed
    once, and each layer's input gradient passes its own SiLU backward before they are summed, so the gradient
    reaching ``x`` is the separate SiLUs' bit for bit. Under autocast the SiLU runs on the low-precision input: the
    same as the separate layers where ``x`` is already in it (a linear layer's output, as both denoisers' time
    embeddings are).

    ``layerwise_grads`` (default on): the gradients bit for bit the separate layers'; off (the trainers'
    ``train.fast_sums``, set by :func:`sum_bank_gradients_at_once`): the input's gradient is one matmul and the
    bias's one sum, the same mathematics rounded in another order."""

    def __init__(self, layers: Sequence[nn.Linear], pairs: bool = False, silu: bool = False):
        self.layers = list(layers)
        self.pairs, self.silu = pairs, silu
        self.layerwise_grads = True
        self.widths = [layer.out_features for layer in self.layers]
        self.offsets = [sum(self.widths[:i]) for i in range(len(self.widths))]
        self.width = sum(self.widths)
        self._index: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _gather_index(self, b: int, device: torch.device) -> torch.Tensor:
        """Flat positions in the (B, N) product of every layer's (2, B, C) gamma / beta block, layers in order."""
        key = (b, device)
        if key not in self._index:
            parts = []
            for layer, off in zip(self.layers, self.offsets):
                c = layer.out_features // 2
                k, i, j = torch.meshgrid(torch.arange(2), torch.arange(b), torch.arange(c), indexing="ij")
                parts.append((i * self.width + off + k * c + j).reshape(-1))
            self._index[key] = torch.cat(parts).to(device)
        return self._index[key]

    def __call__(self, x: torch.Tensor) -> dict[nn.Linear, torch.Tensor]:
        if not self.layers:
            return {}
        w = torch.cat([layer.weight for layer in self.layers])
        bias = torch.cat([layer.bias for layer in self.layers])
        kind = x.device.type
        if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
            # What autocast does to a linear: its inputs cast (autograd ops, so the gradients reach the fp32
            # weights cast back), the product and its backward in the low precision.
            dt = torch.get_autocast_dtype(kind)
            with torch.autocast(kind, enabled=False):
                out = _BankLinear.apply(x.to(dt), w.to(dt), bias.to(dt), self)
        else:
            out = _BankLinear.apply(x, w, bias, self)
        if not self.pairs:  # one split: its backward is one cat, where a slice per layer would be a copy each
            return dict(zip(self.layers, out.split(self.widths, dim=1)))
        b = out.shape[0]
        flat = out.reshape(-1).index_select(0, self._gather_index(b, out.device))
        halves = flat.split([b * layer.out_features // 2 for layer in self.layers for _ in range(2)])
        return {layer: (halves[2 * i], halves[2 * i + 1]) for i, layer in enumerate(self.layers)}


def sum_bank_gradients_at_once(network: nn.Module, on: bool = True) -> int:
    """Set every :class:`LinearBank` held by ``network``'s modules to sum its gradients in one matmul and one sum
    (``on``) or layer by layer, bit for bit the separate layers' (off, the default). Returns how many banks."""
    banks = [v for m in network.modules() for v in vars(m).values() if isinstance(v, LinearBank)]
    for bank in banks:
        bank.layerwise_grads = not on
    return len(banks)


def projected(layer: nn.Linear, x: torch.Tensor | dict) -> torch.Tensor:
    """``layer``'s output: looked up in a :class:`LinearBank`'s result, or computed from the input tensor."""
    return x[layer] if isinstance(x, dict) else layer(x)


def silu_projected(layer: nn.Linear, x: torch.Tensor | dict) -> torch.Tensor:
    """``layer(SiLU(x))``: looked up in a ``LinearBank(..., silu=True)`` result, or computed from the tensor."""
    return x[layer] if isinstance(x, dict) else layer(F.silu(x))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine parameters, then gamma(z) * x + beta(z) from a linear map of the latent.

    ``zemb`` is the latent embedding (B, style_dim), or a :class:`LinearBank` result holding this layer's style
    already laid out (the generator computes every style of a call in one matmul)."""

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.groups = num_groups(channels)
        self.style = linear(style_dim, 2 * channels, mode="fan_out")
        with torch.no_grad():
            self.style.bias[:channels] = 1.0  # gamma starts at 1, beta at 0

    def forward(self, x: torch.Tensor, zemb: torch.Tensor | dict) -> torch.Tensor:
        # GroupNorm over (B, C) with G groups is GroupNorm over (1, B*C) with B*G groups; the per-sample
        # gamma / beta are then its per-channel affine: one fused pass instead of normalise, then scale-shift.
        b, c = x.shape[:2]
        if isinstance(zemb, dict):
            gamma, beta = zemb[self.style]
        else:
            gamma, beta = self.style(zemb).view(b, 2, c).transpose(0, 1).reshape(2, b * c)  # one small copy
        out = F.group_norm(x.reshape(1, b * c, *x.shape[2:]), b * self.groups, gamma, beta, eps=1e-6)
        return out.view(x.shape)


# --------------------------------------------------------------------------------------------------
# FIR up / down sampling (StyleGAN2 / NCSN++ semantics, zero padding, even-length kernels)
# --------------------------------------------------------------------------------------------------


def _fir_filter(kernel: Sequence[int], channels: int, gain: float) -> torch.Tensor:
    """Depthwise (channels, 1, K, K) filter: outer(k, k) normalised to sum ``gain``, flipped for conv2d."""
    k = torch.tensor(kernel, dtype=torch.float32)
    if k.dim() != 1 or len(k) % 2:
        raise ValueError(f"fir_kernel must be a 1-D sequence of even length, got {tuple(kernel)}")
    k2 = torch.outer(k, k)
    k2 = (k2 / k2.sum() * gain).flip(0, 1)
    return k2[None, None].repeat(channels, 1, 1, 1).contiguous()


class _DepthwiseFIR(torch.autograd.Function):
    """``conv2d(x, f, stride, padding, groups=C)`` (or with ``transpose``, ``conv_transpose2d``) by a fixed depthwise
    filter ``f``, whose backward is its adjoint: the other of the two, again this function. Every order of derivative
    (R1's double backward included) is then one grouped convolution, where PyTorch's double backward of a grouped
    convolution runs one convolution per channel. ``f`` is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, x, f, stride: int, padding: int, transpose: bool, output_padding: tuple[int, int]):
        ctx.save_for_backward(f)
        ctx.conf = stride, padding, transpose, tuple(x.shape[-2:])
        if transpose:
            return F.conv_transpose2d(x, f, stride=stride, padding=padding, output_padding=output_padding,
                                      groups=x.shape[1])
        return F.conv2d(x, f, stride=stride, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        stride, padding, transpose, in_size = ctx.conf
        if transpose:  # adjoint of the transposed convolution: the convolution
            return _DepthwiseFIR.apply(grad, f, stride, padding, False, (0, 0)), None, None, None, None, None
        # adjoint of the convolution: the transposed one, padded on the far side back to the input's size
        k = f.shape[-1]
        out_pad = tuple(n - ((m - 1) * stride - 2 * padding + k) for n, m in zip(in_size, grad.shape[-2:]))
        return _DepthwiseFIR.apply(grad, f, stride, padding, True, out_pad), None, None, None, None, None


def _autocast_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution of ``x`` in (``x``'s own outside autocast or for float64)."""
    dev = x.device.type
    if x.dtype != torch.float64 and torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _FirFilter(nn.Module):
    """Holds a depthwise FIR filter (a non-persistent buffer) and applies it with :class:`_DepthwiseFIR`, in the
    dtype autocast would run the convolution in. The training steps and the bf16 sampler hand it the filter's
    bf16 copy, made once with the weights' (``autocast_weights``, bench.train.LowPrecisionWeights); elsewhere the
    filter is cast at each call, as autocast would."""

    autocast_weights = ("filter",)  # the filter only enters the (low-precision) convolution

    def fir(self, x: torch.Tensor, stride: int, padding: int, transpose: bool = False) -> torch.Tensor:
        dtype = _autocast_dtype(x)
        return _DepthwiseFIR.apply(x.to(dtype), self.filter.to(dtype), stride, padding, transpose, (0, 0))


class FirDownsample(_FirFilter):
    """Blur with the FIR kernel and keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.register_buffer("filter", _fir_filter(kernel, channels, 1.0), persistent=False)
        self.pad = (len(kernel) - 2) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fir(x, 2, self.pad)


class FirUpsample(_FirFilter):
    """Zero-insertion upsampling by 2 followed by the FIR kernel (gain 4), as one transposed depthwise conv."""

    def __init__(self, channels: int, kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.register_buffer("filter", _fir_filter(kernel, channels, 4.0).flip(2, 3).contiguous(),
                             persistent=False)
        self.pad = len(kernel) // 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fir(x, 2, self.pad, transpose=True)


class FirConvDownsample(_FirFilter):
    """FIR blur then 3x3 convolution with stride 2 (StyleGAN2's fused conv-downsample), with bias."""

    autocast_weights = ("weight", "bias", "filter")  # all only enter convolutions (bench.train.LowPrecisionWeights)

    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("filter", _fir_filter(kernel, in_ch, 1.0), persistent=False)
        self.pad = len(kernel) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.fir(x, 1, self.pad), self.weight, self.bias, stride=2)


class FirConvUpsample(_FirFilter):
    """3x3 transposed convolution with stride 2, then FIR blur (gain 4): StyleGAN2's fused upsample-conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        # Stored in conv_transpose2d layout (in, out, 3, 3).
        self.weight = nn.Parameter(variance_scaling_(torch.empty(in_ch, out_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("filter", _fir_filter(kernel, out_ch, 4.0), persistent=False)
        self.pad = len(kernel) // 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fir(F.conv_transpose2d(x, self.weight, stride=2), 1, self.pad)
        return x + self.bias[:, None, None]


class WaveletDownsample(nn.Module):
    """Frequency residual connection: DWT, the 4 subbands stacked and divided by 2, then a 3x3 conv (the division
    inside the transform: ``wavelet_encode`` is ``haar_dwt / 2`` bit for bit, one op fewer each way)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = conv2d(4 * in_ch, out_ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(wavelet_encode(x))


# --------------------------------------------------------------------------------------------------
# Attention and residual blocks
# --------------------------------------------------------------------------------------------------


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (NCSN++ AttnBlockpp), residual scaled by 1/sqrt(2)."""

    def __init__(self, channels: int, skip_rescale: bool = True):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups(channels), channels, eps=1e-6)
        self.qkv = linear(channels, 3 * channels)
        for w in self.qkv.weight.data.chunk(3, dim=0):  # q, k and v each initialised as a C x C map
            variance_scaling_(w, 0.1)
        self.proj = linear(channels, channels, init_scale=0.0)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, HW, C) each
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = x + self.proj(h).transpose(1, 2).reshape(b, c, hh, ww)  # laid out like x
        return h.mul_(_INV_SQRT2) if self.skip_rescale else h


class ResBlock(nn.Module):
    """BigGAN-style residual block with adaptive GroupNorm and a time bias; optional FIR up/down sampling.

    ``temb`` given to ``forward`` is the time embedding after SiLU (computed once per network call), ``zemb`` the
    latent embedding; or each a :class:`LinearBank` result with this block's projections of them.
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int = 512, zemb_dim: int = 256,
                 resample: str = "none", dropout: float = 0.0, skip_rescale: bool = True,
                 fir_kernel: Sequence[int] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if resample not in ("none", "up", "down"):
            raise ValueError(f"resample must be 'none', 'up' or 'down', got {resample!r}")
        self.in_ch, self.out_ch, self.resample = in_ch, out_ch, resample
        self.norm0 = AdaptiveGroupNorm(in_ch, zemb_dim)
        self.conv0 = conv2d(in_ch, out_ch, 3)
        self.temb_proj = linear(temb_dim, out_ch)
        self.norm1 = AdaptiveGroupNorm(out_ch, zemb_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = conv2d(out_ch, out_ch, 3, init_scale=0.0)
        self.skip = conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or resample != "none") else None
        self.skip_rescale = skip_rescale
        self._init_resampler(in_ch, fir_kernel)

    def _init_resampler(self, channels: int, fir_kernel: Sequence[int]) -> None:
        if self.resample == "up":
            self.fir = FirUpsample(channels, fir_kernel)
        elif self.resample == "down":
            self.fir = FirDownsample(channels, fir_kernel)

    def _finish(self, x: torch.Tensor, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor,
                fresh: bool = True) -> torch.Tensor:
        """``h``: a fresh tensor (conv0's output or a transform of it) that autograd did not save, added to in
        place; or (``fresh=False``) a view that must not be written."""
        p = projected(self.temb_proj, temb)[:, :, None, None]
        h = h.add_(p) if fresh else h + p
        h = self.conv1(self.dropout(silu(self.norm1(h, zemb))))
        return residual(x, h, self.skip_rescale)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = silu(self.norm0(x, zemb))
        if self.resample != "none":
            h, x = self.fir(h), self.fir(x)
        h = self.conv0(h)
        if self.skip is not None:
            x = self.skip(x)
        return self._finish(x, h, temb, zemb)


class WaveletResBlock(ResBlock):
    """Frequency-aware down / up block of the W-Generator.

    down: conv0 and the 1x1 shortcut run at full resolution; both are DWT'd, their LL / 2 continues and the
    main path's three detail bands are returned as the skip. ``forward`` returns (out, details).
    up: conv0 and the shortcut run at low resolution; the kept details pass a grouped 3x3 conv (one group per
    band, input / 2, output * 2) and IDWT(2 h, details) replaces upsampling on both paths.

    The powers of two are folded into the transforms (bit for bit the same values): the down block hands its
    details over already halved, which is what the up block's conv reads.
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int = 512, zemb_dim: int = 256,
                 resample: str = "down", dropout: float = 0.0, skip_rescale: bool = True,
                 detail_ch: int | None = None):
        if resample not in ("up", "down"):
            raise ValueError(f"WaveletResBlock resamples: resample must be 'up' or 'down', got {resample!r}")
        super().__init__(in_ch, out_ch, temb_dim, zemb_dim, resample, dropout, skip_rescale)
        if resample == "up":
            if detail_ch is None:
                raise ValueError("an up WaveletResBlock needs detail_ch (channels of the kept detail bands)")
            self.detail_conv = conv2d(3 * detail_ch, 3 * self.out_ch, 3, groups=3)

    def _init_resampler(self, channels: int, fir_kernel: Sequence[int]) -> None:
        pass  # the DWT / IDWT replace the FIR filters

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor,
                details: torch.Tensor | None = None):
        h = self.conv0(silu(self.norm0(x, zemb)))
        x = self.skip(x)
        if self.resample == "down":
            c = h.shape[1]
            # The halves in one transform (LL / 2 continues, details / 2 are kept), the split's backward one cat.
            h, details = haar_dwt(h, scale=0.5).split([c, 3 * c], dim=1)
            x = haar_ll(x, 0.5)  # only the LL band continues on the shortcut
            return self._finish(x, h, temb, zemb, fresh=False), details
        if details is None:
            raise ValueError("an up WaveletResBlock needs the detail bands kept by its down block (halved)")
        # IDWT(2 h, 2 conv(details / 2)) as IDWT(h, conv(details / 2)) times 2: bit for bit, a power of two passes
        # exactly through every product and sum (the down block handed the details over halved)
        details = self.detail_conv(details)
        h = haar_idwt(torch.cat([h, details], dim=1), scale=2.0)
        x = haar_idwt(torch.cat([x, details], dim=1), scale=2.0)
        return self._finish(x, h, temb, zemb)


class MidBlock(nn.Module):
    """Middle of the U-Net: ResBlock, attention, ResBlock at the lowest resolution."""

    def __init__(self, channels: int, temb_dim: int, zemb_dim: int, dropout: float, skip_rescale: bool,
                 fir_kernel: Sequence[int]):
        super().__init__()
        self.block1 = ResBlock(channels, channels, temb_dim, zemb_dim, "none", dropout, skip_rescale, fir_kernel)
        self.attn = AttnBlock(channels, skip_rescale)
        self.block2 = ResBlock(channels, channels, temb_dim, zemb_dim, "none", dropout, skip_rescale, fir_kernel)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = self.block1(h, temb, zemb)
        h = self.attn(h)
        return self.block2(h, temb, zemb)


class FrequencyBottleneck(MidBlock):
    """W-Generator middle: the ResBlocks act on LL / 2 of the features (DWT -> block -> IDWT(2 x, details)).

    Attention stays at full resolution. As in the public implementation, ``block2`` runs twice: once on the
    full-resolution features, then (same weights) on their LL band.
    """

    @staticmethod
    def _on_ll(block: ResBlock, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        c = h.shape[1]
        ll, details = haar_dwt(h, scale=0.5).split([c, 3 * c], dim=1)  # LL / 2 and details / 2
        return haar_idwt(torch.cat([block(ll, temb, zemb), details], dim=1), scale=2.0)  # IDWT(2 out, details)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = self._on_ll(self.block1, h, temb, zemb)
        h = self.attn(h)
        h = self.block2(h, temb, zemb)
        return self._on_ll(self.block2, h, temb, zemb)
