"""Dimensionality-varying diffusion (DVDP, Zhang et al., CVPR 2023) on a 2x2 average-pooling pyramid.

The construction (derived in docs/dvdp.md; the paper has no public code) is a DDPM whose state shrinks at
configurable turning points t_1 < ... < t_K. With D(x) = 2 AvgPool2(x) (orthonormal: D D^T = I),
U = D^T (nearest upsample / 2) and P = U D (projection onto 2x2-constant images), stage s (resolution H / 2^s)
holds the timesteps t_s < t <= t_{s+1} (t_0 = -1, t_{K+1} = T - 1) and its state is

    x_t = sqrt(ab_t) [P z + lam_t (I - P) z] + sqrt(1 - ab_t) eps,   z = D^s x0,  eps ~ N(0, I),

where lam_t = lam^{(s)}_t falls from 1 to 0 over a ramp ending at t_{s+1} (the last stage has no detail
attenuation). At lam = 0 the detail is pure noise, so D x_{t_{s+1}} is the next stage's state and the
reverse lift x = U y + sqrt(1 - ab) (I - P) z is exact. Coarse and detail components are independent
Gaussian diffusions with signal scales sqrt(ab_t) and sqrt(ab_t) lam_t and the same noise scale
sqrt(1 - ab_t); every reverse step is the exact DDPM posterior / DDIM step applied per component.

The network target (``prediction``): "epsilon" is eps_t = (x_t - sqrt(ab_t) z) / sqrt(1 - ab_t), the DDPM
epsilon with respect to the stage's clean image z; it equals the injected noise except inside the attenuation
ramps, where it also holds -sqrt(ab_t) (1 - lam_t) / sqrt(1 - ab_t) (I - P) z (the pure noise cannot
identify the detail of x0 at lam = 0). "sample" is z itself (values in [-2^s, 2^s]). One denoiser serves all
stages: ``model(x, t)`` sees x at its stage's resolution, and t determines the stage.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.ddpm import SPACINGS, DDPMConfig, GaussianDiffusion, _timestep_batch, timestep_sequence
from models.noise import randn_like

__all__ = [
    "DVDPConfig", "DVDPProcess", "down2", "up2", "project_coarse", "ramp_bounds", "attenuation_table",
    "dvdp_timestep_sequence", "ATTENUATION_SHAPES",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ATTENUATION_SHAPES = ("cosine", "linear")


# ---------------------------------------------------------------------------------------------------
# The orthonormal 2x pyramid
# ---------------------------------------------------------------------------------------------------

def down2(x: torch.Tensor) -> torch.Tensor:
    """D: (B, C, H, W) -> (B, C, H/2, W/2), 2 x the 2x2 block mean (the Haar LL band; D D^T = I)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"down2 needs even height and width, got {tuple(x.shape[-2:])}")
    return F.avg_pool2d(x, 2) * 2.0


def up2(y: torch.Tensor) -> torch.Tensor:
    """U = D^T: nearest 2x upsample divided by 2."""
    return y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) * 0.5


def project_coarse(x: torch.Tensor) -> torch.Tensor:
    """P = U D: the orthogonal projection onto images constant on 2x2 blocks (each block -> its mean)."""
    return up2(down2(x))


# ---------------------------------------------------------------------------------------------------
# Configuration and schedules
# ---------------------------------------------------------------------------------------------------

@dataclass
class DVDPConfig(DDPMConfig):
    turning_points: tuple[tuple[int, int], ...] = ((500, 2),)  # (t_k, factor): at t > t_k the state is 2x smaller
    attenuation_ramp: float = 0.5     # detail ramp length, fraction of (t_k - t_{k-1}) (t_0 = 0), ends at t_k
    attenuation_shape: str = "cosine"  # lam over the ramp: "cosine" (cos(pi/2 p)) | "linear" (1 - p)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.turning_points = tuple((int(tk), int(f)) for tk, f in self.turning_points)
        steps = [tk for tk, _ in self.turning_points]
        T = self.num_timesteps
        for tk, f in self.turning_points:
            if f != 2:
                raise ValueError(f"turning point ({tk}, {f}): only factor 2 (one 2x halving) is supported; "
                                 f"chain turning points for larger factors")
            if not 0 < tk < T - 1:
                raise ValueError(f"turning point t_k={tk} must lie in (0, T-1) = (0, {T - 1})")
        if any(a >= b for a, b in zip(steps, steps[1:])):
            raise ValueError(f"turning point steps must be strictly increasing, got {steps}")
        if not 0.0 < self.attenuation_ramp <= 1.0:
            raise ValueError(f"attenuation_ramp must be in (0, 1], got {self.attenuation_ramp}")
        if self.attenuation_shape not in ATTENUATION_SHAPES:
            raise ValueError(f"attenuation_shape must be one of {ATTENUATION_SHAPES}, got {self.attenuation_shape!r}")

    def ddpm_config(self) -> DDPMConfig:
        """The underlying DDPM settings (same beta schedule, target and clipping)."""
        return DDPMConfig(num_timesteps=self.num_timesteps, beta_schedule=self.beta_schedule,
                          beta_start=self.beta_start, beta_end=self.beta_end, max_beta=self.max_beta,
                          prediction=self.prediction, clip_sample=self.clip_sample)


def ramp_bounds(cfg: DVDPConfig) -> list[tuple[int, int]]:
    """(start_k, t_k) per turning point: lam = 1 at t <= start_k, 0 at t >= t_k. The ramp has
    r_k = max(1, round(attenuation_ramp * (t_k - t_{k-1}))) steps with t_0 = 0, so start_k >= t_{k-1}."""
    bounds, prev = [], 0
    for tk, _ in cfg.turning_points:
        r = max(1, round(cfg.attenuation_ramp * (tk - prev)))
        bounds.append((tk - r, tk))
        prev = tk
    return bounds


def attenuation_table(cfg: DVDPConfig) -> torch.Tensor:
    """(K, T) float64: row k is lam_t of the detail removed at turning point k, for every timestep t."""
    T = cfg.num_timesteps
    t = torch.arange(T, dtype=torch.float64)
    rows = []
    for start, tk in ramp_bounds(cfg):
        p = ((t - start) / (tk - start)).clamp(0.0, 1.0)
        lam = torch.cos(p * math.pi / 2) if cfg.attenuation_shape == "cosine" else 1.0 - p
        lam[t >= tk] = 0.0  # exact zero (cos(pi/2) is 6e-17 in floating point)
        rows.append(lam)
    return torch.stack(rows) if rows else torch.zeros(0, T, dtype=torch.float64)


def dvdp_timestep_sequence(num_timesteps: int, steps: int, spacing: str, turning_steps: tuple[int, ...]
                           ) -> list[int]:
    """``timestep_sequence(T, steps, spacing)`` with every turning step t_k included (decreasing).

    A sampler step may not cross a turning point: the low-resolution step lands exactly on t_k, the state is
    lifted there, and the next network call is at full resolution at t_k. Each t_k missing from the base
    sequence replaces the nearest entry that is neither the first one nor another t_k, so the length stays
    ``steps``. Needs steps >= K + 1 and a first entry above t_K (so that x_T lives in the last stage)."""
    K = len(turning_steps)
    if steps < K + 1:
        raise ValueError(f"{K} turning point(s) need at least {K + 1} sampling steps, got {steps}")
    seq = timestep_sequence(num_timesteps, steps, spacing)
    for tk in turning_steps:
        if tk in seq:
            continue
        candidates = [i for i in range(1, len(seq)) if seq[i] not in turning_steps]
        if not candidates:
            raise ValueError(f"cannot place turning step {tk} in {steps} steps")
        j = min(candidates, key=lambda i: (abs(seq[i] - tk), i))
        seq[j] = tk
    seq = sorted(seq, reverse=True)
    if K and seq[0] <= turning_steps[-1]:
        raise ValueError(f"the first sampling step {seq[0]} ({spacing!r} spacing, {steps} steps) is not above the "
                         f"last turning point {turning_steps[-1]}; use more steps or another spacing")
    return seq


# ---------------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------------

class DVDPProcess:
    """Forward process, training loss and samplers of the dimensionality-varying diffusion."""

    def __init__(self, cfg: DVDPConfig):
        self.cfg = cfg
        self.ddpm = GaussianDiffusion(cfg.ddpm_config())   # alpha_bar and timestep sampling
        self.num_timesteps = cfg.num_timesteps
        self.turning_steps: tuple[int, ...] = tuple(tk for tk, _ in cfg.turning_points)
        self.num_stages = len(self.turning_steps) + 1
        self.alphas_cumprod = self.ddpm.alphas_cumprod          # (T,) float64
        self.lambdas = attenuation_table(cfg)                   # (K, T) float64, one row per turning point
        # lam of stage s is row s (the detail removed at t_{s+1}); the last stage keeps everything.
        self._stage_lam = torch.cat([self.lambdas, torch.ones(1, cfg.num_timesteps, dtype=torch.float64)])
        self._tk = torch.tensor(self.turning_steps, dtype=torch.long)
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- stages ------------------------------------------------------------------------------------

    def stage_of(self, t: int | torch.Tensor) -> int | torch.Tensor:
        """Number of turning points strictly below t: stage s holds t_s < t <= t_{s+1}."""
        if isinstance(t, torch.Tensor):
            return (t.reshape(-1, 1).long() > self._tk.to(t.device).reshape(1, -1)).sum(1)
        return sum(int(t) > tk for tk in self.turning_steps)

    def resolution_at(self, t: int, image_size: int) -> int:
        """Side of the state (and of the network input) at timestep t for a full image of ``image_size``."""
        s = self.stage_of(int(t))
        if image_size % 2 ** s:
            raise ValueError(f"image_size {image_size} is not divisible by 2^{s}")
        return image_size // 2 ** s

    def state_shape(self, n: int, image_size: int, channels: int = 3) -> tuple[int, int, int, int]:
        """Shape of x_T: n images at the lowest resolution H / 2^K."""
        K = self.num_stages - 1
        if image_size % 2 ** K:
            raise ValueError(f"image_size {image_size} is not divisible by 2^{K} ({K} turning points)")
        return (n, channels, image_size // 2 ** K, image_size // 2 ** K)

    @staticmethod
    def to_stage(x: torch.Tensor, stage: int) -> torch.Tensor:
        """D^stage x: a full-resolution image in stage coordinates (orthonormal, values scale by 2^stage)."""
        for _ in range(stage):
            x = down2(x)
        return x

    @staticmethod
    def from_stage(y: torch.Tensor, stage: int) -> torch.Tensor:
        """U^stage y; for y = D^s x0 this is x0 averaged over 2^s x 2^s blocks (full resolution)."""
        for _ in range(stage):
            y = up2(y)
        return y

    def attenuation(self, t: int | torch.Tensor, stage: int) -> float | torch.Tensor:
        """lam^{(stage)}_t (float64): 1 in the last stage and before the ramp, 0 at and after t_{stage+1}."""
        if isinstance(t, torch.Tensor):
            return self._stage_lam[stage].to(t.device)[t.long()]
        return float(self._stage_lam[stage, int(t)])

    def _coef(self, stage: Optional[int], t: int | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """alpha_bar_t (stage None) or lam^{(stage)}_t, shaped (B, 1, ..., 1) in x's dtype and device
        (tables cached per device)."""
        tables = self._device_cache.get(x.device)
        if tables is None:
            tables = self._device_cache[x.device] = (self.alphas_cumprod.to(x.device), self._stage_lam.to(x.device))
        table = tables[0] if stage is None else tables[1][stage]
        t = torch.as_tensor(t, device=x.device).long().reshape(-1)
        if t.numel() == 1 and x.shape[0] != 1:
            t = t.expand(x.shape[0])
        return table[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    def _single_stage(self, t: int | torch.Tensor) -> int:
        stages = self.stage_of(torch.as_tensor(t).reshape(-1))
        if stages.numel() == 0 or (stages != stages[0]).any():
            raise ValueError(f"timesteps span several stages {sorted(set(stages.tolist()))}; "
                             f"group them per stage (see DVDPProcess.loss)")
        return int(stages[0])

    # -- forward process ---------------------------------------------------------------------------

    def signal(self, z: torch.Tensor, t: int | torch.Tensor, stage: int) -> torch.Tensor:
        """m_t = P z + lam_t (I - P) z for a clean stage image z (z itself in the last stage)."""
        if stage == self.num_stages - 1:
            return z
        lam = self._coef(stage, t, z)
        return z + (lam - 1.0) * (z - project_coarse(z))

    def q_mean_std(self, x0: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean sqrt(ab_t) m_t (at the stage's resolution) and std sqrt(1 - ab_t) of q(x_t | x0)."""
        s = self._single_stage(t)
        z = self.to_stage(x0, s)
        ab = self._coef(None, t, z)
        return ab.sqrt() * self.signal(z, t, s), (1 - ab).sqrt()

    def q_sample(self, x0: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The state x_t at its stage's resolution, from a full-resolution x0. Every t must lie in one stage.
        ``noise`` is full resolution (it enters as D^s noise, again N(0, I)) or already at the stage's."""
        s = self._single_stage(t)
        mean, std = self.q_mean_std(x0, t)
        if noise.shape != mean.shape:
            noise = self.to_stage(noise, s)
        if noise.shape != mean.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} fits neither x0 nor the stage-{s} state "
                             f"{tuple(mean.shape)}")
        return mean + std * noise

    # -- parameterisation --------------------------------------------------------------------------

    def clip_range(self, stage: int) -> float:
        """|D^s x0| <= 2^s for x0 in [-1, 1]: the x0 estimate of stage s is clipped to this."""
        return float(2 ** stage)

    def training_targets(self, z: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Target for clean stage image z and state x_t: (x_t - sqrt(ab_t) z) / sqrt(1 - ab_t) or z."""
        if self.cfg.prediction == "sample":
            return z
        ab = self._coef(None, t, x_t)
        return (x_t - ab.sqrt() * z) / (1 - ab).sqrt()

    def predict_x0(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, stage: int,
                   clip: Optional[bool] = None) -> torch.Tensor:
        """Estimate of the clean stage image D^s x0; clipped to [-2^s, 2^s] when ``clip``
        (default ``cfg.clip_sample``)."""
        if self.cfg.prediction == "epsilon":
            ab = self._coef(None, t, x_t)
            z = (x_t - (1 - ab).sqrt() * model_out) / ab.sqrt()
        else:
            z = model_out
        clip = self.cfg.clip_sample if clip is None else clip
        c = self.clip_range(stage)
        return z.clamp(-c, c) if clip else z

    def predict_noise(self, z: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        """The injected noise implied by a clean-image estimate: (x_t - sqrt(ab_t) m_t(z)) / sqrt(1 - ab_t)."""
        ab = self._coef(None, t, x_t)
        return (x_t - ab.sqrt() * self.signal(z, t, stage)) / (1 - ab).sqrt()

    # -- training ----------------------------------------------------------------------------------

    def loss(self, model: Denoiser, x0: torch.Tensor, t: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(MSE, x0_hat). t ~ U{0..T-1} and full-resolution noise are drawn when not given.

        The batch is split by stage and the network is called once per stage present, at that stage's
        resolution. The MSE is the mean over samples of each sample's mean squared error over its own
        elements (every sample counts equally whatever its resolution). x0_hat is the full-resolution
        U^s(estimate of D^s x0), block-constant for stages s > 0, clipped when ``cfg.clip_sample``."""
        B = x0.shape[0]
        if t is None:
            t = self.ddpm.sample_timesteps(B, x0.device, generator)
        t = torch.as_tensor(t, device=x0.device).long().reshape(-1)
        if t.numel() == 1 and B != 1:
            t = t.expand(B)
        if noise is None:
            noise = randn_like(x0, generator)
        stages = self.stage_of(t)
        total = x0.new_zeros(())
        x0_hat = torch.zeros_like(x0)
        for s in sorted(set(stages.tolist())):
            idx = (stages == s).nonzero().squeeze(1)
            ts = t[idx]
            z = self.to_stage(x0[idx], s)
            x_t = self.q_sample(x0[idx], ts, noise[idx])
            out = model(x_t, ts)
            target = self.training_targets(z, x_t, ts)
            total = total + (out - target).pow(2).flatten(1).mean(1).sum()
            x0_hat = x0_hat.index_copy(0, idx, self.from_stage(self.predict_x0(out, x_t, ts, s), s))
        return total / B, x0_hat

    # -- sampling ----------------------------------------------------------------------------------

    def timesteps(self, sampler: str = "ddim", steps: Optional[int] = None, spacing: str = "linear") -> list[int]:
        """The timesteps the sampler visits, one network call each (all T for "ddpm")."""
        T = self.num_timesteps
        if sampler == "ddpm":
            if steps is not None and steps != T:
                raise ValueError(f"DDPM ancestral sampling uses all T={T} steps; got steps={steps} (use DDIM)")
            return list(range(T - 1, -1, -1))
        if sampler == "ddim":
            if spacing not in SPACINGS:
                raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
            return dvdp_timestep_sequence(T, 50 if steps is None else steps, spacing, self.turning_steps)
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")

    def _scales(self, t: int, stage: int) -> tuple[float, float, float]:
        """(coarse signal scale, detail signal scale, noise scale) at t; (1, 1, 0) at t = -1."""
        if t < 0:
            return 1.0, 1.0, 0.0
        ab = float(self.alphas_cumprod[t])
        return math.sqrt(ab), math.sqrt(ab) * float(self._stage_lam[stage, t]), math.sqrt(1.0 - ab)

    @staticmethod
    def _step_coefs(a_t: float, a_u: float, s_t: float, s_u: float, ddim: bool, eta: float
                    ) -> tuple[float, float, float, float]:
        """One component's step t -> u as x_u = cx x_t + c0 z_hat + ce eps_hat + cz noise, from
        q(x_t | z) = N(a_t z, s_t^2) with SNR a^2 / s^2 non-increasing in t and a_u > 0.

        With r = SNR_t / SNR_u (0 when s_u = 0), the posterior is N(sqrt(r) s_u / s_t x_t + a_u (1 - r) z,
        s_u^2 (1 - r)); DDIM is x_u = a_u z + sqrt(s_u^2 - sigma^2) eps + sigma noise with
        sigma = eta s_u sqrt(1 - r), which for eta = 1 has the posterior's mean and variance."""
        if a_u <= 0.0:
            raise ValueError("a reverse step cannot end where the component has no signal")
        r = 0.0 if s_u == 0.0 else min((a_t * a_t * s_u * s_u) / (s_t * s_t * a_u * a_u), 1.0)
        if ddim:
            sigma = eta * s_u * math.sqrt(1.0 - r)
            return 0.0, a_u, math.sqrt(max(s_u * s_u - sigma * sigma, 0.0)), sigma
        return math.sqrt(r) * s_u / s_t, a_u * (1.0 - r), 0.0, s_u * math.sqrt(1.0 - r)

    def _lift(self, y: torch.Tensor, t: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Turning point t: y (stage s) -> U y + sqrt(1 - ab_t) (z - P z) (stage s - 1); exact because the
        detail of the stage s - 1 state at t is pure noise (lam = 0) independent of D x_t = y."""
        z = randn_like(up2(y), generator)
        return up2(y) + math.sqrt(1.0 - float(self.alphas_cumprod[t])) * (z - project_coarse(z))

    @torch.no_grad()
    def sample(self, model: Denoiser, x_T: torch.Tensor, *, sampler: str = "ddpm", steps: Optional[int] = None,
               eta: float = 0.0, spacing: str = "linear", generator: Optional[torch.Generator] = None,
               callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
        """Draw full-resolution images from x_T (at the lowest resolution, ``state_shape``).

        ``sampler="ddpm"``: ancestral steps with the per-component posterior over all T timesteps (eta unused,
        must stay 0). ``sampler="ddim"``: DDIM over ``timesteps("ddim", steps, spacing)`` (default 50 steps),
        per-component sigma(eta). Each step calls the network once, at the resolution of its timestep's stage
        (NFE = steps); a step that lands on a turning point is followed by the lift (no network call), which
        draws fresh noise in the complement, so DDIM with eta = 0 is deterministic only within a stage.
        ``callback`` receives {"i", "t", "t_next", "stage", "x" (state at t_next, after a lift), "x0_hat"
        (the clipped estimate of D^s x0), "x_before_lift" (the low-resolution state at a turning point, else
        None)} after every step."""
        if sampler == "ddpm" and eta != 0.0:
            raise ValueError("eta applies to DDIM only (DDPM ancestral sampling is DDIM's eta = 1 at all steps)")
        seq = self.timesteps(sampler, steps, spacing)
        K = self.num_stages - 1
        if seq and self.stage_of(seq[0]) != K:
            raise ValueError(f"the first timestep {seq[0]} is not in the last stage")
        ddim = sampler == "ddim"
        x = x_T
        for i, t in enumerate(seq):
            u = seq[i + 1] if i + 1 < len(seq) else -1
            s = self.stage_of(t)
            tb = _timestep_batch(t, x)
            out = model(x, tb)
            z_raw = self.predict_x0(out, x, tb, s, clip=False)
            z_hat = self.predict_x0(out, x, tb, s)
            eps_hat = self.predict_noise(z_raw, x, tb, s) if ddim else None
            ac_t, ad_t, s_t = self._scales(t, s)
            ac_u, ad_u, s_u = self._scales(u, s)   # u = t_s at a turning point: lam^{(s)} is 1 there
            coarse = self._step_coefs(ac_t, ac_u, s_t, s_u, ddim, eta)
            detail = self._step_coefs(ad_t, ad_u, s_t, s_u, ddim, eta) if s < K else coarse
            noise = randn_like(x, generator) if coarse[3] > 0 or detail[3] > 0 else None
            terms = (x, z_hat, eps_hat, noise)
            x = _combine(coarse, terms)
            if detail != coarse:                     # P (coarse update) + (I - P) (detail update)
                x_d = _combine(detail, terms)
                x = x_d + project_coarse(x - x_d)
            before = None
            if u >= 0 and self.stage_of(u) < s:      # landed on the turning point t_s: lift to stage s - 1
                before, x = x, self._lift(x, u, generator)
            if callback is not None:
                callback({"i": i, "t": t, "t_next": u, "stage": s, "x": x, "x0_hat": z_hat,
                          "x_before_lift": before})
        return x


def _combine(coefs: tuple[float, float, float, float], terms: tuple) -> torch.Tensor:
    """sum_i coefs[i] * terms[i] over the non-zero coefficients (terms: x_t, z_hat, eps_hat, noise)."""
    out = None
    for c, term in zip(coefs, terms):
        if c:
            out = c * term if out is None else out + c * term
    return out if out is not None else torch.zeros_like(terms[0])
