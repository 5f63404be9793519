"""bench.train.TrainAutocast: bf16 training steps whose weights are cast once per optimiser step compute bitwise what
autocast computes (the GAN losses: one region per network call; the diffusion loss: one region around it), losses
and every gradient, with a handful of casts instead of one per weight."""
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


def _step(variant: str, cast_once: bool | None, r1: bool, channels_last: bool = False):
    """One D step and one G step; ``cast_once`` None: the per-call-region reference."""
    cfg = registry.resolve({"variant": variant, **MICRO})
    torch.manual_seed(0)
    system = registry.build(cfg)
    with torch.no_grad():
        for p in [*system.G.parameters(), *system.D.parameters()]:
            p.normal_(0.0, 0.1)
    if channels_last:  # these weights are left to autocast's own casts
        system.G.to(memory_format=torch.channels_last)
        system.D.to(memory_format=torch.channels_last)
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


@pytest.mark.parametrize("variant,r1,channels_last", [("wavediff", False, False), ("ddgan", True, False),
                                                      ("wavediff-wg", False, False), ("wavediff", False, True)])
@pytest.mark.parametrize("cast_once", [True, False])
def test_training_autocast_equals_one_autocast_region_per_call_bitwise(variant, r1, channels_last, cast_once):
    losses, grads, casts = _step(variant, cast_once, r1, channels_last)
    ref_losses, ref_grads, ref_casts = _step(variant, None, r1, channels_last)
    for k in ref_losses:
        assert torch.equal(losses[k], ref_losses[k]), k
    for k in ref_grads:
        assert torch.equal(grads[k], ref_grads[k]), k
    if cast_once and not channels_last:
        assert casts * 4 < ref_casts  # a few flat casts and activation casts, not one per weight per call
    elif cast_once:  # the channels-last convolution weights are cast by autocast, per call
        assert casts < ref_casts


def _diffusion_step(variant: str, cast_once: bool | None, unbanked: bool = False):
    """One diffusion loss and its backward under bf16: ``cast_once`` None: one plain autocast region (the
    reference), else :class:`TrainAutocast` with one region around the loss (the diffusion trainer's).
    ``unbanked``: the UNet's ResNet blocks project the time embedding each with its own linear layer, as autocast
    sees them one by one (the reference for the one-matmul ``time_bank``)."""
    base = registry.resolve({"variant": variant, "scale": "tiny"})
    cfg = registry.resolve({"variant": variant, "scale": "tiny", **registry.family(base).micro(base)})
    torch.manual_seed(0)
    system = registry.build(cfg)
    net = system.denoiser
    if unbanked and hasattr(net, "time_bank"):
        net.time_bank = lambda temb: temb
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    device = torch.device("cpu")
    amp = TrainAutocast(device, "bf16", cast_once=cast_once, per_call=False) if cast_once is not None else None
    d = cfg.data
    images = torch.rand(8, 1 if d.name == "digits" else 3, d.resolution, d.resolution,
                        generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)
    with OpCounter() as counter:
        with amp(net) if amp is not None else torch.autocast("cpu", dtype=torch.bfloat16):
            losses = {k: v.float() for k, v in system.loss(images, net=net).items()}
        (losses["loss"] + losses["loss_image"]).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    return losses, grads, counter.by_op["aten._to_copy.default"]


@pytest.mark.parametrize("variant", ["ddpm", "wddm-unet-l1", "wddm-ukan-l1", "dvdp"])
@pytest.mark.parametrize("cast_once", [True, False])
def test_diffusion_training_autocast_equals_one_autocast_region_bitwise(variant, cast_once):
    """The diffusion trainer's bf16 context computes what one autocast region around the loss computes with every
    linear layer on its own, bit for bit (DVDP's loss calls the network once per stage: their gradients summed as
    autocast's shared casts sum them), with the weights cast once instead of each weight and each weight's
    gradient on its own. Without the cast-once copies (``cast_once=False``: compiled networks) the UNet's banked
    time projections are cast as one concatenation per call, so DVDP's two calls sum their gradients in fp32,
    not bf16: those differ by bf16 rounding, nothing else does."""
    losses, grads, casts = _diffusion_step(variant, cast_once)
    ref_losses, ref_grads, ref_casts = _diffusion_step(variant, None, unbanked=True)
    assert set(losses) == set(ref_losses) and set(grads) == set(ref_grads)
    for k in ref_losses:
        assert torch.equal(losses[k], ref_losses[k]), k
    for k in ref_grads:
        assert ref_grads[k] is not None, k
        if not cast_once and variant == "dvdp" and "time_emb_proj" in k:
            torch.testing.assert_close(grads[k], ref_grads[k], rtol=0, atol=1e-2 * ref_grads[k].abs().max().item())
        else:
            assert torch.equal(grads[k], ref_grads[k]), k
    if cast_once:
        assert casts * 4 < ref_casts, (casts, ref_casts)
    else:  # all casting left to autocast: exactly a plain region's casts (of the same, banked, network)
        assert casts == _diffusion_step(variant, None)[2]
