import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.evaluate import NFECounter, TimingConfig, count_flops, count_params, resolve_device, time_sampler


def test_flops_conv_and_linear_are_two_macs():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(1, 3, 16, 16)
    assert count_flops(conv, x) == 2 * 8 * 16 * 16 * 3 * 3 * 3
    lin = nn.Linear(10, 20)
    assert count_flops(lin, torch.randn(4, 10)) == 2 * 4 * 10 * 20


def test_flops_count_sdpa_like_explicit_matmuls():
    q = torch.randn(1, 2, 64, 16)

    def explicit(q):
        w = torch.softmax(q @ q.transpose(-1, -2) / 4, -1)
        return w @ q

    assert count_flops(F.scaled_dot_product_attention, q, q, q) == count_flops(explicit, q) == 2 * 2 * 2 * 64 * 64 * 16


def test_params_and_nfe_counter():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert count_params(net) == 4 * 4 + 4 + 4 * 2 + 2
    net[0].weight.requires_grad_(False)
    assert count_params(net, trainable_only=True) == 4 + 4 * 2 + 2
    with NFECounter(net) as nfe:
        for _ in range(7):
            net(torch.randn(3, 4))
    assert nfe.calls == 7
    net(torch.randn(3, 4))  # hook removed after the block
    assert nfe.calls == 7


def test_time_sampler_protocol_fields():
    calls = []
    res = time_sampler(lambda x: calls.append(x.shape) or x * 2, torch.zeros(5, 1), TimingConfig(batch_size=5,
                       warmup=2, repeats=4), resolve_device("cpu"))
    assert len(calls) == 6
    assert res["time_batch_size"] == 5 and res["time_repeats"] == 4 and res["device"] == "cpu"
    assert res["time_min_s"] <= res["time_median_s"] <= res["time_max_s"] and res["torch_threads"] >= 1
