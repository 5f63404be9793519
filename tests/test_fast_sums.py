"""train.fast_sums: the GAN step in fewer ops, its sums rounded in another order (README, "Fewer ops per step").

Outside R1 steps the discriminator sees the real and the fake pairs as one batch, its minibatch statistic taken per
half, and every projection bank sums its gradients in one matmul and one sum. The losses and gradients of a step
equal the default's within fp32 rounding, R1 steps are unchanged to the bit, and the option is part of the training
hash only when on (runs logged before it existed keep their hash)."""
import pytest
import torch

from bench import registry
from bench.job import setup_training
from bench.tracking import NullTracker
from conftest import micro
from models.ddgan import DDGANLoss, DDGANProcess, DDGANScheduleConfig
from models.discriminator import Discriminator, DiscriminatorConfig
from models.ncsnpp import NCSNppConfig, NCSNppGenerator

pytestmark = pytest.mark.usefixtures("one_thread")


def _networks():
    torch.manual_seed(0)
    G = NCSNppGenerator(NCSNppConfig(2, 2, 8, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), nz=4,
                                     z_emb_dim=8, n_mlp=1))
    D = Discriminator(DiscriminatorConfig(in_channels=2, image_size=8, ngf=4, num_layers=2, t_emb_dim=8))
    with torch.no_grad():
        for p in [*G.parameters(), *D.parameters()]:
            p.normal_(0.0, 0.2)
    return G, D


class _Calls(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x_t, t, x_tp1, **kw):
        self.batches.append(x_t.shape[0])
        return self.net(x_t, t, x_tp1, **kw)


@pytest.mark.parametrize("r1", [False, True])
def test_one_discriminator_pass_gives_the_two_pass_losses_and_gradients(r1):
    G, D = _networks()
    process = DDGANProcess(DDGANScheduleConfig(num_timesteps=4))
    x0 = torch.randn(4, 2, 8, 8)
    results, calls = [], []
    for one in (False, True):
        loss = DDGANLoss(process, nz=4, r1_gamma=0.05, lambda_rec=1.0, one_d_pass=one)
        counted = _Calls(D)
        torch.manual_seed(1)
        d = loss.discriminator(counted, G, x0, r1=r1)
        grads = torch.autograd.grad(d["loss"], list(D.parameters()))
        results.append(([d[k] for k in sorted(d)], grads))
        calls.append(counted.batches)
    assert calls == [[4, 4], [4, 4] if r1 else [8]]  # R1 steps keep their fp32 real pass apart
    for a, b in zip(results[0][0] + list(results[0][1]), results[1][0] + list(results[1][1])):
        if r1:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def _train(tmp_path, **extra):
    cfg = registry.resolve(micro("wavediff", **{"train.max_steps": 4, "train.lazy_reg": 2, "train.log_every": 1,
                                                **extra}))
    system, stream, device = setup_training(cfg)
    tracker = NullTracker()
    result = registry.family(cfg).trainer(cfg, system, stream, tracker, tmp_path, device, progress=False)
    first = min(step for _, _, step in tracker.metrics)
    return cfg, system, result, {k: v for k, v, step in tracker.metrics if step == first and k.startswith("loss")}


def test_the_trainer_sums_at_once_only_when_asked(tmp_path):
    """Plain and R1 steps (lazy_reg 2) train; the first step (the same weights and batch) logs the default's losses
    within rounding; the banks are set as asked."""
    cfg, system, result, fast = _train(tmp_path / "fast", **{"train.fast_sums": True})
    assert cfg.train.fast_sums and result.step == 4
    assert not any(b.layerwise_grads for b in (system.G.style_bank, system.G.time_bank, system.D.time_bank))
    _, default, _, base = _train(tmp_path / "default")
    assert all(b.layerwise_grads for b in (default.G.style_bank, default.G.time_bank, default.D.time_bank))
    assert {"loss_d", "loss_d_real", "loss_d_fake", "loss_g"} <= set(base) and set(fast) == set(base)
    for k, v in base.items():
        assert fast[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    for p in [*system.G.parameters(), *system.D.parameters()]:
        assert torch.isfinite(p).all()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_it_composes_with_bf16_and_the_step_graphs(tmp_path, precision):
    """With bf16 autocast (weights cast once) and with train.cuda_graphs (emulated off CUDA: the same static
    buffers and calls): the same weights, bit for bit, as fast_sums alone."""
    runs = [_train(tmp_path / str(graphs), **{"train.fast_sums": True, "train.precision": precision,
                                              "train.cuda_graphs": graphs})[1] for graphs in (False, True)]
    for name in ("G", "D", "G_ema"):
        a, b = (r.modules()[name].state_dict() for r in runs)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_the_option_hashes_only_when_on():
    off = registry.resolve(micro("wavediff"))
    on = registry.resolve(micro("wavediff", **{"train.fast_sums": True}))
    assert off.train.fast_sums is False and on.train.fast_sums is True
    assert registry.train_hash(off) != registry.train_hash(on)
    default = registry.resolve({"variant": "wavediff", "dataset": "digits", "scale": "tiny"})
    assert registry.train_hash(default) == "c50331a7658f7c17"  # as logged before the option existed
    for variant in ("ddpm", "wddm-unet-l1", "dvdp"):  # a GAN option: the other families do not take it
        with pytest.raises(Exception, match="fast_sums"):
            registry.resolve(micro(variant, **{"train.fast_sums": True}))
