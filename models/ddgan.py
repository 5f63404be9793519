"""The DDGAN diffusion process: a few large VP steps, a generator that predicts x_0, posterior sampling.

Network-agnostic: the generator is any callable ``G(x_tp1, t, z) -> x_0`` and the discriminator any
``D(x_t, t, x_tp1)``; the process runs unchanged on pixels (DDGAN) or on scaled wavelet coefficients (WaveDiff).

Schedule (T = ``num_timesteps``). Time grid ``tau_i = i / T * (1 - eps) + eps``, i = 0..T, eps = 1e-3;
VP marginal ``alpha_bar(tau) = exp(-0.5 tau^2 (beta_max - beta_min) - tau beta_min)``;
``beta_i = 1 - alpha_bar(tau_i) / alpha_bar(tau_{i-1})`` for i = 1..T and ``beta_0 = 1e-8``.
T=4 gives betas[1:] ~ [0.478, 0.849, 0.956, 0.987]; T=2 gives ~[0.921, 0.9995].

Indexing (integer step t in 0..T-1, as in the public code):
- ``x_t`` is x_0 diffused by betas[0..t], i.e. ``alphas_cumprod[t] = prod_{i<=t} (1 - beta_i)`` (beta_0 = 1e-8
  makes x at t=0 a hair noisier than x_0);
- ``x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) eps``;
- G and D receive the index ``t`` together with ``x_{t+1}`` (not t+1);
- the posterior ``q(x_t | x_{t+1}, x_0)`` is the DDPM posterior on betas[1:] (it ignores beta_0), with the
  log-variance clamped at 1e-20; at t = 0 it is exactly x_0 and no noise is added.
Sampling: ``x_T ~ N(0, I)``; for t = T-1..0: fresh ``z ~ N(0, I)``, ``x_0 = G(x, t, z)``, ``x = posterior
sample``. T generator calls in all (NFE = T).

The schedule is kept as float64 numpy arrays and cast to the input's dtype and device on use.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.noise import randn, randn_like

__all__ = ["DDGANScheduleConfig", "DDGANProcess", "DDGANLoss", "vp_time_grid", "vp_betas"]


@dataclass
class DDGANScheduleConfig:
    num_timesteps: int = 4      # T: 4 for CIFAR-10, STL-10, LSUN; 2 for CelebA-HQ
    beta_min: float = 0.1       # VP schedule beta(tau) at tau = 0
    beta_max: float = 20.0      # VP schedule beta(tau) at tau = 1
    eps: float = 1e-3           # start of the time grid (a fixed constant, not an option, in the public code)

    def __post_init__(self) -> None:
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {self.num_timesteps}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must lie in (0, 1), got {self.eps}")


def vp_time_grid(cfg: DDGANScheduleConfig) -> np.ndarray:
    """tau_i = i / T * (1 - eps) + eps for i = 0..T (float64, length T+1)."""
    i = np.arange(cfg.num_timesteps + 1, dtype=np.float64)
    return i / cfg.num_timesteps * (1.0 - cfg.eps) + cfg.eps


def vp_betas(cfg: DDGANScheduleConfig) -> np.ndarray:
    """(T+1,) float64: beta_0 = 1e-8, then 1 - alpha_bar(tau_i) / alpha_bar(tau_{i-1})."""
    tau = vp_time_grid(cfg)
    log_alpha_bar = -0.5 * tau ** 2 * (cfg.beta_max - cfg.beta_min) - tau * cfg.beta_min
    betas = -np.expm1(log_alpha_bar[1:] - log_alpha_bar[:-1])
    return np.concatenate([[1e-8], betas])


class DDGANProcess:
    """Forward pairs, posterior sampling and the T-step sampler of DDGAN (no network inside)."""

    def __init__(self, cfg: DDGANScheduleConfig):
        self.cfg = cfg
        self.num_timesteps = cfg.num_timesteps
        self.betas = vp_betas(cfg)                                   # (T+1,)
        # Forward process over betas[0..T]: x_t ~ N(sqrt(ab[t]) x_0, 1 - ab[t]).
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)           # (T+1,)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_alphas = np.sqrt(1.0 - self.betas)                 # one step t -> t+1 uses index t+1
        self.sqrt_betas = np.sqrt(self.betas)
        # Posterior q(x_t | x_{t+1}, x_0) on betas[1:], indexed by t = 0..T-1.
        b = self.betas[1:]
        ab = np.cumprod(1.0 - b)
        ab_prev = np.concatenate([[1.0], ab[:-1]])
        self.posterior_variance = b * (1.0 - ab_prev) / (1.0 - ab)
        self.posterior_log_variance_clipped = np.log(np.maximum(self.posterior_variance, 1e-20))
        self.posterior_mean_coef1 = b * np.sqrt(ab_prev) / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - b) / (1.0 - ab)
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        # The training pairs' and the posterior sample's coefficients per t, one row each (``_STEP_COLUMNS``),
        # so a batch's coefficients are one lookup; the posterior's noise scale is exp(log_var / 2), 0 at t = 0.
        self._step_table = {"sqrt_alphas_cumprod": self.sqrt_alphas_cumprod[:-1],
                            "sqrt_one_minus_alphas_cumprod": self.sqrt_one_minus_alphas_cumprod[:-1],
                            "sqrt_alphas_next": self.sqrt_alphas[1:], "sqrt_betas_next": self.sqrt_betas[1:],
                            "posterior_mean_coef1": self.posterior_mean_coef1,
                            "posterior_mean_coef2": self.posterior_mean_coef2}

    # -- coefficient lookup ------------------------------------------------------------------------------
    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``getattr(self, name)[t]`` as x's dtype/device, shaped (B, 1, ..., 1) to broadcast against x."""
        key = (name, x.device, x.dtype)
        table = self._cache.get(key)
        if table is None:
            table = torch.as_tensor(getattr(self, name), dtype=x.dtype, device=x.device)
            self._cache[key] = table
        return table[t.to(x.device).long()].view(-1, *([1] * (x.dim() - 1)))

    def _step_coefs(self, t: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every coefficient of ``_step_table`` (and ``posterior_std``) at ``t``, each (B, 1, ..., 1) like
        :meth:`_coef`'s, from one lookup of a (T, 7) table in x's dtype / device."""
        key = ("_step_table", x.device, x.dtype)
        table = self._cache.get(key)
        if table is None:
            cols = [torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in self._step_table.values()]
            log_var = torch.as_tensor(self.posterior_log_variance_clipped, dtype=x.dtype, device=x.device)
            nonzero = (torch.arange(self.num_timesteps, device=x.device) != 0).to(x.dtype)
            cols.append(nonzero * torch.exp(0.5 * log_var))  # the same float ops posterior_sample did per call
            table = torch.stack(cols, dim=1)
            self._cache[key] = table
        rows = table[t.to(x.device).long()].view(-1, table.shape[1], *([1] * (x.dim() - 1)))
        return dict(zip([*self._step_table, "posterior_std"], rows.unbind(1)))

    # -- forward process ---------------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) noise."""
        if noise is None:
            noise = torch.randn_like(x0)
        a = self._coef("sqrt_alphas_cumprod", t, x0)
        s = self._coef("sqrt_one_minus_alphas_cumprod", t, x0)
        return a * x0 + s * noise

    def q_sample_pairs(self, x0: torch.Tensor, t: torch.Tensor,
                       noise: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pair (x_t, x_{t+1}) for integer steps t in 0..T-1 (B,).

        ``noise`` = (noise of x_t given x_0, noise of the step t -> t+1); drawn with randn_like when None.
        """
        n_t, n_step = (torch.randn_like(x0), torch.randn_like(x0)) if noise is None else noise
        c = self._step_coefs(t, x0)  # q_sample's and the one step's formulas, the coefficients looked up at once
        x_t = c["sqrt_alphas_cumprod"] * x0 + c["sqrt_one_minus_alphas_cumprod"] * n_t
        x_tp1 = c["sqrt_alphas_next"] * x_t + c["sqrt_betas_next"] * n_step
        return x_t, x_tp1

    # -- posterior ---------------------------------------------------------------------------------------
    def posterior_mean_variance(self, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clamped log-variance of q(x_t | x_{t+1}, x_0), each broadcastable to x."""
        c1 = self._coef("posterior_mean_coef1", t, x_tp1)
        c2 = self._coef("posterior_mean_coef2", t, x_tp1)
        mean = c1 * x0 + c2 * x_tp1
        var = self._coef("posterior_variance", t, x_tp1)
        log_var = self._coef("posterior_log_variance_clipped", t, x_tp1)
        return mean, var, log_var

    def posterior_sample(self, x0: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor,
                         noise: torch.Tensor | None = None, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_{t+1}, x_0); no noise where t == 0."""
        c = self._step_coefs(t, x_tp1)  # posterior_mean_variance's mean; the noise scale, 0 at t = 0
        mean = c["posterior_mean_coef1"] * x0 + c["posterior_mean_coef2"] * x_tp1
        if noise is None:
            noise = randn_like(x_tp1, generator)
        return mean + c["posterior_std"] * noise

    # -- sampler -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x_T: torch.Tensor,
               *, nz: int, generator: torch.Generator | None = None,
               callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """Run the T steps from x_T: ``x_0 = model(x, t, z)`` with fresh z (B, nz), then posterior sampling.

        The samplers' one signature (``DDGANProcess.sample(process, model, x_T, *, generator, callback, ...)``, as
        models/ddpm.py's). ``generator`` drives both z and the posterior noise (drawn on its device: a CPU
        generator gives the same samples on any device, see models/noise.py). ``callback`` receives {"i", "t",
        "x" (after the step), "x0_hat"} after every step."""
        x = x_T
        b = x.shape[0]
        for i, step in enumerate(reversed(range(self.num_timesteps))):
            t = torch.full((b,), step, dtype=torch.long, device=x.device)
            z = randn((b, nz), x, generator)
            x0 = model(x, t, z)
            x = self.posterior_sample(x0, x, t, generator=generator)
            if callback is not None:
                callback({"i": i, "t": step, "x": x, "x0_hat": x0})
        return x


def _no_amp(*networks, enabled: bool = True):
    return contextlib.nullcontext()


@dataclass
class DDGANLoss:
    """DDGAN's adversarial objective (PAPERS.md sections 1-2), beside its process: the non-saturating GAN loss on
    posterior pairs (x_t, x_{t+1}), lazy R1 on real x_t, and WaveDiff's L1 reconstruction of the clean
    coefficients. The networks are passed in (their DDP wrappers or compiled forms, as the trainer sees fit);
    ``amp(*networks, enabled=True)`` gives the forward passes' autocast context, one region per step half, told
    which networks run in it (``bench.train.TrainAutocast`` casts their weights once per step, not per call);
    R1's pass always runs without it, in fp32. ``one_d_pass`` (``train.fast_sums``): outside R1 steps D sees the
    real and the fake pairs as one batch of 2 B, its minibatch statistic taken per half (``D(..., batches=2)``):
    the same mathematics in half the calls, its weight gradients summed over both halves at once (another
    rounding)."""

    process: DDGANProcess
    nz: int                          # latent size of G
    r1_gamma: float = 0.02           # R1 weight: (gamma / 2) E||grad_x D(x_t)||^2
    lambda_rec: float = 0.0          # weight of || G(x_{t+1}) - x0 ||_1 (WaveDiff: 1)
    one_d_pass: bool = False         # D's real and fake passes as one call outside R1 steps

    def _pairs(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.process.num_timesteps, (x0.shape[0],), device=x0.device)
        return (t, *self.process.q_sample_pairs(x0, t))

    def discriminator(self, D, G, x0: torch.Tensor, *, r1: bool = False, D_r1=None, amp=_no_amp
                      ) -> dict[str, torch.Tensor]:
        """D's loss: real pairs against fake x_t drawn from the posterior with G's x0 (G not differentiated);
        with ``r1``, the real pass goes through ``D_r1`` (default D) in fp32 and R1 is added. Returns the total
        ``loss`` and its parts."""
        b = x0.shape[0]
        t, x_t, x_tp1 = self._pairs(x0)
        x_t.requires_grad_(r1)
        out = {}
        if r1:  # R1's pass: fp32, outside the autocast region
            d_real = (D_r1 if D_r1 is not None else D)(x_t, t, x_tp1.detach()).float()
            (grad,) = torch.autograd.grad(d_real.sum(), x_t, create_graph=True)
            out["r1"] = self.r1_gamma / 2 * grad.pow(2).reshape(b, -1).sum(1).mean()
        one_pass = self.one_d_pass and not r1
        with amp(D, G):
            if not (r1 or one_pass):
                d_real = D(x_t, t, x_tp1.detach()).float()
            z = torch.randn(b, self.nz, device=x0.device)
            with torch.no_grad():
                x0_fake = G(x_tp1, t, z).float()
            x_fake = self.process.posterior_sample(x0_fake, x_tp1, t)
            if one_pass:  # x_tp1 carries no gradient here (G ran without)
                d_real, d_fake = D(torch.cat([x_t, x_fake]), torch.cat([t, t]), torch.cat([x_tp1, x_tp1]),
                                   batches=2).float().chunk(2)
            else:
                d_fake = D(x_fake, t, x_tp1).float()
            loss_fake = F.softplus(d_fake).mean()
        loss_real = F.softplus(-d_real).mean()
        total = loss_real + loss_fake
        return {"loss": total + out["r1"] if r1 else total, "loss_d": total, "loss_d_real": loss_real,
                "loss_d_fake": loss_fake, **out}

    def generator(self, G, D, x0: torch.Tensor, *, amp=_no_amp) -> dict[str, torch.Tensor]:
        """G's loss on fresh pairs: fool D (frozen by the caller) with the posterior sample of G's x0, plus
        ``lambda_rec`` x L1 between G's x0 and the clean x0. Returns the total ``loss`` and its parts."""
        t, _, x_tp1 = self._pairs(x0)
        z = torch.randn(x0.shape[0], self.nz, device=x0.device)
        with amp(G, D):
            x0_pred = G(x_tp1, t, z).float()
            x_fake = self.process.posterior_sample(x0_pred, x_tp1, t)
            adv = F.softplus(-D(x_fake, t, x_tp1).float()).mean()
        rec = F.l1_loss(x0_pred, x0)
        return {"loss": adv + self.lambda_rec * rec if self.lambda_rec > 0 else adv, "loss_g": adv, "loss_rec": rec}
