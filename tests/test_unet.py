"""UNet denoiser: parameter counts of WDDM's configurations, shapes, gradients, attention placement, FLOPs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.evaluate import count_flops
from models.ddpm import DDPMConfig, GaussianDiffusion
from models.layers import timestep_embedding
from models.unet import UNET_CONFIGS, Attention, ResnetBlock, UNet, UNetConfig


pytestmark = pytest.mark.usefixtures("one_thread")


# Exact counts of diffusers' UNet2DModel (0.42.1) built with WDDM's settings (same layer layout), and the
# published rounded numbers (PAPERS.md section 3).
EXPECTED_PARAMS = {
    "wddm-cifar10-l1": (26_190_860, 26.2e6),
    "wddm-cifar10-l2": (6_276_400, 6.3e6),
    "wddm-celebahq256-l1": (39_729_164, 39.7e6),
    "wddm-celebahq256-l2": (17_269_808, 17.3e6),
    "ddpm-cifar10-pixel": (26_170_115, None),
}
# FLOPs (2 x MACs) of one forward at batch 1, attention included; diffusers' UNet2DModel counts the same.
EXPECTED_GFLOPS = {"wddm-cifar10-l1": 3.372220416, "wddm-cifar10-l2": 0.200744960}


def tiny(**kw) -> UNetConfig:
    base = dict(in_channels=5, out_channels=3, image_size=8, block_out_channels=(32, 64),
                attention_levels=(True, False), norm_groups=8, dropout=0.1)
    return UNetConfig(**{**base, **kw})


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_counts(name):
    with torch.device("meta"):
        net = UNet(UNET_CONFIGS[name])
    exact, published = EXPECTED_PARAMS[name]
    assert n_params(net) == exact
    if published is not None:
        assert abs(n_params(net) - published) / published < 0.01


def test_shapes_and_timestep_forms():
    torch.manual_seed(0)
    net = UNet(tiny()).eval()
    x = torch.randn(2, 5, 8, 8)
    out = net(x, torch.tensor([3, 900]))
    assert out.shape == (2, 3, 8, 8)
    assert torch.allclose(net(x, 7), net(x, torch.tensor([7, 7])), atol=1e-6)
    assert torch.allclose(net(x, torch.tensor(7)), net(x, torch.tensor([7, 7])), atol=1e-6)
    assert (net(x, torch.tensor([0, 0])) - net(x, torch.tensor([500, 500]))).abs().max() > 1e-4
    net3 = UNet(tiny(in_channels=12, out_channels=None, image_size=16, block_out_channels=(16, 32, 32),
                     attention_levels=(False, True, True), layers_per_block=1))
    assert net3.cfg.out_channels == 12
    assert net3(torch.randn(3, 12, 16, 16), torch.tensor([1, 2, 3])).shape == (3, 12, 16, 16)


def test_gradients_reach_every_parameter_and_dropout_modes():
    torch.manual_seed(1)
    net = UNet(tiny(out_channels=5))
    diffusion = GaussianDiffusion(DDPMConfig(num_timesteps=100))
    x0 = torch.rand(4, 5, 8, 8) * 2 - 1
    loss, _ = diffusion.loss(net, x0)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    x, t = torch.randn(2, 5, 8, 8), torch.tensor([10, 20])
    net.train()
    assert not torch.equal(net(x, t), net(x, t))        # dropout 0.1 is active in training
    net.eval()
    assert torch.equal(net(x, t), net(x, t))


def _attention_layout(net: UNet) -> tuple[list[int], int, list[int]]:
    count = lambda m: 0 if m.attentions is None else len(m.attentions)  # noqa: E731
    return ([count(b) for b in net.down_blocks], count(net.mid_block), [count(b) for b in net.up_blocks])


@pytest.mark.parametrize("flags,mid", [((True, False), True), ((False, True), False), ((True, True), True),
                                       ((False, False), False)])
def test_attention_exactly_where_configured(flags, mid):
    net = UNet(tiny(attention_levels=flags, mid_attention=mid))
    down, mid_n, up = _attention_layout(net)
    assert down == [2 if a else 0 for a in flags]                 # layers_per_block per down level
    assert up == [3 if a else 0 for a in flags[::-1]]             # layers_per_block + 1, mirrored
    assert mid_n == (1 if mid else 0)
    # Every built attention block runs in the forward pass.
    calls = []
    for m in net.modules():
        if isinstance(m, Attention):
            m.register_forward_hook(lambda mod, i, o: calls.append(mod))
    net(torch.randn(1, 5, 8, 8), torch.tensor([5]))
    assert len(calls) == sum(down) + mid_n + sum(up) == sum(isinstance(m, Attention) for m in net.modules())
    with pytest.raises(ValueError):
        tiny(attention_levels=(True,))
    with pytest.raises(ValueError):
        tiny(attention_levels=(True, False, True))
    # WDDM CIFAR level 1: attention at the two finer levels, 2 + 3 blocks each, plus the middle.
    assert _attention_layout(UNet(tiny(block_out_channels=(16, 32, 32), attention_levels=(True, True, False),
                                       image_size=16))) == ([2, 2, 0], 1, [0, 3, 3])


def test_diffusers_parameter_names():
    with torch.device("meta"):
        keys = set(UNet(UNET_CONFIGS["wddm-cifar10-l1"]).state_dict())
    for key in ("conv_in.weight", "time_embedding.linear_1.weight", "time_embedding.linear_2.bias",
                "down_blocks.0.attentions.1.to_out.0.weight", "down_blocks.1.resnets.0.conv_shortcut.weight",
                "down_blocks.1.downsamplers.0.conv.weight", "mid_block.attentions.0.group_norm.weight",
                "mid_block.resnets.1.time_emb_proj.weight", "up_blocks.0.upsamplers.0.conv.weight",
                "up_blocks.2.resnets.2.conv_shortcut.weight", "up_blocks.1.attentions.2.to_k.bias",
                "conv_norm_out.weight", "conv_out.bias"):
        assert key in keys, key
    assert not any(k.startswith("down_blocks.2.attentions") or k.startswith("up_blocks.0.attentions") for k in keys)
    assert "down_blocks.2.downsamplers.0.conv.weight" not in keys


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 128, flip_sin_to_cos=True, downscale_freq_shift=0.0).numpy()
    w = 10000.0 ** (-np.arange(64) / 64)
    want = np.concatenate([np.cos(t.numpy()[:, None] * w), np.sin(t.numpy()[:, None] * w)], axis=1)
    np.testing.assert_allclose(emb, want, atol=2e-4)


def _flops_two_ways(net: nn.Module, *inputs) -> tuple[int, int]:
    """``count_flops`` and, from the same forward pass, an independent count: 2 x MACs of every conv and
    linear from their shapes, plus 4 N^2 C per attention block (Q K^T and A V)."""
    total, handles = [0], []

    def conv(m, i, o):
        total[0] += 2 * o.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def lin(m, i, o):
        total[0] += 2 * o.numel() * m.in_features

    def attn(m, i, o):
        b, c, h, w = i[0].shape
        total[0] += 4 * b * (h * w) ** 2 * c

    for m in net.modules():
        hook = {nn.Conv2d: conv, nn.Linear: lin, Attention: attn}.get(type(m))
        if hook is not None:
            handles.append(m.register_forward_hook(hook))
    try:
        counted = count_flops(net, *inputs)
    finally:
        for h in handles:
            h.remove()
    # The ResNet blocks' time projections run as one matmul (net.time_bank): no module call, same shapes.
    total[0] += sum(2 * inputs[0].shape[0] * m.out_features * m.in_features for m in net.time_bank.layers)
    return counted, total[0]


def test_flops_counted_with_attention():
    torch.manual_seed(2)
    net = UNet(tiny()).eval()
    x, t = torch.randn(1, 5, 8, 8), torch.tensor([3])
    counted, by_shapes = _flops_two_ways(net, x, t)
    assert counted == by_shapes > 0
    for name, gflops in EXPECTED_GFLOPS.items():
        cfg = UNET_CONFIGS[name]
        net = UNet(cfg).eval()
        x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
        flops, by_shapes = _flops_two_ways(net, x, torch.tensor([500]))
        print(f"{name}: {n_params(net) / 1e6:.2f}M params, {flops / 1e9:.3f} GFLOPs per forward (batch 1)")
        assert flops == by_shapes
        assert math.isclose(flops / 1e9, gflops, rel_tol=1e-9)


def _unet() -> nn.Module:
    return UNet(UNetConfig(in_channels=3, image_size=16, block_out_channels=(32, 64, 64),
                           attention_levels=(True, True, False), dropout=0.0))


def _ukan() -> nn.Module:
    from models.ukan import UKAN, UKANConfig
    return UKAN(UKANConfig(in_channels=3, out_channels=3, image_size=16, ch=16, ch_mult=(1, 2), attn=(1,)))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("make", [_unet, _ukan], ids=["unet", "ukan"])
def test_banked_time_projections_equal_per_block_projections(make, bf16):
    """Every block's time projection of SiLU(temb) as one matmul (``time_bank`` of the UNet, and of the U-KAN:
    residual, KAN and decoder blocks alike) computes what each block's own SiLU and linear layer did, bit for bit:
    output and every gradient (each block's SiLU backward applied to its own part, summed in autograd's order),
    fp32 and under bf16 autocast, in fewer ops; the parameter names are unchanged."""
    import copy

    from bench.perf.ops import OpCounter

    torch.manual_seed(0)
    net = make()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    ref = copy.deepcopy(net)
    ref.time_bank = lambda temb: temb  # every block projects the embedding itself
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert len(net.time_bank.layers) == sum(isinstance(m, ResnetBlock) or hasattr(m, "temb_proj")
                                            for m in net.modules()) > 5
    results = []
    for m in (net, ref):
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_()
        torch.manual_seed(2)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), OpCounter() as counter:
            out = m(x, torch.tensor([0, 5, 100, 999]))
            grads = torch.autograd.grad(out.float().square().sum(), [x, *m.parameters()])
        results.append((out, grads, counter.ops))
    (out, grads, ops), (ref_out, ref_grads, ref_ops) = results
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
    assert ops < ref_ops - 20
