import numpy as np
import pytest
import pywt
import torch

from models.wavelet import haar_dwt, haar_idwt, haar_ll, wavelet_decode, wavelet_encode


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_level1_matches_pywavelets_band_by_band(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 12, dtype=dtype)
    y = haar_dwt(x)
    assert y.shape == (2, 12, 8, 6) and y.dtype == dtype
    ca, (ch, cv, cd) = pywt.dwt2(x.double().numpy(), "haar")  # transforms the last two axes
    # Documented order: LL = cA, LH = cH, HL = cV, HH = cD (subband-major: all C channels of a band together).
    for band, ref in enumerate((ca, ch, cv, cd)):
        np.testing.assert_allclose(y[:, band * 3:(band + 1) * 3].double().numpy(), ref, atol=1e-6)


def test_level2_is_the_full_packet_split():
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    y = haar_dwt(x, levels=2)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y, haar_dwt(haar_dwt(x)))
    # Channel block k of the second level is band k of all 8 first-level channels.
    ca, (ch, cv, cd) = pywt.dwt2(haar_dwt(x).numpy(), "haar")
    np.testing.assert_allclose(y[:, 8:16].numpy(), ch, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_perfect_reconstruction(levels):
    x = torch.randn(3, 4, 32, 24)
    torch.testing.assert_close(haar_idwt(haar_dwt(x, levels), levels), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(wavelet_decode(wavelet_encode(x, levels), levels), x, atol=1e-6, rtol=0)


def test_orthonormal_energy_and_scaling():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(haar_dwt(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-5)
    for levels in (1, 2):
        y = wavelet_encode(x, levels)
        f = 2**levels
        # The first C channels equal an f x f average pool, and every coefficient stays in [-1, 1].
        torch.testing.assert_close(y[:, :3], torch.nn.functional.avg_pool2d(x, f), atol=1e-6, rtol=0)
        assert y.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_is_the_scaled_transform_bit_for_bit(dtype):
    """``scale`` (a power of two) folds a multiply into the transform: the same values and gradients as scaling
    outside it, with one op fewer at scale 2 (the transform's own 1/2 cancels)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 12).to(dtype)
    y = torch.randn(2, 12, 4, 6).to(dtype)
    for scale in (0.5, 2.0, 0.25):
        for fn, inp in ((haar_dwt, x), (haar_idwt, y)):
            a, b = inp.clone().requires_grad_(), inp.clone().requires_grad_()
            ref, out = fn(a) * scale, fn(b, scale=scale)
            assert torch.equal(out, ref)
            g = torch.randn_like(ref)
            assert torch.equal(*torch.autograd.grad(out, b, g), *torch.autograd.grad(ref, a, g))
    for bad in (3.0, 0.0, -2.0, 1 / 3):
        with pytest.raises(ValueError, match="power of two"):
            haar_dwt(x, scale=bad)


def test_clear_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        haar_dwt(torch.randn(1, 1, 12, 10), levels=2)
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.randn(1, 1, 7, 8).expand(1, 1, 7, 8)[..., :7, :])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        haar_dwt(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="channel count divisible by 4"):
        haar_idwt(torch.randn(1, 6, 4, 4))
    with pytest.raises(TypeError):
        haar_dwt(torch.ones(1, 1, 4, 4, dtype=torch.long))


def test_autograd_and_adjointness():
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_dwt(t, 2), (x,))
    y = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_idwt, (y,))


def reference_dwt(x: torch.Tensor) -> torch.Tensor:
    """The textbook formula on the four pixels of each 2x2 block, for comparison."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.cat([(a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2], dim=1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_matches_the_block_formula_for_any_layout(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 12, dtype=torch.float64)
    ref = reference_dwt(x)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 5e-2}[dtype]
    xd = x.to(dtype)
    layouts = (xd, xd.contiguous(memory_format=torch.channels_last), xd.transpose(2, 3).contiguous().transpose(2, 3))
    for inp in layouts:  # contiguous, channels-last, W-major storage
        y = haar_dwt(inp)
        assert y.dtype == dtype and y.is_contiguous()
        torch.testing.assert_close(y.double(), ref, atol=tol, rtol=0)
        torch.testing.assert_close(haar_idwt(y).double(), x, atol=4 * tol, rtol=0)


def test_scaled_pair_is_exactly_the_scaled_transform():
    """The papers' 1/2^J is folded into the transform: powers of two, so bitwise the same numbers."""
    x = torch.randn(2, 3, 16, 16)
    for levels in (1, 2):
        y = wavelet_encode(x, levels)
        assert torch.equal(y, haar_dwt(x, levels) / 2**levels)
        assert torch.equal(wavelet_decode(y, levels), haar_idwt(y * 2**levels, levels))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_ll_band_alone_is_the_transforms_ll_band_bit_for_bit(dtype):
    """``haar_ll`` (the W-Generator's shortcut keeps only LL / 2) computes the band in fewer ops: the same values
    and the same input gradients as slicing the whole transform, to the bit, for any scale, layout and dtype."""
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 16, 12, dtype=torch.float64) * 4).to(dtype)
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, 2:10]):
        for scale in (1.0, 0.5, 2.0):
            a = inp.detach().requires_grad_()
            b = inp.detach().requires_grad_()
            ref = haar_dwt(a)[:, :5] * scale
            out = haar_ll(b, scale)
            assert out.dtype == dtype and out.is_contiguous() and torch.equal(out, ref)
            g = torch.randn_like(ref)
            (ga,), (gb,) = torch.autograd.grad(ref, a, g), torch.autograd.grad(out, b, g)
            assert torch.equal(ga, gb)
            with torch.no_grad():
                assert torch.equal(haar_ll(inp, scale), ref)
    xd = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_ll(t, 0.5), (xd,))
    assert torch.autograd.gradgradcheck(lambda t: haar_ll(t, 0.5), (xd,))
    with pytest.raises(ValueError, match="even height and width"):
        haar_ll(torch.randn(1, 1, 6, 7))


def test_double_backward_and_scaled_gradients():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: haar_dwt(t, 2), (x,))
    assert torch.autograd.gradgradcheck(haar_idwt, (y,))
    assert torch.autograd.gradcheck(lambda t: wavelet_encode(t, 2), (x,))
    assert torch.autograd.gradcheck(lambda t: wavelet_decode(t, 1), (y,))


def test_outputs_can_be_modified_in_place_under_autograd():
    """Callers scale transform outputs in place (models.layers): the outputs are fresh tensors, not views."""
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = haar_idwt(haar_dwt(x).mul_(2.0)).mul_(0.5)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.ones_like(x))


def test_no_flops_and_meta_device():
    """Sums and differences only: the FLOP counter (convolutions and matrix products) sees nothing, so model
    FLOP counts do not depend on how the transform is written; shapes work on the meta device."""
    from bench.evaluate import count_flops

    x = torch.randn(2, 3, 16, 16)
    assert count_flops(lambda v: haar_idwt(haar_dwt(v, 2), 2), x) == 0
    with torch.device("meta"):
        assert haar_dwt(torch.empty(2, 3, 16, 16), 2).shape == (2, 48, 4, 4)
        assert wavelet_decode(torch.empty(2, 12, 8, 8)).shape == (2, 3, 16, 16)
