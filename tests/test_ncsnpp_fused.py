"""The generator's faster formulations compute what the plain ones do.

models.layers writes the adaptive GroupNorm as one ``group_norm`` over (1, B*C) channels with the per-sample
gamma / beta as its affine, adds residuals and the time bias in place into fresh convolution outputs, and runs
SiLU in place when autograd is off. Each test below compares against the plain formulation written out here
(normalise, then ``gamma * x + beta``; out-of-place sums), in float64 where rounding would hide a real
difference, and checks that no input is modified.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (_INV_SQRT2, AdaptiveGroupNorm, AttnBlock, FrequencyBottleneck, LinearBank, ResBlock,
                           WaveletResBlock, silu, sum_bank_gradients_at_once)
from models.ncsnpp import NCSNppConfig, NCSNppGenerator

W_GEN = dict(wavelet_residual=True, wavelet_updown=True, wavelet_bottleneck=True)


def plain_adagn(norm: AdaptiveGroupNorm, x: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
    gamma, beta = norm.style(zemb)[:, :, None, None].chunk(2, dim=1)
    return gamma * F.group_norm(x, norm.groups, eps=1e-6) + beta


def plain_resblock(block: ResBlock, x, temb, zemb):
    h = F.silu(plain_adagn(block.norm0, x, zemb))
    if block.resample != "none":
        h, x = block.fir(h), block.fir(x)
    h = block.conv0(h)
    if block.skip is not None:
        x = block.skip(x)
    h = h + block.temb_proj(temb)[:, :, None, None]
    h = block.conv1(F.silu(plain_adagn(block.norm1, h, zemb)))
    return (x + h) * _INV_SQRT2


def randomised(module: nn.Module, std: float = 0.2) -> nn.Module:
    """Generic weights (zero-initialised layers would hide differences)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


@pytest.mark.parametrize("shape", [(3, 16, 8, 8), (2, 12, 4, 6)])
def test_fused_adaptive_group_norm_equals_normalise_then_scale_shift(shape):
    torch.manual_seed(0)
    norm = randomised(AdaptiveGroupNorm(shape[1], 10)).double()
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
    zemb = torch.randn(shape[0], 10, dtype=torch.float64, requires_grad=True)
    out, ref = norm(x, zemb), plain_adagn(norm, x, zemb)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, zemb, norm.style.weight), g)
    grads_ref = torch.autograd.grad(ref, (x, zemb, norm.style.weight), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    # float32: the two roundings agree to a few ulps.
    norm32 = norm.float()
    with torch.no_grad():
        torch.testing.assert_close(norm32(x.float(), zemb.float()), plain_adagn(norm32, x.float(), zemb.float()),
                                   atol=2e-5, rtol=1e-5)


def test_silu_is_in_place_only_without_autograd():
    h = torch.randn(4, 3)
    with torch.no_grad():
        assert silu(h) is h
    a = torch.randn(4, 3, requires_grad=True) * 1.0
    out = silu(a)
    assert out is not a
    out.sum().backward()  # would fail if SiLU had overwritten its input


@pytest.mark.parametrize("resample", ["none", "down", "up"])
def test_resblock_equals_plain_formulation_and_leaves_inputs_alone(resample):
    torch.manual_seed(0)
    block = randomised(ResBlock(8, 12 if resample == "none" else 8, temb_dim=16, zemb_dim=10, resample=resample))
    block = block.double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    temb, zemb = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 10, dtype=torch.float64)
    saved = [x.clone(), temb.clone(), zemb.clone()]
    ref = plain_resblock(block, x, temb, zemb)
    with torch.no_grad():  # in-place SiLU path
        torch.testing.assert_close(block(x, temb, zemb), ref.detach(), atol=1e-12, rtol=1e-12)
    xg = x.clone().requires_grad_()
    out = block(xg, temb, zemb)  # autograd path
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    gx, gw = torch.autograd.grad(out.square().sum(), (xg, block.conv0.weight))
    xr = x.clone().requires_grad_()
    rx, rw = torch.autograd.grad(plain_resblock(block, xr, temb, zemb).square().sum(), (xr, block.conv0.weight))
    torch.testing.assert_close(gx, rx, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gw, rw, atol=1e-10, rtol=1e-10)
    for a, b in zip((x, temb, zemb), saved):
        assert torch.equal(a, b)


def test_attention_and_wavelet_blocks_leave_inputs_alone():
    torch.manual_seed(0)
    temb, zemb = torch.randn(2, 16), torch.randn(2, 10)
    attn = randomised(AttnBlock(8))
    down = randomised(WaveletResBlock(8, 8, temb_dim=16, zemb_dim=10, resample="down"))
    up = randomised(WaveletResBlock(8, 8, temb_dim=16, zemb_dim=10, resample="up", detail_ch=8))
    mid = randomised(FrequencyBottleneck(8, temb_dim=16, zemb_dim=10, dropout=0.0, skip_rescale=True,
                                         fir_kernel=(1, 3, 3, 1)))
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        for run in (lambda v: attn(v), lambda v: down(v, temb, zemb), lambda v: mid(v, temb, zemb)):
            v = x.clone()
            run(v)
            assert torch.equal(v, x)
        low, details = down(x, temb, zemb)
        kept, low_in = details.clone(), low.clone()
        up(low, temb, zemb, details)
        assert torch.equal(details, kept) and torch.equal(low, low_in)


@pytest.mark.parametrize("wgen", [False, True])
def test_generator_same_output_with_and_without_autograd(wgen):
    """The in-place (no autograd) and out-of-place (autograd) paths give bitwise the same prediction, and the
    inputs are untouched."""
    torch.manual_seed(0)
    cfg = NCSNppConfig(4, 4, 16, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), nz=8,
                       z_emb_dim=16, n_mlp=2, **(W_GEN if wgen else {}))
    net = randomised(NCSNppGenerator(cfg), 0.1).eval()
    x, t, z = torch.randn(2, 4, 16, 16), torch.tensor([0, 3]), torch.randn(2, 8)
    saved = x.clone(), z.clone()
    with torch.no_grad():
        fast = net(x, t, z)
    slow = net(x, t, z)
    assert slow.requires_grad and torch.equal(fast, slow.detach())
    assert torch.equal(x, saved[0]) and torch.equal(z, saved[1])
    with torch.inference_mode():
        assert torch.equal(net(x, t, z), fast)


def _unbanked(net: nn.Module):
    """The same network computing every style / time projection in its own block (the per-block reference)."""
    ref = __import__("copy").deepcopy(net)
    for name in ("style_bank", "time_bank"):
        if hasattr(ref, name):
            setattr(ref, name, lambda x: x)
    return ref


@pytest.mark.parametrize("fast", [False, True], ids=["layerwise", "fast_sums"])
@pytest.mark.parametrize("wgen", [False, True])
def test_banked_projections_equal_per_block_projections(wgen, fast):
    """One matmul for all styles and one for all time projections (models.layers.LinearBank) computes what each
    block's own linear layer does, bit for bit: outputs and every gradient (the input's summed in autograd's
    order), and the parameters keep their names. The W-Generator's bottleneck reuses a block: rounding there.
    With the gradients summed at once (``train.fast_sums``): the same within rounding."""
    from models.discriminator import Discriminator, DiscriminatorConfig
    torch.manual_seed(0)
    cfg = NCSNppConfig(4, 4, 16, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), nz=8,
                       z_emb_dim=16, n_mlp=2, **(W_GEN if wgen else {}))
    g = randomised(NCSNppGenerator(cfg), 0.1)
    d = randomised(Discriminator(DiscriminatorConfig(in_channels=4, image_size=16, ngf=4, num_layers=3,
                                                      t_emb_dim=16)), 0.1)
    assert (sum_bank_gradients_at_once(g, fast), sum_bank_gradients_at_once(d, fast)) == (2, 1)
    x, t, z = torch.randn(3, 4, 16, 16), torch.tensor([0, 3, 1]), torch.randn(3, 8)
    results = []
    for gen, disc in ((g, d), (_unbanked(g), _unbanked(d))):
        assert [n for n, _ in gen.named_parameters()] == [n for n, _ in g.named_parameters()]
        xg = x.clone().requires_grad_()
        out = disc(xg, t, gen(xg, t, z))
        params = list(gen.parameters()) + list(disc.parameters())
        results.append((out, *torch.autograd.grad(out.square().sum(), [xg] + params)))
    for a, b in zip(*results):
        if wgen or fast:  # the frequency bottleneck runs block2 twice: its two uses now share one projection,
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # whose gradients meet before the mm: rounding
        else:  # bitwise: a training run's trajectory must not change
            assert torch.equal(a, b)


class _Bank(nn.Module):
    def __init__(self, widths, silu: bool):
        super().__init__()
        self.layers = nn.ModuleList(randomised(nn.Linear(12, n), 0.3) for n in widths)
        self.bank = LinearBank(self.layers, silu=silu)


@pytest.mark.parametrize("silu", [False, True])
def test_bank_gradients_summed_at_once_equal_the_layerwise_ones_within_rounding(silu):
    """``sum_bank_gradients_at_once`` (``train.fast_sums``): the input's gradient one matmul, the bias's one sum,
    instead of about three ops per layer; the same outputs, and the same gradients as the default (layer by layer,
    the separate layers' bit for bit: the network test above) within fp32 rounding."""
    from bench.perf.ops import OpCounter
    torch.manual_seed(0)
    widths = (16, 8, 24, 40, 32)
    net = _Bank(widths, silu)
    x0 = torch.randn(5, 12)
    weights = [torch.randn(5, n) for n in widths]
    results, backward_ops = [], []
    for at_once in (False, True):
        assert sum_bank_gradients_at_once(net, at_once) == 1 and net.bank.layerwise_grads is not at_once
        x = x0.clone().requires_grad_()
        out = net.bank(x)
        loss = sum((out[layer] * w).sum() for layer, w in zip(net.layers, weights))
        with OpCounter() as c:
            grads = torch.autograd.grad(loss, [x, *net.parameters()])
        results.append(([out[layer] for layer in net.layers], grads))
        backward_ops.append(c.ops)
    (out_a, grads_a), (out_b, grads_b) = results
    assert all(torch.equal(a, b) for a, b in zip(out_a, out_b))
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert backward_ops[0] - backward_ops[1] >= 2 * (len(widths) - 1)  # per layer: an mm, an add, a sum (+SiLU's)


def _old_wavelet_blocks(down, up, mid, x, temb, zemb):
    """The W-Generator's blocks with their powers of two written out as separate ops (before they were folded
    into the transforms): DWT, LL / 2 and details kept whole; conv(details / 2) * 2 and IDWT(2 h, ...)."""
    from models.wavelet import haar_dwt, haar_idwt, haar_ll
    h = down.conv0(silu(down.norm0(x, zemb)))
    s = down.skip(x)
    c = h.shape[1]
    hw = haar_dwt(h)
    low = down._finish(haar_ll(s, 0.5), hw[:, :c] / 2.0, temb, zemb)
    details = hw[:, c:]
    h = up.conv0(silu(up.norm0(low, zemb)))
    s = up.skip(low)
    kept = up.detail_conv(details / 2.0) * 2.0
    h = up._finish(haar_idwt(torch.cat([s * 2.0, kept], 1)), haar_idwt(torch.cat([h * 2.0, kept], 1)), temb, zemb)
    hw = haar_dwt(h)
    ll = mid.block1(hw[:, :c] / 2.0, temb, zemb)
    return haar_idwt(torch.cat([ll * 2.0, hw[:, c:]], 1))


def test_wavelet_blocks_fold_their_powers_of_two_bit_for_bit():
    """Down block -> up block -> the bottleneck's LL pass, against the same blocks with every scaling by two as
    its own op: outputs and every gradient equal to the bit."""
    torch.manual_seed(0)
    temb, zemb = torch.randn(2, 16), torch.randn(2, 10)
    down = randomised(WaveletResBlock(8, 8, temb_dim=16, zemb_dim=10, resample="down"))
    up = randomised(WaveletResBlock(8, 8, temb_dim=16, zemb_dim=10, resample="up", detail_ch=8))
    mid = randomised(FrequencyBottleneck(8, temb_dim=16, zemb_dim=10, dropout=0.0, skip_rescale=True,
                                         fir_kernel=(1, 3, 3, 1)))
    params = [*down.parameters(), *up.parameters(), *mid.block1.parameters()]
    x0 = torch.randn(2, 8, 16, 16)
    results = []
    def folded(v):
        low, details = down(v, temb, zemb)
        return mid._on_ll(mid.block1, up(low, temb, zemb, details), temb, zemb)

    for run in (folded, lambda v: _old_wavelet_blocks(down, up, mid, v, temb, zemb)):
        x = x0.clone().requires_grad_()
        out = run(x)
        results.append((out, *torch.autograd.grad(out.square().sum(), [x, *params])))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _native_fir(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The FIR filters as PyTorch's grouped convolutions (whose double backward loops over the channels)."""
    from models.layers import FirConvDownsample, FirDownsample, FirUpsample
    f = module.filter.to(x.dtype)
    if isinstance(module, FirUpsample):
        return F.conv_transpose2d(x, f, stride=2, padding=module.pad, groups=x.shape[1])
    if isinstance(module, FirDownsample):
        return F.conv2d(x, f, stride=2, padding=module.pad, groups=x.shape[1])
    assert isinstance(module, FirConvDownsample)
    return F.conv2d(x, f, padding=module.pad, groups=x.shape[1])


def _fir_cases():
    from models.layers import FirConvDownsample, FirDownsample, FirUpsample
    return [(FirDownsample(3), (2, 3, 8, 8)), (FirDownsample(2), (1, 2, 7, 5)), (FirUpsample(3), (2, 3, 5, 4)),
            (FirDownsample(2, (1, 1)), (1, 2, 6, 6)), (FirConvDownsample(3, 4), (2, 3, 6, 6))]


@pytest.mark.parametrize("case", range(5))
def test_fir_function_first_and_second_derivatives_equal_grouped_convolution(case):
    """The FIR autograd function (backward = the adjoint convolution, itself differentiable) against PyTorch's
    grouped convolutions in float64: values, gradcheck / gradgradcheck, and R1's double backward."""
    module, shape = _fir_cases()[case]
    module = module.double()
    fir = (lambda v: module.fir(v, 1, module.pad)) if hasattr(module, "weight") else module
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fir(x), _native_fir(module, x), atol=1e-14, rtol=1e-13)
    assert torch.autograd.gradcheck(fir, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fir, (x,), fast_mode=True)
    w = torch.randn_like(fir(x))
    penalty = []
    for f in (fir, lambda v: _native_fir(module, v)):  # an R1-like penalty, then its gradient
        (g,) = torch.autograd.grad((f(x).tanh() * w).sum(), x, create_graph=True)
        penalty.append(torch.autograd.grad(g.square().sum(), x)[0])
    torch.testing.assert_close(*penalty, atol=1e-12, rtol=1e-10)


def test_fir_double_backward_runs_no_convolution_per_channel():
    """R1's double backward through a FIR downsample of C channels: a constant number of convolutions, not ~C."""
    from bench.perf.ops import OpCounter
    from models.layers import FirDownsample

    down = FirDownsample(64)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    with OpCounter() as counter:
        (g,) = torch.autograd.grad(down(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
    convs = sum(n for op, n in counter.by_op.items() if "convolution" in op)
    assert 0 < convs <= 4


def test_fir_filter_cast_once_with_the_weights():
    """Under bf16 autocast the FIR filter's bf16 copy comes with the weights' (bench.train.LowPrecisionWeights:
    made once, in the same flat buffer, no gradient); a call casts only its input. The result is autocast's own (a
    bf16 convolution with the filter cast), with and without the copies; the module keeps its fp32 buffer."""
    from bench.perf.ops import OpCounter
    from bench.train import LowPrecisionWeights
    from models.layers import FirConvDownsample, FirDownsample

    for module in (FirDownsample(4), FirConvDownsample(4, 3)):
        x = torch.randn(2, 4, 8, 8)
        fp32 = module.filter
        cast = LowPrecisionWeights(module, torch.bfloat16)
        assert any(t is fp32 for t in cast.tensors) and not any(t is fp32 for t in cast.params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = _native_fir(module, x)
            if isinstance(module, FirConvDownsample):
                ref = F.conv2d(ref, module.weight, module.bias, stride=2)
            plain = module(x)
            with cast.attached(), OpCounter() as counter:
                out = module(x)
        assert module.filter is fp32 and fp32.dtype == torch.float32
        assert out.dtype == plain.dtype == ref.dtype == torch.bfloat16
        assert torch.equal(out, ref) and torch.equal(plain, ref)
        assert counter.by_op.get(str(torch.ops.aten._to_copy.default), 0) == 1  # the input's cast only
        module.to(torch.float64).float()  # buffers replaced: found again
        cast.refresh()
        assert any(t is module.filter for t in cast.tensors)