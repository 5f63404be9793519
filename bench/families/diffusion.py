"""The diffusion family: DDPM (Ho et al., NeurIPS 2020) sampled with DDPM or DDIM (Song et al., ICLR 2021), and
WDDM (Aivazoglou-Vounatsos and Mehdipour Ghazi, FAIEMA 2025) on Haar coefficients, PAPERS.md sections 3 and 5.

An epsilon- (or x0-) predicting denoiser (UNet or U-KAN, :data:`DENOISERS`) in pixel space or on level-1/2 Haar
coefficients / 2^levels, Gaussian diffusion, trained with MSE (+ WDDM's image-space smooth-L1), AdamW, gradient
clipping, warm-up + cosine and an optional EMA (:func:`train_diffusion`). Its paper configurations are the tables
below; :func:`configure` turns one into a variant's configs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import ConfigError, RunConfig
from bench.distributed import SINGLE, DistContext
from bench.families.base import Family, System, space_shape, unknown_preset
from bench.train import (EMA, BatchStream, TrainAutocast, TrainResult, batch_format, compiled, lr_lambda,
                         prepare_modules, run_loop, total_steps)
from models.ddpm import SAMPLERS, SPACINGS, DDPMConfig, GaussianDiffusion
from models.ukan import UKAN, UKANConfig
from models.unet import UNet, UNetConfig

__all__ = ["DiffusionModelConfig", "DiffusionTrainConfig", "DiffusionSystem", "train_diffusion", "configure",
           "DiffusionFamily", "DIFFUSION", "DENOISERS", "MICRO_UNET", "MICRO_UKAN"]

# A denoiser's config type -> its network.
DENOISERS: dict[type, type] = {UNetConfig: UNet, UKANConfig: UKAN}

# The tests' micro sizes (DiffusionFamily.micro), with a 3-step DDIM sampler where the variant leaves it free.
MICRO_UNET = {"model.denoiser.block_out_channels": [16, 32], "model.denoiser.norm_groups": 4,
              "eval.sampler": "ddim", "eval.steps": 3}
MICRO_UKAN = {"model.denoiser.ch": 16, "eval.sampler": "ddim", "eval.steps": 3}


# ============================================================================================== configs

@dataclass
class DiffusionModelConfig:
    wavelet_levels: int = 0          # 0: pixels (DDPM); 1: 4C x H/2 (WDDM level 1); 2: 16C x H/4 (level 2)
    process: DDPMConfig = field(default_factory=DDPMConfig)
    denoiser: Any = None             # UNetConfig (UNet) or UKANConfig (U-KAN)
    ema: bool = False                # keep an EMA copy of the denoiser (decay: train.ema_decay)


@dataclass
class DiffusionTrainConfig:
    batch_size: int = 128             # images per optimisation step
    max_steps: int | None = None      # budgets, as for GANTrainConfig
    max_epochs: float | None = None
    max_minutes: float | None = None
    checkpoint_every: int = 500       # steps between checkpoints
    log_every: int = 10               # steps between logged losses
    lr: float = 1e-4                  # AdamW learning rate (WDDM: 1e-4)
    weight_decay: float = 1e-2        # AdamW weight decay (WDDM: 1e-2)
    grad_clip: float = 1.0            # max gradient norm (0 = off)
    warmup_steps: int = 1000          # linear warm-up, then cosine to 0 over the budget
    ema_decay: float = 0.0            # EMA of the denoiser (0 = none; WDDM uses none)
    image_loss_weight: float = 0.0    # smooth-L1 between decode(x0_hat) and x0, x0_hat at each sample's own t
    precision: str = "fp32"           # fp32 | bf16, as for GANTrainConfig
    channels_last: bool = False       # networks and batches in channels-last memory format
    compile: bool = False             # torch.compile the denoiser's training forward pass


# ============================================================================================== system

class DiffusionSystem(System):
    """DDPM / WDDM: an epsilon- (or x0-) predicting denoiser, sampled with DDPM or DDIM."""

    def __init__(self, cfg: DiffusionModelConfig, sampler: str = "ddpm", steps: int = 0, eta: float = 0.0,
                 spacing: str = "linear"):
        self.cfg = cfg
        self.wavelet_levels = cfg.wavelet_levels
        self.diffusion = GaussianDiffusion(cfg.process)
        self.denoiser = DENOISERS[type(cfg.denoiser)](cfg.denoiser)
        self.ema = copy.deepcopy(self.denoiser).requires_grad_(False).eval() if cfg.ema else None
        if sampler not in SAMPLERS:
            raise ValueError(f"eval.sampler={sampler!r}; valid: {', '.join(SAMPLERS)}")
        self.sampler = sampler
        self.steps = steps or (cfg.process.num_timesteps if sampler == "ddpm" else 50)
        self.sampler_kwargs = {"eta": eta, "spacing": spacing} if sampler == "ddim" else {}
        self.process = self.diffusion
        self.sample_fn, self.sample_options = SAMPLERS[sampler], {"steps": self.steps, **self.sampler_kwargs}

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser}

    @property
    def sampling_network(self) -> nn.Module:
        return self.ema if self.ema is not None else self.denoiser

    @property
    def nfe(self) -> int:
        return self.steps

    def modules(self) -> dict[str, nn.Module]:
        return {"denoiser": self.denoiser, **({"ema": self.ema} if self.ema is not None else {})}

    def state_shape(self, n: int) -> tuple[int, ...]:
        d = self.cfg.denoiser
        return (n, d.in_channels, d.image_size, d.image_size)

    def parts(self) -> dict[str, object]:
        return {"denoiser": type(self.denoiser), "process": type(self.process), "loss": type(self.process).loss,
                "sampler": self.sample_fn}

    def loss(self, images: torch.Tensor, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """MSE on the prediction target (random t per sample), and the image-space smooth-L1 of x0_hat taken at
        each sample's own t (WDDM's auxiliary term, done right). ``net``: the denoiser as trained (e.g. its
        DDP wrapper); default the denoiser itself."""
        x0 = self.encode(images)
        mse, x0_hat = self.diffusion.loss(net if net is not None else self.denoiser, x0)
        return {"loss": mse, "loss_image": F.smooth_l1_loss(self.decode(x0_hat), images)}


# ============================================================================================== training

def train_diffusion(cfg, system, stream: BatchStream, tracker, workdir, device: torch.device,
                    should_stop: Callable[[], bool] | None = None, progress: bool = True,
                    on_step: Callable[[int, float], None] | None = None, dist: DistContext = SINGLE) -> TrainResult:
    """DDPM-family training (PAPERS.md section 3): MSE on the prediction target at a random t per sample, plus
    ``image_loss_weight`` x smooth-L1 between the decoded x0_hat (at each sample's own t) and the image."""
    t: DiffusionTrainConfig = cfg.train
    net = system.denoiser
    prepare_modules(system.modules(), t)
    net_fwd = compiled(dist.wrap(net, device), t)
    opt = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=device.type == "cuda")
    horizon = total_steps(t, stream.steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(horizon, t.warmup_steps, 0.0))
    net.train()
    ema = EMA(system.ema, net, t.ema_decay) if system.ema is not None else None

    # bf16: the weights cast once per step, the gradients as one autocast region around the loss gives them
    amp = TrainAutocast(device, t.precision, cast_once=not t.compile, per_call=False)

    def update(images: torch.Tensor, step: int) -> dict:
        opt.zero_grad(set_to_none=True)
        with amp(net_fwd):
            losses = {k: v.float() for k, v in system.loss(batch_format(images, t), net=net_fwd).items()}
        loss = losses["loss"] + (t.image_loss_weight * losses["loss_image"] if t.image_loss_weight > 0 else 0.0)
        loss.backward()
        out = {k: v.detach() for k, v in losses.items()}
        if t.grad_clip > 0:
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip).detach()
        opt.step()
        if ema is not None:
            ema.update()
        return out

    return run_loop(cfg, modules=system.modules(), optimizers={"denoiser": opt}, schedulers={"denoiser": sched},
                    update=update, stream=stream, tracker=tracker, workdir=workdir, device=device,
                    should_stop=should_stop, progress=progress, on_step=on_step, dist=dist)


# ============================================================================================== paper configurations
# PAPERS.md sections 3 and 5. Denoiser tables: (kind, paper config per data set key, tiny config).
_UNET_PAPER = {
    # level 0 is the pixel DDPM baseline, sized like the level-1 WDDM UNet at full resolution.
    0: {"cifar10": dict(block_out_channels=(128, 256, 256), attention_levels=(True, True, False), dropout=0.1)},
    1: {"cifar10": dict(block_out_channels=(128, 256, 256), attention_levels=(True, True, False), dropout=0.1),
        "celebahq256": dict(block_out_channels=(128, 128, 256, 256, 256),
                            attention_levels=(False, False, True, True, False), dropout=0.0),
        # STL-10 (64 px): WDDM's public model config (the released wddm-unet-stl10-l1 file), not in PAPERS.md.
        "stl10": dict(block_out_channels=(128, 256, 256, 256), attention_levels=(True, True, False, False),
                      dropout=0.0)},
    2: {"cifar10": dict(block_out_channels=(64, 128, 128), attention_levels=(True, False, False), dropout=0.1),
        "celebahq256": dict(block_out_channels=(64, 128, 128, 256), attention_levels=(False, True, False, False),
                            dropout=0.0)},
}
_UNET_TINY = dict(block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1, dropout=0.0,
                  norm_groups=8, attention_head_dim=8)
# WDDM's U-KAN configs ask for attention at level 0 at level 1 (the public code silently drops it; we honour it).
# STL-10 and CelebA-HQ 256: WDDM's public model configs (the released U-KAN files), not in PAPERS.md.
_UKAN_PAPER = {1: {"cifar10": dict(ch=128, ch_mult=(1, 2), attn=(0,), dropout=0.1),
                   "stl10": dict(ch=128, ch_mult=(1, 2, 2), attn=(2,), dropout=0.0),
                   "celebahq256": dict(ch=64, ch_mult=(1, 2, 2, 4, 4), attn=(3, 4), dropout=0.0)},
               2: {"cifar10": dict(ch=128, ch_mult=(1,), attn=(), dropout=0.1)}}
_UKAN_TINY = {1: dict(ch=32, ch_mult=(1, 2), attn=(), dropout=0.0), 2: dict(ch=32, ch_mult=(1,), attn=(), dropout=0.0)}
_DIFF_TRAIN = {"cifar10": dict(batch_size=512, max_epochs=3000),
               "celebahq256": dict(batch_size=64, max_epochs=500),
               "stl10": dict(batch_size=512, max_epochs=3000)}  # UNVERIFIED: CIFAR-10's (STL-10's not published)
_DIFF_TINY_TRAIN = dict(batch_size=64, lr=5e-4, warmup_steps=50, max_steps=400, checkpoint_every=200)


def configure(kind: str, levels: int, sampler: str = "ddpm", steps: int = 0, spacing: str = "linear"):
    """Configuration factory for one diffusion variant: ``kind`` (unet | ukan) and wavelet ``levels`` pick the
    denoiser table; ``sampler``, ``steps``, ``spacing`` its evaluation."""
    def configure(key: str, scale: str):
        if scale == "paper":
            table = (_UNET_PAPER if kind == "unet" else _UKAN_PAPER)[levels]
            if key not in table:
                raise ConfigError(unknown_preset(key, table))
            den = table[key]
            train = DiffusionTrainConfig(**_DIFF_TRAIN[key], image_loss_weight=1.0 if levels else 0.0)
        else:
            den = _UNET_TINY if kind == "unet" else _UKAN_TINY[levels]
            train = DiffusionTrainConfig(**_DIFF_TINY_TRAIN, image_loss_weight=1.0 if levels else 0.0)
        # in/out channels and image size are derived from the data set (placeholders here).
        denoiser = UNetConfig(in_channels=4**levels, image_size=32, **den) if kind == "unet" else \
            UKANConfig(in_channels=4**levels, out_channels=4**levels, image_size=32 // 2**levels, **den)
        model = DiffusionModelConfig(wavelet_levels=levels, process=DDPMConfig(beta_schedule="cosine"),
                                     denoiser=denoiser)
        return model, train, {"sampler": sampler, "steps": steps, "spacing": spacing}

    return configure


# ============================================================================================== the family

class DiffusionFamily(Family):
    name = "diffusion"
    derived_keys = frozenset({"model.denoiser.in_channels", "model.denoiser.out_channels",
                              "model.denoiser.image_size"})
    system = DiffusionSystem          # what build() makes (DVDP: its subclass)
    trainer = staticmethod(train_diffusion)

    def derive(self, cfg: RunConfig, channels: int) -> RunConfig:
        m: DiffusionModelConfig = cfg.model
        c, s = space_shape(channels, cfg.data.resolution, m.wavelet_levels)
        den = replace(m.denoiser, in_channels=c, out_channels=c, image_size=s)
        return replace(cfg, model=replace(m, denoiser=den))

    def check(self, cfg: RunConfig) -> list[str]:
        p, ev = [], cfg.eval
        if ev.sampler not in SAMPLERS:
            p.append(f"eval.sampler={ev.sampler!r}; valid: {', '.join(SAMPLERS)}")
        if ev.spacing not in SPACINGS:
            p.append(f"eval.spacing={ev.spacing!r}; valid: {', '.join(SPACINGS)}")
        T = cfg.model.process.num_timesteps
        if ev.sampler == "ddpm" and ev.steps not in (0, T):
            p.append(f"eval.steps={ev.steps}: DDPM sampling uses all {T} steps (set 0, or eval.sampler: ddim)")
        if not 0 <= ev.steps <= T:
            p.append(f"eval.steps={ev.steps} must lie in [0, {T}]")
        return p

    def build(self, cfg: RunConfig) -> DiffusionSystem:
        ev = cfg.eval
        return self.system(cfg.model, sampler=ev.sampler, steps=ev.steps, eta=ev.eta, spacing=ev.spacing)

    def public_sources(self) -> tuple:
        from bench.families.diffusion_weights import SOURCES  # imports bench.weights, which collects FAMILIES

        return SOURCES

    def micro(self, cfg: RunConfig) -> dict:
        size = MICRO_UKAN if isinstance(cfg.model.denoiser, UKANConfig) else MICRO_UNET
        return dict(size) if cfg.eval.steps == 0 else {k: v for k, v in size.items() if not k.startswith("eval.")}


DIFFUSION = DiffusionFamily()
