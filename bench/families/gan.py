"""The GAN family: DDGAN (Xiao et al., ICLR 2022) and WaveDiff (Phung et al., CVPR 2023), PAPERS.md sections 1-2.

An x0-predicting NCSN++ generator G(x_{t+1}, t, z) with adaptive GroupNorm (and WaveDiff's switchable wavelet
components), a time-conditioned discriminator, the DDGAN posterior process and its adversarial loss, trained with
the non-saturating loss, lazy R1, the reconstruction term and an EMA of G (:func:`train_gan`), in pixel space
(DDGAN) or on one-level Haar coefficients / 2 (WaveDiff). Its paper configurations are the tables below;
:func:`configure` turns one row into a variant's model, training and evaluation configs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn as nn

from bench.config import ConfigError, RunConfig
from bench.data import DATASET_PRESETS
from bench.distributed import SINGLE, DistContext
from bench.families.base import Family, System, space_shape, unknown_preset
from bench.step_graphs import StepGraphs, graph_optimizer_options
from bench.train import (EMA, BatchStream, TrainAutocast, TrainResult, batch_format, compiled, lr_lambda,
                         prepare_modules, run_loop, total_steps)
from models.ddgan import DDGANLoss, DDGANProcess, DDGANScheduleConfig
from models.discriminator import Discriminator, DiscriminatorConfig
from models.layers import sum_bank_gradients_at_once
from models.ncsnpp import NCSNppConfig, NCSNppGenerator

__all__ = ["GANModelConfig", "GANTrainConfig", "GANSystem", "train_gan", "configure", "GANFamily", "GAN",
           "WG_SWITCHES", "MICRO"]

# The tests' micro size (GANFamily.micro): every code path, a few thousand parameters.
MICRO = {"model.generator.nf": 16, "model.generator.ch_mult": [1, 2], "model.generator.n_mlp": 1,
         "model.generator.z_emb_dim": 32, "model.generator.nz": 16, "model.discriminator.ngf": 8,
         "model.discriminator.num_layers": 2, "model.discriminator.t_emb_dim": 32}


# ============================================================================================== configs

@dataclass
class GANModelConfig:
    wavelet_levels: int = 0          # 0: pixel space (DDGAN); 1: one-level Haar coefficients / 2 (WaveDiff)
    schedule: DDGANScheduleConfig = field(default_factory=DDGANScheduleConfig)
    generator: NCSNppConfig = field(default_factory=NCSNppConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


@dataclass
class GANTrainConfig:
    batch_size: int = 64              # images per optimisation step (all devices together)
    max_steps: int | None = None      # budgets: training stops at the first one reached
    max_epochs: float | None = None   #   (epochs of the training split)
    max_minutes: float | None = None  #   (training wall-clock, summed over resumptions)
    checkpoint_every: int = 500       # steps between checkpoints (one is always written at the end)
    log_every: int = 10               # steps between logged training losses
    lr_g: float = 1.6e-4              # Adam learning rate of the generator
    lr_d: float = 1.25e-4             # Adam learning rate of the discriminator
    beta1: float = 0.5                # Adam betas (DDGAN: 0.5, 0.9)
    beta2: float = 0.9
    lr_min: float = 1e-5              # cosine schedule floor (over the step or epoch budget; constant if minutes only)
    r1_gamma: float = 0.02            # R1 weight: (gamma / 2) E||grad_x D(x_t)||^2 on real x_t
    lazy_reg: int = 15                # R1 every this many steps (not rescaled, as in DDGAN)
    ema_decay: float = 0.9999         # EMA of G's weights, every step
    lambda_rec: float = 0.0           # weight of the L1 reconstruction term || G(x_{t+1}) - x0 ||_1 (WaveDiff: 1)
    precision: str = "fp32"           # fp32 | bf16 (autocast forward passes; fp32 weights, losses and R1)
    channels_last: bool = False       # networks and batches in channels-last memory format
    compile: bool = False             # torch.compile the networks' training forward passes (not the R1 pass)
    cuda_graphs: bool = False         # the whole step (plain and R1) as CUDA graphs, replayed (bench/step_graphs.py;
    #                                   off CUDA the same buffers and calls without capture); not yet timed on a GPU
    fast_sums: bool = False           # fewer ops per step, rounded in another order: D's real and fake passes as one
    #                                   call, every projection bank's gradients in one matmul (README: a run then
    #                                   differs from the default's as a change of seed does); not yet timed on a GPU


# ============================================================================================== system

class GANSystem(System):
    """DDGAN / WaveDiff: x0-predicting generator G(x_{t+1}, t, z), discriminator D, EMA copy of G."""

    def __init__(self, cfg: GANModelConfig):
        self.cfg = cfg
        self.wavelet_levels = cfg.wavelet_levels
        self.process = DDGANProcess(cfg.schedule)
        self.G = NCSNppGenerator(cfg.generator)
        self.D = Discriminator(cfg.discriminator)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.nz = cfg.generator.nz
        self.sample_fn, self.sample_options = DDGANProcess.sample, {"nz": self.nz}

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.G, "discriminator": self.D}

    @property
    def sampling_network(self) -> nn.Module:
        return self.G_ema

    @property
    def nfe(self) -> int:
        """Network calls per sample as configured (evaluation counts them with a hook instead)."""
        return self.process.num_timesteps

    def modules(self) -> dict[str, nn.Module]:
        """Everything with state (checkpointed)."""
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def state_shape(self, n: int) -> tuple[int, ...]:
        g = self.cfg.generator
        return (n, g.in_channels, g.image_size, g.image_size)

    def network_inputs(self, n: int, device=None) -> tuple:
        """(x_t, t, z): the generator also takes its latent."""
        return (*super().network_inputs(n, device), torch.zeros(n, self.nz, device=device))

    def parts(self) -> dict[str, object]:
        return {"generator": type(self.G), "discriminator": type(self.D), "process": type(self.process),
                "loss": DDGANLoss, "sampler": self.sample_fn}


# ============================================================================================== training

def train_gan(cfg, system, stream: BatchStream, tracker, workdir, device: torch.device,
              should_stop: Callable[[], bool] | None = None, progress: bool = True,
              on_step: Callable[[int, float], None] | None = None, dist: DistContext = SINGLE) -> TrainResult:
    """DDGAN / WaveDiff training (PAPERS.md sections 1-2) on the system's diffusion space. With several ranks,
    the calls whose gradients are applied go through DDP (D in its own step, G in its own step); the frozen or
    no-grad calls use the plain modules, which hold the same weights on every rank."""
    t: GANTrainConfig = cfg.train
    G, D, G_ema = system.G, system.D, system.G_ema
    prepare_modules(system.modules(), t)
    G_par, D_par = dist.wrap(G, device), dist.wrap(D, device)
    G_fwd, D_fwd = compiled(G_par, t), compiled(D_par, t)   # R1 (double backward) goes through D_par itself
    D_frozen = D_fwd if not dist.enabled else compiled(D, t)  # G's step: D without its DDP wrapper (no gradients)
    loss = DDGANLoss(system.process, system.nz, r1_gamma=t.r1_gamma, lambda_rec=t.lambda_rec, one_d_pass=t.fast_sums)
    for net in (G, D):
        sum_bank_gradients_at_once(net, t.fast_sums)
    amp = TrainAutocast(device, t.precision, cast_once=not t.compile)  # bf16: weights cast once per step
    fused = device.type == "cuda"
    opt_g = torch.optim.Adam(G.parameters(), betas=(t.beta1, t.beta2), fused=fused,
                             **graph_optimizer_options(t.lr_g, device, t.cuda_graphs))
    opt_d = torch.optim.Adam(D.parameters(), betas=(t.beta1, t.beta2), fused=fused,
                             **graph_optimizer_options(t.lr_d, device, t.cuda_graphs))
    horizon = total_steps(t, stream.steps_per_epoch)
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lr_lambda(horizon, 0, min(1.0, t.lr_min / t.lr_g)))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, lr_lambda(horizon, 0, min(1.0, t.lr_min / t.lr_d)))
    G.train()
    D.train()
    ema = EMA(G_ema, G, t.ema_decay)

    def train_step(images: torch.Tensor, r1: bool) -> dict:
        x0 = batch_format(system.encode(images), t)

        # Discriminator step (with R1 on the lazy_reg-th steps).
        D.requires_grad_(True)
        opt_d.zero_grad(set_to_none=True)
        d = loss.discriminator(D_fwd, G_fwd, x0, r1=r1, D_r1=D_par, amp=amp)
        d.pop("loss").backward()
        opt_d.step()

        # Generator step, then its EMA.
        D.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        g = loss.generator(G_fwd, D_frozen, x0, amp=amp)
        g.pop("loss").backward()
        opt_g.step()
        ema.update()
        return {k: v.detach() for k, v in {**d, **g}.items()}

    # One graph per kind of step: plain, and with R1.
    graphs = StepGraphs(lambda x, kind: train_step(x, kind == "r1"), device) if t.cuda_graphs else None

    def update(images: torch.Tensor, step: int) -> dict:
        r1 = t.r1_gamma > 0 and step % t.lazy_reg == 0
        return graphs(images, "r1" if r1 else "plain") if graphs is not None else train_step(images, r1)

    result = run_loop(cfg, modules=system.modules(), optimizers={"g": opt_g, "d": opt_d},
                    schedulers={"g": sched_g, "d": sched_d}, update=update, stream=stream, tracker=tracker,
                    workdir=workdir, device=device, should_stop=should_stop, progress=progress, on_step=on_step,
                    dist=dist)
    if graphs is not None:
        tracker.set_tags({"train_cuda_graphs": graphs.protocol()})
    return result


# ============================================================================================== paper configurations
# Paper configurations (PAPERS.md sections 1-2). gen: nf, ch_mult, attn, n_mlp; disc: kind, layers; T.
_GAN_PAPER: dict[str, dict[str, dict]] = {
    "ddgan": {
        "cifar10": dict(nf=128, ch_mult=(1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        # STL-10 at 64 px: the CIFAR-10 generator widths one level deeper (UNVERIFIED: not in PAPERS.md).
        "stl10": dict(nf=128, ch_mult=(1, 1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        "celebahq256": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 6)),
        "lsun_church": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=4, disc=("large", 6)),
    },
    "wavediff": {
        "cifar10": dict(nf=128, ch_mult=(1, 2, 2), attn=(), n_mlp=4, T=4, disc=("small", 3)),
        "stl10": dict(nf=128, ch_mult=(1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        "celebahq256": dict(nf=64, ch_mult=(1, 2, 2, 2, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 5)),
        "celebahq512": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 6)),
        "celebahq1024": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(), n_mlp=3, T=2, disc=("large", 6),
                             patch_size=2),
        "lsun_church": dict(nf=64, ch_mult=(1, 2, 2, 2, 4), attn=(16,), n_mlp=3, T=4, disc=("large", 5)),
    },
}
# Training settings (PAPERS.md section 1 table; WaveDiff's scripts for batch sizes and epochs).
_GAN_TRAIN: dict[str, dict] = {
    "cifar10": dict(r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4, lr_d=1.25e-4, ema_decay=0.9999, batch_size=256,
                    max_epochs=1800),
    "stl10": dict(r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4, lr_d=1.25e-4, ema_decay=0.9999, batch_size=256,
                  max_epochs=900),
    "celebahq256": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=64,
                        max_epochs=500),
    "celebahq512": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=32,
                        max_epochs=500),
    "celebahq1024": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=16,
                         max_epochs=500),
    "lsun_church": dict(r1_gamma=1.0, lazy_reg=10, lr_g=1.6e-4, lr_d=1e-4, ema_decay=0.999, batch_size=64,
                        max_epochs=500),
}
# CPU-sized: same code, smaller widths. Calibrated on 2 CPU cores (README "make demo").
_GAN_TINY = {
    "ddgan": dict(nf=32, ch_mult=(1, 2, 2), attn=(), n_mlp=2, T=4, disc=("small", 3), ngf=16),
    "wavediff": dict(nf=32, ch_mult=(1, 2, 2), attn=(), n_mlp=2, T=4, disc=("small", 3), ngf=16),
}
_GAN_TINY_TRAIN = dict(batch_size=64, r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4 * 4, lr_d=1.25e-4 * 4,
                       ema_decay=0.99, max_steps=400, checkpoint_every=200)

WG_SWITCHES = ("wavelet_residual", "wavelet_updown", "wavelet_bottleneck")


def configure(base: str, lambda_rec: float, switches: tuple[str, ...] = ()):
    """Configuration factory for one GAN variant: ``base`` picks the architecture table (ddgan | wavediff)."""
    wavelet = 1 if base == "wavediff" else 0

    def configure(key: str, scale: str):
        table = _GAN_PAPER[base] if scale == "paper" else {k: _GAN_TINY[base] for k in _GAN_PAPER[base]}
        if key not in table:
            raise ConfigError(unknown_preset(key, table))
        p = table[key]
        gen = NCSNppConfig(nf=p["nf"], ch_mult=p["ch_mult"], attn_resolutions=p["attn"], n_mlp=p["n_mlp"],
                           patch_size=p.get("patch_size", 1), num_res_blocks=p.get("num_res_blocks", 2),
                           **{s: (s in switches) for s in WG_SWITCHES})
        side = DATASET_PRESETS[key][0].resolution // 2**wavelet  # placeholder until the data set is known
        disc = DiscriminatorConfig(kind=p["disc"][0], num_layers=p["disc"][1], ngf=p.get("ngf", 64), image_size=side)
        model = GANModelConfig(wavelet_levels=wavelet, schedule=DDGANScheduleConfig(num_timesteps=p["T"]),
                               generator=gen, discriminator=disc)
        train = GANTrainConfig(**(_GAN_TRAIN[key] if scale == "paper" else _GAN_TINY_TRAIN), lambda_rec=lambda_rec)
        return model, train, {}

    return configure


# ============================================================================================== the family

class GANFamily(Family):
    name = "gan"
    derived_keys = frozenset({"model.generator.in_channels", "model.generator.out_channels",
                              "model.generator.image_size", "model.discriminator.in_channels",
                              "model.discriminator.image_size"})
    trainer = staticmethod(train_gan)

    def derive(self, cfg: RunConfig, channels: int) -> RunConfig:
        m: GANModelConfig = cfg.model
        c, s = space_shape(channels, cfg.data.resolution, m.wavelet_levels)
        gen = replace(m.generator, in_channels=c, out_channels=c, image_size=s)
        disc = replace(m.discriminator, in_channels=c, image_size=s)
        return replace(cfg, model=replace(m, generator=gen, discriminator=disc))

    def check(self, cfg: RunConfig) -> list[str]:
        p = []
        if cfg.eval.sampler != "default" or cfg.eval.steps:
            p.append("eval.sampler / eval.steps do not apply to GAN variants (their sampler is the T-step posterior "
                     "chain; set model.schedule.num_timesteps)")
        if cfg.train.lambda_rec < 0:
            p.append(f"train.lambda_rec must be >= 0, got {cfg.train.lambda_rec}")
        if cfg.train.lazy_reg < 1:
            p.append(f"train.lazy_reg must be >= 1, got {cfg.train.lazy_reg}")
        if cfg.train.cuda_graphs and (cfg.train.compile or cfg.processes > 1):
            p.append("train.cuda_graphs captures one process's eager step: it cannot be combined with "
                     f"train.compile (now {cfg.train.compile}) or processes > 1 (now {cfg.processes})")
        return p

    def build(self, cfg: RunConfig) -> GANSystem:
        return GANSystem(cfg.model)

    def step_cycle(self, cfg: RunConfig) -> int:
        return cfg.train.lazy_reg if cfg.train.r1_gamma > 0 else 1

    def without_step_extras(self, cfg: RunConfig) -> RunConfig:
        return replace(cfg, train=replace(cfg.train, lazy_reg=max(2, cfg.train.lazy_reg)))

    def with_short_cycle(self, cfg: RunConfig) -> RunConfig:
        return replace(cfg, train=replace(cfg.train, lazy_reg=2)) if self.step_cycle(cfg) > 1 else cfg

    def micro(self, cfg: RunConfig) -> dict:
        return dict(MICRO)

    def public_sources(self) -> tuple:
        from bench.families.gan_weights import SOURCES  # imports bench.weights, which collects from FAMILIES

        return SOURCES


GAN = GANFamily()
