"""Gaussian diffusion (DDPM, Ho et al. 2020) and its samplers: ancestral DDPM and DDIM (Song et al. 2021).

The process is network-agnostic: a denoiser is any callable ``model(x, t) -> output`` with ``t`` a (B,) long
tensor of timestep indices in [0, T-1]; the output is the noise (``prediction="epsilon"``) or the clean sample
(``prediction="sample"``). Notation: ``ab_t`` = alpha_bar_t = prod_{i<=t} (1 - beta_i); the "previous"
alpha_bar of the first timestep is 1.

Every sampler has the signature ``sampler(diffusion, model, x_T, *, steps, generator=None, callback=None,
**options) -> x0`` and calls the network exactly once per step (NFE = steps). ``SAMPLERS`` maps names to them.
Schedules are computed in float64; coefficients are cast to the sample's dtype when applied.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.noise import randn_like

__all__ = [
    "DDPMConfig", "make_betas", "GaussianDiffusion", "timestep_sequence", "ddim_sigma",
    "ddpm_sample", "ddim_sample", "SAMPLERS", "SPACINGS",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DDPMConfig:
    num_timesteps: int = 1000        # T: number of diffusion steps; timesteps are 0 .. T-1
    beta_schedule: str = "linear"    # "linear" (beta_start..beta_end) | "cosine" (diffusers' squaredcos_cap_v2)
    beta_start: float = 1e-4         # first beta of the linear schedule
    beta_end: float = 0.02           # last beta of the linear schedule
    max_beta: float = 0.999          # cap of the cosine schedule's betas
    prediction: str = "epsilon"      # network target: "epsilon" (the noise) | "sample" (x0)
    clip_sample: bool = True         # clip every x0 estimate to [-1, 1]

    def __post_init__(self) -> None:
        if self.beta_schedule not in ("linear", "cosine"):
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {self.beta_schedule!r}")
        if self.prediction not in ("epsilon", "sample"):
            raise ValueError(f"prediction must be 'epsilon' or 'sample', got {self.prediction!r}")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")


def make_betas(cfg: DDPMConfig) -> torch.Tensor:
    """(T,) float64 betas. Linear: evenly spaced from beta_start to beta_end. Cosine (Nichol & Dhariwal):
    beta_i = min(1 - f((i+1)/T) / f(i/T), max_beta) with f(s) = cos((s + 0.008) / 1.008 * pi / 2)^2."""
    T = cfg.num_timesteps
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, T, dtype=torch.float64)
    s = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=cfg.max_beta)


class GaussianDiffusion:
    """The forward process q(x_t | x0), its posterior q(x_{t-1} | x_t, x0), targets and the training loss."""

    def __init__(self, cfg: DDPMConfig):
        self.cfg = cfg
        self.num_timesteps = cfg.num_timesteps
        self.betas = make_betas(cfg)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        # Posterior q(x_{t-1} | x_t, x0) = N(coef1 x0 + coef2 x_t, beta_tilde_t); beta_tilde_0 = 0.
        self.posterior_variance = (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * self.betas
        self.posterior_mean_coef1 = self.alphas_cumprod_prev.sqrt() * self.betas / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = self.alphas.sqrt() * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        self._device_cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    # -- coefficient lookup -------------------------------------------------------------------------

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """getattr(self, name)[t] shaped (B, 1, ..., 1) in x's dtype and device (tables cached per device)."""
        table = self._device_cache.setdefault(x.device, {})
        if name not in table:
            table[name] = getattr(self, name).to(x.device)
        t = torch.as_tensor(t, device=x.device).long().reshape(-1)
        if t.numel() == 1 and x.shape[0] != 1:
            t = t.expand(x.shape[0])
        return table[name][t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    # -- forward process and parameterisations ----------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        ab = self._coef("alphas_cumprod", t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (the variance is beta_tilde_t, zero at t = 0)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        return mean, self._coef("posterior_variance", t, x_t)

    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                   clip: Optional[bool] = None) -> torch.Tensor:
        """x0 estimate from the network output at each sample's own t; clipped to [-1, 1] when ``clip``
        (default: ``cfg.clip_sample``)."""
        if self.cfg.prediction == "epsilon":
            ab = self._coef("alphas_cumprod", t, x_t)
            x0 = (x_t - (1 - ab).sqrt() * model_out) / ab.sqrt()
        else:
            x0 = model_out
        clip = self.cfg.clip_sample if clip is None else clip
        return x0.clamp(-1.0, 1.0) if clip else x0

    def predict_eps(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Noise estimate from the network output (unclipped x0 for ``prediction="sample"``)."""
        if self.cfg.prediction == "epsilon":
            return model_out
        ab = self._coef("alphas_cumprod", t, x_t)
        return (x_t - ab.sqrt() * model_out) / (1 - ab).sqrt()

    def training_targets(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network regresses: the noise (epsilon) or x0 (sample)."""
        return noise if self.cfg.prediction == "epsilon" else x0

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Uniform training timesteps, (batch,) long."""
        gdev = generator.device if generator is not None else device
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gdev).to(device)

    def loss(self, model: Denoiser, x0: torch.Tensor, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean squared error to the target, x0_hat). ``t`` and ``noise`` are drawn when not given.

        x0_hat is the network's x0 estimate at each sample's OWN timestep (clipped when ``cfg.clip_sample``),
        for an auxiliary image-space loss. (WDDM's public code converts an epsilon output to x0 at t = 0 for every
        sample, which makes that auxiliary term nearly a copy of the input.)"""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = randn_like(x0, generator)
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t)
        mse = F.mse_loss(out, self.training_targets(x0, t, noise))
        return mse, self.predict_x0(out, x_t, t)


# ---------------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------------

SPACINGS = ("linear", "quadratic", "leading")


def timestep_sequence(num_timesteps: int, steps: int, spacing: str = "linear") -> list[int]:
    """Decreasing sub-sequence of ``steps`` distinct timesteps in [0, T-1] (the order they are visited).

    - "linear": tau_i = floor(c i), i = 0..S-1, with c = (T-1)/(S-1) so the sequence spans [0, T-1]
      (Song et al.'s linear choice with tau_{S-1} as close to T as possible).
    - "quadratic": tau_i = floor(c i^2), c = 0.8 T / (S-1)^2 (Song et al.'s CIFAR-10 choice). Entries that
      would repeat (many steps) are raised to the previous entry + 1, keeping S distinct steps.
    - "leading": tau_i = i * (T // S) (diffusers' "leading" spacing, also Song et al.'s code for "uniform").
    With steps = 1 linear and quadratic give [T-1], leading gives [0].
    """
    T, S = num_timesteps, steps
    if not 1 <= S <= T:
        raise ValueError(f"steps must be in [1, {T}], got {S}")
    if spacing == "leading":
        seq = [i * (T // S) for i in range(S)]
    elif spacing in ("linear", "quadratic") and S == 1:
        seq = [T - 1]
    elif spacing == "linear":
        seq = [(T - 1) * i // (S - 1) for i in range(S)]  # exact integer floor
    elif spacing == "quadratic":
        c = 0.8 * T / (S - 1) ** 2
        seq = []
        for i in range(S):
            tau = int(math.floor(c * i * i))
            seq.append(max(tau, seq[-1] + 1) if seq else tau)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return seq[::-1]


def ddim_sigma(ab_t: float, ab_s: float, eta: float) -> float:
    """sigma(eta) = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s) for the step t -> s (s < t)."""
    return eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(max(1 - ab_t / ab_s, 0.0))


def _timestep_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


@torch.no_grad()
def ddpm_sample(diffusion: GaussianDiffusion, model: Denoiser, x_T: torch.Tensor, *, steps: Optional[int] = None,
                generator: Optional[torch.Generator] = None, callback: Optional[Callable[[dict], None]] = None
                ) -> torch.Tensor:
    """Ancestral sampling with the posterior variance "fixed small" (beta_tilde_t), over all T timesteps:
    x_{t-1} = coef1_t x0_hat + coef2_t x_t + sqrt(beta_tilde_t) z; no noise at t = 0.

    DDPM visits every timestep, so ``steps`` must be None or T (use ``ddim_sample`` for fewer steps).
    ``callback`` receives {"i", "t", "t_next", "x" (after the step), "x0_hat"} after every step."""
    T = diffusion.num_timesteps
    if steps is not None and steps != T:
        raise ValueError(f"DDPM ancestral sampling uses all T={T} steps; got steps={steps} (use DDIM for fewer)")
    x = x_T
    for i, t in enumerate(range(T - 1, -1, -1)):
        tb = _timestep_batch(t, x)
        x0_hat = diffusion.predict_x0(model(x, tb), x, tb)
        mean, var = diffusion.q_posterior(x0_hat, x, tb)
        x = mean + var.sqrt() * randn_like(x, generator) if t > 0 else mean
        if callback is not None:
            callback({"i": i, "t": t, "t_next": t - 1, "x": x, "x0_hat": x0_hat})
    return x


@torch.no_grad()
def ddim_sample(diffusion: GaussianDiffusion, model: Denoiser, x_T: torch.Tensor, *, steps: int = 50,
                generator: Optional[torch.Generator] = None, callback: Optional[Callable[[dict], None]] = None,
                eta: float = 0.0, spacing: str = "linear") -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) over ``timestep_sequence(T, steps, spacing)``:

        x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z,  sigma = ddim_sigma(ab_t, ab_s, eta)

    with s the next timestep of the sequence and ab_s = 1 after the last one (so the result is x0_hat).
    eps_hat comes from the unclipped output; x0_hat is clipped when ``cfg.clip_sample``. eta = 0 is
    deterministic; eta = 1 with steps = T is DDPM's fixed-small ancestral sampler. Noise is drawn only where
    sigma > 0. ``callback`` as in ``ddpm_sample`` ("t_next" is -1 after the last step)."""
    seq = timestep_sequence(diffusion.num_timesteps, steps, spacing)
    ab = diffusion.alphas_cumprod
    x = x_T
    for i, t in enumerate(seq):
        s = seq[i + 1] if i + 1 < len(seq) else -1
        ab_t, ab_s = float(ab[t]), (float(ab[s]) if s >= 0 else 1.0)
        tb = _timestep_batch(t, x)
        out = model(x, tb)
        x0_hat = diffusion.predict_x0(out, x, tb)
        eps = diffusion.predict_eps(out, x, tb)
        sigma = ddim_sigma(ab_t, ab_s, eta)
        x = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * randn_like(x, generator)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0_hat": x0_hat})
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
}
