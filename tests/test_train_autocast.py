"""bench.train.TrainAutocast: bf16 training steps whose weights are cast once per optimiser step compute bitwise what
autocast's per-call casts compute (losses and every gradient), with a handful of casts instead of one per weight."""
import pytest
import torch

from bench import registry
from bench.families.gan import MICRO
from bench.perf.ops import OpCounter
from bench.train import TrainAutocast
from models.ddgan import DDGANLoss


class _OwnRegion(torch.nn.Module):
    """The reference: each call of the network in its own autocast region (as the loss opened them before)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net(*args)


def _no_amp(*networks, enabled=True):
    return torch.autocast("cpu", enabled=False) if not enabled else __import__("contextlib").nullcontext()


def _step(variant: str, cast_once: bool | None, r1: bool):
    """One D step and one G step; ``cast_once`` None: the per-call-region reference."""
    cfg = registry.resolve({"variant": variant, **MICRO})
    torch.manual_seed(0)
    system = registry.build(cfg)
    with torch.no_grad():
        for p in [*system.G.parameters(), *system.D.parameters()]:
            p.normal_(0.0, 0.1)
    amp = TrainAutocast(torch.device("cpu"), "bf16", cast_once=cast_once) if cast_once is not None else _no_amp
    D, G = (system.D, system.G) if cast_once is not None else (_OwnRegion(system.D), _OwnRegion(system.G))
    loss = DDGANLoss(system.process, system.nz, r1_gamma=0.02, lambda_rec=1.0)
    g = cfg.model.generator
    x0 = torch.rand(4, g.in_channels, g.image_size, g.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)
    with OpCounter() as counter:
        d = loss.discriminator(D, G, x0, r1=r1, D_r1=system.D, amp=amp)
        d["loss"].backward()
        system.D.requires_grad_(False)
        gl = loss.generator(G, D, x0, amp=amp)
        gl["loss"].backward()
    grads = {f"{k}.{n}": p.grad for k, m in (("G", system.G), ("D", system.D)) for n, p in m.named_parameters()}
    return {**d, **gl}, grads, counter.by_op["aten._to_copy.default"]


@pytest.mark.parametrize("variant,r1", [("wavediff", False), ("ddgan", True), ("wavediff-wg", False)])
@pytest.mark.parametrize("cast_once", [True, False])
def test_training_autocast_equals_one_autocast_region_per_call_bitwise(variant, r1, cast_once):
    losses, grads, casts = _step(variant, cast_once, r1)
    ref_losses, ref_grads, ref_casts = _step(variant, None, r1)
    for k in ref_losses:
        assert torch.equal(losses[k], ref_losses[k]), k
    for k in ref_grads:
        assert torch.equal(grads[k], ref_grads[k]), k
    if cast_once:
        assert casts * 4 < ref_casts  # a few flat casts and activation casts, not one per weight per call
