"""NCSN++ generator (DDGAN / WaveDiff): paper-size parameter counts and FLOPs, wavelet switches, FIR layers.

Published figures (../shared/PAPERS.md) were measured on the public model classes with FlopCounterMode
(FLOPs = 2 x multiply-adds, batch 1). Parameter counts match them to 0.01 %. FLOPs match to 1 % for every
configuration without the W-Generator; with it, the public code counts two costs this implementation does not
have, and the published figure is recovered (to 0.2 %) once they are added back:

- WaveDiff's DWT_2D / IDWT_2D layers compute each Haar transform as dense matrix products
  (M_0 @ x @ M_1 with (S/2) x S matrices): 4 C S^3 FLOPs per transform of a C x S x S map. ``haar_dwt`` uses
  reshapes and sums (O(C S^2), not counted). This is 22-25 GFLOPs at CelebA-HQ 512/1024 (13-14 % of the
  published figure), 4 GFLOPs at CelebA-HQ 256.
- The public FIR path (upfirdn2d, pure PyTorch) filters the zero-inserted image at full resolution for
  upsampling and filters at full resolution before subsampling for downsampling; here both are strided
  depthwise convolutions, which do 4x fewer multiply-adds (0.2-0.6 % of the total).
"""
from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models.layers as layers
from bench.evaluate import count_flops
from models.layers import (AttnBlock, FirConvDownsample, FirConvUpsample, FirDownsample, FirUpsample,
                           FrequencyBottleneck, MidBlock, ResBlock, WaveletDownsample, WaveletResBlock)
from models.ncsnpp import NCSNppConfig, NCSNppGenerator

W_GEN = dict(wavelet_residual=True, wavelet_updown=True, wavelet_bottleneck=True)
SWITCHES = ("wavelet_residual", "wavelet_updown", "wavelet_bottleneck")

# name -> (config, published params in M, published GFLOPs or None)
PAPER = {
    "ddgan_cifar10": (NCSNppConfig(3, 3, 32, nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), n_mlp=4),
                      48.43, 14.1),
    "ddgan_celebahq256": (NCSNppConfig(3, 3, 256, nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn_resolutions=(16,),
                                       n_mlp=3), 39.73, 141.7),
    # WaveDiff's CIFAR-10 script passes attn 32 to a 16 x 16 network: no attention except the middle.
    "wavediff_cifar10": (NCSNppConfig(12, 12, 16, nf=128, ch_mult=(1, 2, 2), attn_resolutions=(32,), n_mlp=4),
                         33.37, 3.34),
    "wavediff_cifar10_wgen": (NCSNppConfig(12, 12, 16, nf=128, ch_mult=(1, 2, 2), attn_resolutions=(32,),
                                           n_mlp=4, **W_GEN), 36.95, 3.35),
    "wavediff_stl10_wgen": (NCSNppConfig(12, 12, 32, nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,),
                                         n_mlp=4, **W_GEN), 55.59, 14.4),
    "wavediff_celebahq256_wgen": (NCSNppConfig(12, 12, 128, nf=64, ch_mult=(1, 2, 2, 2, 4),
                                               attn_resolutions=(16,), n_mlp=3, **W_GEN), 31.49, 60.9),
    "wavediff_celebahq256": (NCSNppConfig(12, 12, 128, nf=64, ch_mult=(1, 2, 2, 2, 4), attn_resolutions=(16,),
                                          n_mlp=3), 28.37, None),
    "wavediff_celebahq512_wgen": (NCSNppConfig(12, 12, 256, nf=64, ch_mult=(1, 1, 2, 2, 4, 4),
                                               attn_resolutions=(16,), n_mlp=3, **W_GEN), 44.85, 170.4),
    # 12 x 512 x 512 coefficients, patch size 2 -> a 48 x 256 x 256 network input; no attention (attn 0).
    "wavediff_celebahq1024_wgen": (NCSNppConfig(12, 12, 512, patch_size=2, nf=64, ch_mult=(1, 1, 2, 2, 4, 4),
                                                attn_resolutions=(), n_mlp=3, **W_GEN), 44.19, 180.4),
}
# FLOPs counted with a real CPU forward; the larger ones are counted on the meta device (same count, see
# test_meta_device_flops_equal_cpu_flops).
CPU_FLOPS = ("wavediff_cifar10", "wavediff_cifar10_wgen")


def tiny_config(**kw) -> NCSNppConfig:
    base = dict(in_channels=4, out_channels=4, image_size=16, nf=16, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), nz=8, z_emb_dim=16, n_mlp=2)
    base.update(kw)
    return NCSNppConfig(**base)


def inputs(cfg: NCSNppConfig, batch: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.randint(0, 4, (batch,), generator=g)
    z = torch.randn(batch, cfg.nz, generator=g)
    return x.to(device), t.to(device), z.to(device)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def record_haar_calls(monkeypatch) -> list[tuple[str, tuple[int, ...]]]:
    """Wrap the Haar transforms as seen by models.layers; returns the list of (name, input shape) calls, named
    for the public implementation's transform at the same place (a whole DWT where the suite's computes the LL
    band alone, ``haar_ll``, or folds the division by 2 in, ``wavelet_encode``)."""
    calls = []
    for name, public in (("haar_dwt", "haar_dwt"), ("haar_idwt", "haar_idwt"), ("haar_ll", "haar_dwt"),
                         ("wavelet_encode", "haar_dwt")):
        def wrapper(x, *args, fn=getattr(layers, name), public=public, **kwargs):
            calls.append((public, tuple(x.shape)))
            return fn(x, *args, **kwargs)
        monkeypatch.setattr(layers, name, wrapper)
    return calls


def flops_with_public_extras(cfg: NCSNppConfig, device: str, monkeypatch) -> tuple[int, int]:
    """(FLOPs of this implementation, FLOPs the public implementation counts for the same network)."""
    calls = record_haar_calls(monkeypatch)
    with torch.device(device):
        net = NCSNppGenerator(cfg).eval()
    fir = []
    for m in net.modules():
        if isinstance(m, (FirUpsample, FirDownsample)):
            m.register_forward_hook(lambda m, i, o: fir.append((type(m), i[0].shape)))
    ours = count_flops(net, *inputs(cfg, 1, device))
    extra = 0
    for name, (_, c, s, _) in calls:  # dense-matrix Haar: 4 C S^3 FLOPs, S = full-resolution side
        extra += 4 * c * s**3 if name == "haar_dwt" else 4 * (c // 4) * (2 * s) ** 3
    for kind, (_, c, s, _) in fir:  # upfirdn2d: 4x4 taps on the 2S x 2S zero-inserted map / (S-1)^2 outputs
        extra += 2 * 16 * c * (3 * s * s if kind is FirUpsample else (s - 1) ** 2 - (s // 2) ** 2)
    return ours, ours + extra


# ---------------------------------------------------------------------------------------------------------
# Paper-size configurations
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_parameter_counts(name):
    cfg, published, _ = PAPER[name]
    with torch.device("meta"):  # no memory, no init cost
        net = NCSNppGenerator(cfg)
    assert n_params(net) / 1e6 == pytest.approx(published, rel=1e-3)  # required: 2 %; measured: < 0.02 %


@pytest.mark.parametrize("name", [n for n in PAPER if PAPER[n][2] is not None])
def test_paper_flops(name, monkeypatch):
    cfg, _, published = PAPER[name]
    torch.manual_seed(0)
    ours, public = flops_with_public_extras(cfg, "cpu" if name in CPU_FLOPS else "meta", monkeypatch)
    # The public implementation's count is reproduced exactly up to rounding of the published figure.
    assert public / 1e9 == pytest.approx(published, rel=0.01)
    # This implementation's own count: within 5 % wherever no dense-matrix DWT inflates the public figure.
    tol = {"wavediff_celebahq256_wgen": 0.10, "wavediff_celebahq512_wgen": 0.15,
           "wavediff_celebahq1024_wgen": 0.15}.get(name, 0.05)
    assert ours / 1e9 == pytest.approx(published, rel=tol)
    if cfg.wavelet_updown or cfg.wavelet_bottleneck or cfg.wavelet_residual:
        assert ours <= public


@pytest.mark.parametrize("wgen", [False, True])
def test_meta_device_flops_equal_cpu_flops(wgen):
    torch.manual_seed(0)
    cfg = tiny_config(ch_mult=(1, 2, 2), **(W_GEN if wgen else {}))  # FIR or wavelet resampling, attention
    cpu = count_flops(NCSNppGenerator(cfg).eval(), *inputs(cfg))
    with torch.device("meta"):
        meta = count_flops(NCSNppGenerator(cfg), *inputs(cfg, device="meta"))
    assert cpu == meta > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddgan_celebahq256", "wavediff_celebahq512_wgen", "wavediff_celebahq1024_wgen"])
def test_large_configs_run_on_cpu(name):
    cfg = PAPER[name][0]
    torch.manual_seed(0)
    net = NCSNppGenerator(cfg).eval()
    x, t, z = inputs(cfg)
    cpu = count_flops(net, x, t, z)
    with torch.device("meta"):
        meta = count_flops(NCSNppGenerator(cfg), *inputs(cfg, device="meta"))
    assert cpu == meta
    with torch.no_grad():
        y = net(x, t, z)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_attention_placement_follows_network_resolution():
    def n_attn(cfg):
        with torch.device("meta"):
            return sum(isinstance(m, AttnBlock) for m in NCSNppGenerator(cfg).modules())

    assert n_attn(PAPER["ddgan_cifar10"][0]) == 2 + 1 + 1  # two down blocks + one up block at 16, middle
    assert n_attn(PAPER["wavediff_cifar10"][0]) == 1  # attn 32 on a 16 x 16 network: middle only
    assert n_attn(PAPER["wavediff_celebahq1024_wgen"][0]) == 1
    # Resolutions count after patching: 32 x 32 input, patch 2 -> levels 16, 8.
    assert n_attn(tiny_config(image_size=32, patch_size=2, attn_resolutions=(8,))) == 1 + 1 + 1
    assert n_attn(tiny_config(image_size=32, patch_size=2, attn_resolutions=(32,))) == 1


# ---------------------------------------------------------------------------------------------------------
# Tiny configurations: every switch combination
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", list(itertools.product([False, True], repeat=3)))
def test_tiny_forward_every_switch_combination(flags):
    torch.manual_seed(0)
    cfg = tiny_config(**dict(zip(SWITCHES, flags)))
    net = NCSNppGenerator(cfg)
    with torch.no_grad():
        net.conv_out.weight.normal_(0.0, 3.0)  # the output conv starts near zero; make tanh saturate
    x, t, z = inputs(cfg, batch=3)
    y = net(x, t, z)
    assert y.shape == (3, cfg.out_channels, 16, 16)
    assert torch.isfinite(y).all()
    assert y.abs().max() <= 1.0 and y.abs().max() > 0.99


@pytest.mark.parametrize("wgen", [False, True])
def test_patch_size_two(wgen):
    torch.manual_seed(0)
    cfg = tiny_config(image_size=32, patch_size=2, out_channels=3, **(W_GEN if wgen else {}))
    net = NCSNppGenerator(cfg)
    assert net.conv_in.in_channels == 4 * 4 and net.conv_out.out_channels == 3 * 4
    x, t, z = inputs(cfg, batch=2)
    y = net(x, t, z)
    assert y.shape == (2, 3, 32, 32) and torch.isfinite(y).all()


def test_initial_output_is_near_zero_and_depends_on_inputs():
    torch.manual_seed(0)
    cfg = tiny_config(**W_GEN)
    net = NCSNppGenerator(cfg)
    x, t, z = inputs(cfg, batch=2)
    y = net(x, t, z)
    assert y.abs().max() < 1e-3  # output conv initialised with variance scale 1e-10, as in NCSN++
    for p in net.parameters():  # with generic weights, x, t and z all change the output
        nn.init.normal_(p, 0.0, 0.2)
    with torch.no_grad():
        y = net(x, t, z)
        assert not torch.allclose(y, net(x, (t + 1) % 4, z), atol=1e-4)
        assert not torch.allclose(y, net(x, t, torch.randn_like(z)), atol=1e-4)
        assert not torch.allclose(y, net(x + 0.5, t, z), atol=1e-4)
        # GroupNorm is per sample: a sample's output does not depend on the rest of its batch.
        torch.testing.assert_close(net(x[:1], t[:1], z[:1]), y[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wgen", [False, True])
def test_gradients_reach_every_parameter(wgen):
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.1, **(W_GEN if wgen else {}))
    net = NCSNppGenerator(cfg)
    for p in net.parameters():  # near-zero initial layers would make some gradients vanishingly small
        nn.init.normal_(p, 0.0, 0.1)
    x, t, z = inputs(cfg, batch=2)
    net(x, t, z).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def _structure(cfg: NCSNppConfig) -> dict[str, tuple]:
    with torch.device("meta"):
        net = NCSNppGenerator(cfg)
    return {name: (type(m).__name__, tuple((n, tuple(p.shape)) for n, p in m.named_parameters(recurse=False)))
            for name, m in net.named_modules()}


def _differing_components(a: dict, b: dict) -> set[str]:
    """Top components (e.g. 'down.0.pyramid', 'mid') whose submodules or parameters differ."""
    names = {n for n in a.keys() | b.keys() if a.get(n) != b.get(n)}
    out = set()
    for n in names:
        parts = n.split(".")
        out.add(".".join(parts[:3]) if parts[0] in ("down", "up") else parts[0])
    return out


def test_each_switch_changes_only_its_component():
    cfg = tiny_config(ch_mult=(1, 2, 2))
    base = _structure(cfg)
    expected = {
        "wavelet_residual": {"down.0.pyramid", "down.1.pyramid"},
        "wavelet_updown": {"down.0.downsample", "down.1.downsample", "up.0.upsample", "up.1.upsample"},
        "wavelet_bottleneck": {"mid"},
    }
    for switch, components in expected.items():
        assert _differing_components(base, _structure(replace(cfg, **{switch: True}))) == components, switch
    full = _structure(replace(cfg, **W_GEN))
    assert _differing_components(base, full) == set().union(*expected.values())
    # The bottleneck reuses the middle's parameters; only the computation changes.
    with torch.device("meta"):
        plain, wgen = NCSNppGenerator(cfg), NCSNppGenerator(replace(cfg, **W_GEN))
    assert type(plain.mid) is MidBlock and type(wgen.mid) is FrequencyBottleneck
    assert [p.shape for p in plain.mid.parameters()] == [p.shape for p in wgen.mid.parameters()]
    assert isinstance(plain.down[0].pyramid, FirConvDownsample)
    assert isinstance(wgen.down[0].pyramid, WaveletDownsample)
    assert type(plain.down[0].downsample) is ResBlock and type(wgen.down[0].downsample) is WaveletResBlock


def test_each_switch_uses_the_shared_haar_transform(monkeypatch):
    calls = record_haar_calls(monkeypatch)
    cfg = tiny_config(ch_mult=(1, 2, 2))  # 3 levels: 2 pyramid steps, 2 down and 2 up blocks
    expected = {
        (): (0, 0),
        ("wavelet_residual",): (2, 0),                # one DWT per pyramid step
        ("wavelet_updown",): (2 * 2, 2 * 2),          # down: features and shortcut; up: both paths
        ("wavelet_bottleneck",): (2, 2),              # around each middle ResBlock
    }
    for switches, (n_dwt, n_idwt) in expected.items():
        torch.manual_seed(0)
        net = NCSNppGenerator(replace(cfg, **{s: True for s in switches}))
        calls.clear()
        with torch.no_grad():
            net(*inputs(cfg))
        names = [name for name, _ in calls]
        assert (names.count("haar_dwt"), names.count("haar_idwt")) == (n_dwt, n_idwt), switches


def test_frequency_bottleneck_runs_second_block_twice():
    torch.manual_seed(0)
    net = NCSNppGenerator(tiny_config(wavelet_bottleneck=True))
    sizes = {"block1": [], "block2": []}
    for key in sizes:
        getattr(net.mid, key).register_forward_hook(lambda m, i, o, key=key: sizes[key].append(i[0].shape[-1]))
    attn_sizes = []
    net.mid.attn.register_forward_hook(lambda m, i, o: attn_sizes.append(i[0].shape[-1]))
    with torch.no_grad():
        net(*inputs(net.cfg))
    assert sizes == {"block1": [4], "block2": [8, 4]} and attn_sizes == [8]  # lowest level is 8 x 8


def test_config_validation():
    with pytest.raises(ValueError):
        tiny_config(resblock_type="ddpm")
    with pytest.raises(ValueError):
        tiny_config(embedding="fourier")
    with pytest.raises(ValueError):
        tiny_config(fir_kernel=(1, 2, 1))
    # Size constraints are checked when the network is built: a config may get its size later.
    for bad in (dict(image_size=18, patch_size=4), dict(image_size=12, ch_mult=(1, 2, 2, 2)),
                dict(image_size=6, wavelet_bottleneck=True)):  # last: lowest level 3 x 3 has no Haar split
        cfg = tiny_config(**bad)
        with pytest.raises(ValueError):
            NCSNppGenerator(cfg)
    paper_1024 = NCSNppConfig(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), patch_size=2, **W_GEN)  # default size 32
    NCSNppGenerator(replace(paper_1024, in_channels=12, out_channels=12, image_size=512, nf=4))
    cfg = tiny_config(ch_mult=[1, 2], attn_resolutions=[8])  # lists from YAML become tuples
    assert cfg.ch_mult == (1, 2) and cfg.attn_resolutions == (8,)
    net = NCSNppGenerator(tiny_config(progressive_input="none"))
    assert not any(hasattr(level, "pyramid") for level in net.down)
    assert net(*inputs(net.cfg)).shape == (1, 4, 16, 16)


# ---------------------------------------------------------------------------------------------------------
# FIR resampling against the upfirdn2d definition (zero insertion, padding, true convolution, subsampling)
# ---------------------------------------------------------------------------------------------------------


def upfirdn_reference(x, k, up=1, down=1, pad=(0, 0)):
    b, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(b, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    kernel = k.flip(0, 1)[None, None].repeat(c, 1, 1, 1)  # true convolution
    return F.conv2d(x, kernel, groups=c)[:, :, ::down, ::down]


KERNEL = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64


def test_fir_resampling_matches_upfirdn_definition():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(FirUpsample(3)(x), upfirdn_reference(x, KERNEL * 4, up=2, pad=(2, 1)))
    torch.testing.assert_close(FirDownsample(3)(x), upfirdn_reference(x, KERNEL, down=2, pad=(1, 1)))
    # A constant image stays constant away from the (zero-padded) border.
    ones = torch.ones(1, 2, 8, 8)
    torch.testing.assert_close(FirUpsample(2)(ones)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    torch.testing.assert_close(FirDownsample(2)(ones)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))


def test_fir_conv_resampling_is_fused_resample_and_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    down = FirConvDownsample(3, 5)
    nn.init.normal_(down.bias)
    ref = F.conv2d(upfirdn_reference(x, KERNEL, pad=(2, 2)), down.weight, down.bias, stride=2)
    torch.testing.assert_close(down(x), ref)
    assert down(x).shape == (2, 5, 4, 4)
    up = FirConvUpsample(3, 5)
    nn.init.normal_(up.bias)
    # == FIR upsampling then the equivalent 3x3 convolution, padding applied once: the upsampled map is taken
    # one pixel beyond each border (not zero-padded) before the valid convolution.
    w = up.weight.flip(2, 3).transpose(0, 1)
    ref = F.conv2d(upfirdn_reference(x, KERNEL * 4, up=2, pad=(3, 2)), w, up.bias)
    torch.testing.assert_close(up(x), ref)
    assert up(x).shape == (2, 5, 16, 16)


def test_fir_filters_are_buffers_not_parameters():
    block = ResBlock(8, 8, temb_dim=16, zemb_dim=4, resample="up")
    assert "fir.filter" in dict(block.named_buffers())
    assert "fir.filter" not in block.state_dict()  # non-persistent: checkpoints hold learned weights only
    assert all("filter" not in n for n, _ in block.named_parameters())


def test_wavelet_blocks_shapes():
    torch.manual_seed(0)
    temb, zemb = torch.randn(2, 16), torch.randn(2, 4)
    down = WaveletResBlock(8, 8, temb_dim=16, zemb_dim=4, resample="down")
    up = WaveletResBlock(12, 12, temb_dim=16, zemb_dim=4, resample="up", detail_ch=8)
    h, details = down(torch.randn(2, 8, 16, 16), temb, zemb)
    assert h.shape == (2, 8, 8, 8) and details.shape == (2, 24, 8, 8)
    assert up(torch.randn(2, 12, 8, 8), temb, zemb, details).shape == (2, 12, 16, 16)
    assert up.detail_conv.groups == 3 and up.detail_conv.weight.shape == (36, 8, 3, 3)
    assert WaveletDownsample(4, 6)(torch.randn(2, 4, 8, 8)).shape == (2, 6, 4, 4)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    cfg = tiny_config(**W_GEN)
    net = NCSNppGenerator(cfg).eval()
    for p in net.parameters():
        nn.init.normal_(p, 0.0, 0.1)
    x, t, z = inputs(cfg, batch=2)
    with torch.no_grad():
        ref = net(x, t, z)
        out = net.cuda()(x.cuda(), t.cuda(), z.cuda()).cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
