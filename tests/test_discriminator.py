"""Discriminator: paper parameter counts, FIR downsampling, minibatch stddev, shapes and gradients."""
import math

import numpy as np
import pytest
import torch

from models.discriminator import DISCRIMINATOR_PRESETS, Discriminator, DiscriminatorConfig, minibatch_stddev
from models.layers import FirDownsample

# Published counts (PAPERS.md, measured on the public model classes) and the configuration producing each.
# num_layers counts DownBlocks: "small" = [2ngf keep, 4ngf down, 8ngf down, 8ngf down][:num_layers];
# "large" = [4ngf down, 8ngf down, then 8ngf down ...][:num_layers]. Input channels only change the 1x1 start
# conv (2C x 128 weights), hence e.g. STL-10 (C=12) = DDGAN CIFAR-10 (C=3) + 2,304 parameters.
PAPER_COUNTS = {
    "ddgan-cifar10": 12.74e6,          # small, 4 layers, 3x32x32
    "wavediff-cifar10": 7.63e6,        # small, 3 layers, 12x16x16 (run.sh: --num_disc_layers 3)
    "wavediff-stl10": 12.74e6,         # small, 4 layers, 12x32x32
    "wavediff-celebahq256": 22.63e6,   # large, 5 layers, 12x128x128
    "wavediff-lsun256": 22.63e6,       # large, 5 layers, 12x128x128
    "ddgan-celebahq256": 27.74e6,      # large, 6 layers, 3x256x256
    "wavediff-celebahq512": 27.74e6,   # large, 6 layers, 12x256x256
    "wavediff-celebahq1024": 27.74e6,  # large, 6 layers, 12x512x512 (D input not patched in the public run)
}


def _count(cfg: DiscriminatorConfig) -> int:
    with torch.device("meta"):  # no memory, no init cost: counting only
        return sum(p.numel() for p in Discriminator(cfg).parameters())


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_parameter_counts(name):
    n = _count(DISCRIMINATOR_PRESETS[name])
    # Published values are rounded to 0.01M (<= 0.07% of 7.63M); 0.1% leaves no room for a missing layer.
    assert abs(n - PAPER_COUNTS[name]) / PAPER_COUNTS[name] < 1e-3, n


def test_exact_count_small_ddgan_cifar10():
    # Independent closed form for the small/4 network (ngf=64, t_emb=256, 6 input channels).
    def block(cin, cout):  # conv1 + conv2 (with bias) + time dense + 1x1 skip (no bias)
        return (9 * cin * cout + cout) + (9 * cout * cout + cout) + (256 * cout + cout) + cin * cout
    expected = (2 * (256 * 256 + 256)                     # time MLP
                + 6 * 128 + 128                           # start conv
                + block(128, 128) + block(128, 256) + block(256, 512) + block(512, 512)
                + 9 * 513 * 512 + 512                     # final conv (+1 stddev channel)
                + 512 + 1)                                # end linear
    assert _count(DISCRIMINATOR_PRESETS["ddgan-cifar10"]) == expected == 12_741_633


def _naive_fir_down(x: np.ndarray, k1: tuple[int, ...]) -> np.ndarray:
    """upfirdn2d(down=2) by loops: pad ((n-1)//2, (n-2)//2), full 2-D convolution, keep every second sample."""
    k = np.outer(k1, k1).astype(np.float64)
    k /= k.sum()
    n = len(k1)
    p0, p1 = (n - 1) // 2, (n - 2) // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p0, p1), (p0, p1)))
    b, c, h, w = xp.shape
    ho, wo = (h - n) // 2 + 1, (w - n) // 2 + 1
    out = np.zeros((b, c, ho, wo))
    kf = k[::-1, ::-1]
    for i in range(ho):
        for j in range(wo):
            out[:, :, i, j] = (xp[:, :, 2 * i:2 * i + n, 2 * j:2 * j + n] * kf).sum(axis=(2, 3))
    return out


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 1)])
def test_fir_downsample_matches_naive(kernel):
    """The downsampler the discriminator uses, against upfirdn2d semantics written out by loops."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    y = FirDownsample(3, kernel)(x)
    assert y.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(y.numpy(), _naive_fir_down(x.numpy().astype(np.float64), kernel), atol=1e-6)


def test_fir_downsample_is_a_fixed_buffer():
    down = FirDownsample(2)
    assert list(down.parameters()) == []
    assert [name for name, _ in down.named_buffers()] == ["filter"]
    d = Discriminator(DiscriminatorConfig(in_channels=1, image_size=8, num_layers=3, ngf=4, t_emb_dim=16))
    n_fir = sum(isinstance(m, FirDownsample) for m in d.modules())
    assert n_fir == 4                        # two downsampling blocks x (main path, skip path)
    assert not any("filter" in k for k in d.state_dict())   # not persistent: checkpoints hold weights only
    # Interior of a constant image stays constant (normalised kernel).
    y = down(torch.full((1, 2, 8, 8), 3.0))
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 3.0))


def test_minibatch_stddev_groups():
    torch.manual_seed(0)
    h = torch.randn(8, 5, 3, 3)
    out = minibatch_stddev(h, group_size=4)
    assert out.shape == (8, 6, 3, 3)
    assert torch.equal(out[:, :5], h)
    # Group of sample i: {i % 2 + 2 m, m = 0..3} (strided, B/g = 2 sets).
    for i in range(8):
        members = h[i % 2::2]
        ref = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
        assert torch.allclose(out[i, 5], ref.expand(3, 3), atol=1e-6)
    # B = 6: group 3 (largest divisor <= 4); B = 5: group 1, so the feature is sqrt(1e-8) everywhere.
    out6 = minibatch_stddev(torch.randn(6, 4, 2, 2))
    assert out6.shape == (6, 5, 2, 2)
    out5 = minibatch_stddev(torch.randn(5, 4, 2, 2))
    assert torch.allclose(out5[:, 4], torch.full((5, 2, 2), 1e-4))


def test_minibatch_stddev_of_several_minibatches_takes_each_alone():
    """``batches=2`` (D's real and fake passes in one call): each half grouped as if it were the whole batch."""
    torch.manual_seed(0)
    for b in (1, 3, 4, 8):
        a, c = torch.randn(b, 6, 3, 3), torch.randn(b, 6, 3, 3)
        both = minibatch_stddev(torch.cat([a, c]), group_size=4, num_features=2, batches=2)
        assert torch.equal(both, torch.cat([minibatch_stddev(a, 4, 2), minibatch_stddev(c, 4, 2)]))
    with pytest.raises(ValueError, match="do not split into 2 minibatches"):
        minibatch_stddev(torch.randn(5, 4, 2, 2), batches=2)


TINY = dict(ngf=4, t_emb_dim=16)


def test_two_minibatches_in_one_call_equal_two_calls():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(kind="small", num_layers=3, in_channels=3, image_size=16, **TINY))
    with torch.no_grad():
        for p in d.parameters():
            p.normal_(0.0, 0.2)
    x_real, x_fake, x_tp1 = torch.randn(3, 4, 3, 16, 16).unbind(0)
    t = torch.tensor([0, 2, 3, 1])
    one = d(torch.cat([x_real, x_fake]), torch.cat([t, t]), torch.cat([x_tp1, x_tp1]), batches=2)
    two = torch.cat([d(x_real, t, x_tp1), d(x_fake, t, x_tp1)])
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    merged = d(torch.cat([x_real, x_fake]), torch.cat([t, t]), torch.cat([x_tp1, x_tp1]))  # one group of 8
    assert (merged - two).abs().max() > 1e-4  # the per-half statistic is what makes them equal


@pytest.mark.parametrize("kind,num_layers,channels,size", [("small", 3, 12, 16), ("small", 4, 3, 16),
                                                           ("large", 3, 1, 16), ("large", 5, 12, 32)])
@pytest.mark.parametrize("batch", [1, 3, 4, 6])
def test_forward_shape_finite(kind, num_layers, channels, size, batch):
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(in_channels=channels, image_size=size, kind=kind, num_layers=num_layers, **TINY)
    d = Discriminator(cfg)
    x_t, x_tp1 = torch.randn(2, batch, channels, size, size)
    t = torch.randint(0, 4, (batch,))
    out = d(x_t, t, x_tp1)
    assert out.shape == (batch,)
    assert torch.isfinite(out).all()


def test_gradient_wrt_x_t_for_r1():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(in_channels=3, image_size=16, num_layers=3, **TINY))
    # Move weights off the near-zero initial scale so the gradient is not vanishingly small.
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x_t = torch.randn(4, 3, 16, 16, requires_grad=True)
    x_tp1 = torch.randn(4, 3, 16, 16)
    out = d(x_t, torch.tensor([0, 1, 2, 3]), x_tp1)
    (grad,) = torch.autograd.grad(out.sum(), x_t, create_graph=True)
    assert grad.shape == x_t.shape and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0
    # The R1 penalty is differentiable w.r.t. the weights (double backward).
    grad.pow(2).sum().backward()
    assert d.start_conv.weight.grad is not None and d.start_conv.weight.grad.abs().sum() > 0


def test_time_conditioning_changes_output():
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(in_channels=1, image_size=8, num_layers=3, **TINY))
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = d(x, torch.tensor([0, 3]), x)
    assert not torch.allclose(out[0], out[1])


def test_small_first_block_keeps_resolution_large_downsamples():
    small = DiscriminatorConfig(kind="small", num_layers=4)
    large = DiscriminatorConfig(kind="large", num_layers=6, image_size=256)
    assert small.blocks() == [(2, False), (4, True), (8, True), (8, True)]
    assert large.blocks() == [(4, True), (8, True)] + [(8, True)] * 4
    with pytest.raises(ValueError):
        DiscriminatorConfig(kind="large", num_layers=6, image_size=32)  # 32 / 2^6 is not an integer
    with pytest.raises(ValueError):
        DiscriminatorConfig(kind="medium")


def test_initial_logits_near_zero_small():
    # kind="small" starts its final conv at scale 0 (as the public code does): logits start at ~0.
    torch.manual_seed(0)
    d = Discriminator(DiscriminatorConfig(in_channels=3, image_size=16, num_layers=3, **TINY))
    out = d(torch.randn(4, 3, 16, 16), torch.zeros(4, dtype=torch.long), torch.randn(4, 3, 16, 16))
    assert out.abs().max() < 1e-3
    assert math.isfinite(out.sum().item())
