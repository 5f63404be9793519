"""Variant families: everything a variant's family decides, in one object with one interface.

A family says which config keys it derives from the data set (and how), what it checks beyond the shared rules,
how a resolved config becomes a system (networks + process, bench/systems.py), which training loop trains it and
which classes and functions do the work (what ``python -m bench.registry show`` lists with their file:line). The
registry's variants each name their family; nothing else dispatches on a family's name.

- :data:`GAN`: DDGAN / WaveDiff (NCSN++ generator, time-conditioned discriminator, the DDGAN posterior process and
  its adversarial loss, train_gan);
- :data:`DIFFUSION`: DDPM / DDIM / WDDM (UNet or U-KAN denoiser, Gaussian diffusion, DDPM or DDIM sampling,
  train_diffusion);
- :data:`DVDP`: dimensionality-varying diffusion (the DDPM UNet at every stage's resolution, DVDP's process).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Callable

from bench.config import RunConfig
from bench.systems import DiffusionModelConfig, DiffusionSystem, DVDPSystem, GANModelConfig, GANSystem, space_shape
from bench.train import train_diffusion, train_gan
from models.ddgan import DDGANLoss, DDGANProcess
from models.ddpm import SAMPLERS, SPACINGS, GaussianDiffusion
from models.discriminator import Discriminator
from models.dvdp import DVDPProcess
from models.ncsnpp import NCSNppGenerator
from models.ukan import UKAN
from models.unet import UNet, UNetConfig

__all__ = ["Family", "GAN", "DIFFUSION", "DVDP", "FAMILIES"]


class Family(ABC):
    name: str                          # MLflow tag `family`
    derived_keys: frozenset[str]       # config keys derived from the data set: they cannot be set
    system: type                       # what build() returns
    trainer: Callable                  # the training loop: trainer(cfg, system, stream, tracker, workdir, device, ...)

    @abstractmethod
    def derive(self, cfg: RunConfig, channels: int) -> RunConfig:
        """The config with its data-set-dependent keys (channels, sizes) filled in."""

    def check(self, cfg: RunConfig) -> list[str]:
        """Problems with the family's own keys (the shared rules are the registry's)."""
        return []

    @abstractmethod
    def build(self, cfg: RunConfig):
        """The system (networks + process) of a resolved config."""

    @abstractmethod
    def parts(self, cfg: RunConfig) -> dict[str, object]:
        """What does the work, by role: classes and functions (for ``bench.registry show``)."""

    def __repr__(self) -> str:
        return f"<family {self.name}>"


class GANFamily(Family):
    name = "gan"
    derived_keys = frozenset({"model.generator.in_channels", "model.generator.out_channels",
                              "model.generator.image_size", "model.discriminator.in_channels",
                              "model.discriminator.image_size"})
    system = GANSystem
    trainer = staticmethod(train_gan)

    def derive(self, cfg: RunConfig, channels: int) -> RunConfig:
        m: GANModelConfig = cfg.model
        c, s = space_shape(channels, cfg.data.resolution, m.wavelet_levels)
        gen = replace(m.generator, in_channels=c, out_channels=c, image_size=s)
        disc = replace(m.discriminator, in_channels=c, image_size=s)
        return replace(cfg, model=replace(m, generator=gen, discriminator=disc))

    def check(self, cfg: RunConfig) -> list[str]:
        if cfg.eval.sampler != "default" or cfg.eval.steps:
            return ["eval.sampler / eval.steps do not apply to GAN variants (their sampler is the T-step posterior "
                    "chain; set model.schedule.num_timesteps)"]
        return []

    def build(self, cfg: RunConfig) -> GANSystem:
        return GANSystem(cfg.model)

    def parts(self, cfg: RunConfig) -> dict[str, object]:
        return {"system": GANSystem, "generator": NCSNppGenerator, "discriminator": Discriminator,
                "process": DDGANProcess, "loss": DDGANLoss, "sampler": DDGANProcess.sample, "trainer": train_gan}


class DiffusionFamily(Family):
    name = "diffusion"
    derived_keys = frozenset({"model.denoiser.in_channels", "model.denoiser.out_channels",
                              "model.denoiser.image_size"})
    system = DiffusionSystem
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

    def parts(self, cfg: RunConfig) -> dict[str, object]:
        denoiser = UNet if isinstance(cfg.model.denoiser, UNetConfig) else UKAN
        return {"system": self.system, "denoiser": denoiser, "process": GaussianDiffusion,
                "loss": GaussianDiffusion.loss, "sampler": SAMPLERS.get(cfg.eval.sampler), "trainer": train_diffusion}


class DVDPFamily(DiffusionFamily):
    name = "dvdp"
    system = DVDPSystem

    def parts(self, cfg: RunConfig) -> dict[str, object]:
        return {**super().parts(cfg), "process": DVDPProcess, "loss": DVDPProcess.loss, "sampler": DVDPProcess.sample}


GAN, DIFFUSION, DVDP = GANFamily(), DiffusionFamily(), DVDPFamily()
FAMILIES: dict[str, Family] = {f.name: f for f in (GAN, DIFFUSION, DVDP)}
