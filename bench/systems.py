"""Systems: a variant's networks + its process + the space it diffuses in, behind one interface.

Every system exposes what training and evaluation need and nothing else:

- ``encode(x)`` / ``decode(y)``: image [-1, 1] <-> diffusion space (pixels, or Haar coefficients / 2^levels);
- ``state_shape(n)``: shape of the initial noise x_T for ``n`` samples;
- ``sample(x_T, rng, net=None)``: the whole sampler, final inverse transform included, returning images in
  [-1, 1]; ``net`` stands in for the sampling network (e.g. its CUDA-graph replay, bench/sampling.py);
- ``sampling_network``: the module called once per network function evaluation (for NFE and FLOPs);
- ``networks``: named modules whose parameters are counted and checkpointed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.ddgan import DDGANProcess, DDGANScheduleConfig
from models.ddpm import SAMPLERS, DDPMConfig, GaussianDiffusion
from models.dvdp import DVDPProcess
from models.discriminator import Discriminator, DiscriminatorConfig
from models.ncsnpp import NCSNppConfig, NCSNppGenerator
from models.ukan import UKAN
from models.unet import UNet, UNetConfig
from models.wavelet import wavelet_decode, wavelet_encode

__all__ = ["GANModelConfig", "GANSystem", "DiffusionModelConfig", "DiffusionSystem", "DVDPSystem", "space_shape"]


def space_shape(channels: int, resolution: int, wavelet_levels: int) -> tuple[int, int]:
    """(channels, side) of the diffusion space for images (channels, resolution, resolution)."""
    return channels * 4**wavelet_levels, resolution // 2**wavelet_levels


class _System:
    """What every system shares: its diffusion space and moving its stateful modules."""

    wavelet_levels: int

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return wavelet_encode(x, self.wavelet_levels) if self.wavelet_levels else x

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return wavelet_decode(y, self.wavelet_levels) if self.wavelet_levels else y

    def to(self, device: torch.device):
        for m in self.modules().values():
            m.to(device)
        return self

    # Every family samples through the samplers' one signature: sample_fn(process, model, x_T, *, generator,
    # callback, **sample_options) (models/ddpm.py SAMPLERS, DDGANProcess.sample, DVDPProcess.sample).
    sample_fn: Callable[..., torch.Tensor]
    sample_options: dict
    process: Any

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, rng: torch.Generator | None = None, net=None) -> torch.Tensor:
        """The whole sampler from x_T, final inverse transform included: images in [-1, 1]. ``net`` stands in
        for the sampling network (e.g. its CUDA-graph replay, bench/sampling.py)."""
        net = net if net is not None else self.sampling_network
        y = self.sample_fn(self.process, net, x_T, generator=rng, **self.sample_options)
        return self.decode(y).clamp(-1, 1)


@dataclass
class GANModelConfig:
    wavelet_levels: int = 0          # 0: pixel space (DDGAN); 1: one-level Haar coefficients / 2 (WaveDiff)
    schedule: DDGANScheduleConfig = field(default_factory=DDGANScheduleConfig)
    generator: NCSNppConfig = field(default_factory=NCSNppConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)


class GANSystem(_System):
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



@dataclass
class DiffusionModelConfig:
    wavelet_levels: int = 0          # 0: pixels (DDPM); 1: 4C x H/2 (WDDM level 1); 2: 16C x H/4 (level 2)
    process: DDPMConfig = field(default_factory=DDPMConfig)
    denoiser: Any = None             # UNetConfig (UNet) or UKANConfig (U-KAN)
    ema: bool = False                # keep an EMA copy of the denoiser (decay: train.ema_decay)


class DiffusionSystem(_System):
    """DDPM / WDDM: an epsilon- (or x0-) predicting denoiser, sampled with DDPM or DDIM."""

    def __init__(self, cfg: DiffusionModelConfig, sampler: str = "ddpm", steps: int = 0, eta: float = 0.0,
                 spacing: str = "linear"):
        self.cfg = cfg
        self.wavelet_levels = cfg.wavelet_levels
        self.diffusion = GaussianDiffusion(cfg.process)
        self.denoiser = UNet(cfg.denoiser) if isinstance(cfg.denoiser, UNetConfig) else UKAN(cfg.denoiser)
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

    def loss(self, images: torch.Tensor, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """MSE on the prediction target (random t per sample), and the image-space smooth-L1 of x0_hat taken at
        each sample's own t (WDDM's auxiliary term, done right). ``net``: the denoiser as trained (e.g. its
        DDP wrapper); default the denoiser itself."""
        x0 = self.encode(images)
        mse, x0_hat = self.diffusion.loss(net if net is not None else self.denoiser, x0)
        return {"loss": mse, "loss_image": F.smooth_l1_loss(self.decode(x0_hat), images)}



class DVDPSystem(DiffusionSystem):
    """DVDP: one UNet (fully convolutional) denoises every stage at that stage's resolution; the state shrinks
    2x at each turning point (models/dvdp.py, docs/dvdp.md)."""

    def __init__(self, cfg: DiffusionModelConfig, sampler: str = "ddpm", steps: int = 0, eta: float = 0.0,
                 spacing: str = "linear"):
        if cfg.wavelet_levels:
            raise ValueError("DVDP runs in pixel space (model.wavelet_levels must be 0)")
        super().__init__(replace(cfg, process=cfg.process.ddpm_config()), sampler, steps, eta, spacing)
        self.cfg = cfg
        self.process = DVDPProcess(cfg.process)
        self.steps = steps or (cfg.process.num_timesteps if sampler == "ddpm" else 50)
        self.sample_fn = DVDPProcess.sample
        self.sample_options = {"sampler": sampler, "steps": self.steps, "eta": eta if sampler == "ddim" else 0.0,
                               "spacing": spacing if sampler == "ddim" else "linear"}

    def state_shape(self, n: int) -> tuple[int, ...]:
        d = self.cfg.denoiser
        return self.process.state_shape(n, d.image_size, d.in_channels)

    def loss(self, images: torch.Tensor, net: nn.Module | None = None) -> dict[str, torch.Tensor]:
        mse, x0_hat = self.process.loss(net if net is not None else self.denoiser, images)
        return {"loss": mse, "loss_image": F.smooth_l1_loss(x0_hat, images)}

