"""The DVDP family: dimensionality-varying diffusion (Zhang et al., CVPR 2023), PAPERS.md section 4 (no public
code; the construction is in docs/dvdp.md). The pixel DDPM's UNet denoises every stage at that stage's resolution;
the state shrinks 2x at each turning point. Everything else (training, checks, sampler options) is the diffusion
family's.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.families import diffusion
from bench.families.diffusion import DiffusionFamily, DiffusionModelConfig, DiffusionSystem
from models.dvdp import DVDPConfig, DVDPProcess

__all__ = ["DVDPSystem", "configure", "DVDPFamily", "DVDP"]


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


def configure(turning_points):
    """Configuration factory for one DVDP variant: the pixel DDPM's UNet and training, DVDP's process with these
    turning points ((t, factor), ...)."""
    base = diffusion.configure("unet", 0)

    def configure(key: str, scale: str):
        model, train, ev = base(key, scale)
        proc = DVDPConfig(beta_schedule="cosine", turning_points=turning_points)
        return replace(model, process=proc), train, ev

    return configure


class DVDPFamily(DiffusionFamily):
    name = "dvdp"
    system = DVDPSystem


DVDP = DVDPFamily()
