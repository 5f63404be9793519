"""DVDP: the pyramid algebra, the attenuation schedule, stages, the forward moments and the samplers.

Expected values are computed here independently of models/dvdp.py's D / U / P: in orthonormal Haar
coordinates (models.wavelet.haar_dwt), where the coarse component is the LL band and the detail is the other
three bands, so the forward process at stage s reads LL ~ N(sqrt(ab) LL(z), 1 - ab) and
detail ~ N(sqrt(ab) lam detail(z), 1 - ab) with z = LL^s(x0).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.ddpm import DDPMConfig, GaussianDiffusion, ddim_sample, ddpm_sample
from models.dvdp import (DVDPConfig, DVDPProcess, attenuation_table, down2, dvdp_timestep_sequence, project_coarse,
                         up2)
from models.unet import UNet, UNetConfig
from models.wavelet import haar_dwt, haar_idwt


pytestmark = pytest.mark.usefixtures("one_thread")


ONE = ((40, 2),)
CHAIN = ((40, 2), (70, 2))      # 8 -> 4 -> 2 on the 8x8 test images


def small(turning_points=CHAIN, **kw) -> DVDPProcess:
    return DVDPProcess(DVDPConfig(num_timesteps=100, beta_schedule="cosine", turning_points=turning_points, **kw))


def ll(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """LL^levels via the Haar transform (the independent reference for D^levels)."""
    for _ in range(levels):
        x = haar_dwt(x)[:, : x.shape[1]]
    return x


def expected_haar_mean(proc: DVDPProcess, x0: torch.Tensor, t: int) -> torch.Tensor:
    """Mean of the stage state at t in Haar coordinates, from the closed form (not from the module)."""
    tks = [tk for tk, _ in proc.cfg.turning_points]
    s = sum(t > tk for tk in tks)
    ab = float(proc.alphas_cumprod[t])
    w = haar_dwt(ll(x0, s))
    C = x0.shape[1]
    lam = float(proc.lambdas[s, t]) if s < len(tks) else 1.0
    w[:, C:] *= lam
    return math.sqrt(ab) * w


def oracle(proc: DVDPProcess, x0: torch.Tensor):
    """A denoiser that knows x0: returns the exact target for the state it is given."""
    tks = [tk for tk, _ in proc.cfg.turning_points]

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        s = sum(int(t[0]) > tk for tk in tks)
        assert x.shape[-1] == x0.shape[-1] // 2 ** s, (x.shape, int(t[0]))
        z = ll(x0, s).expand_as(x)
        if proc.cfg.prediction == "sample":
            return z.clone()
        ab = proc.alphas_cumprod.to(x.dtype)[t].reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * z) / (1 - ab).sqrt()
    return model


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t):
        self.calls.append((tuple(x.shape), int(t[0])))
        return self.fn(x, t)


# -- the orthonormal pyramid -----------------------------------------------------------------------

def test_pyramid_is_orthonormal():
    n = 2 * 6 * 6
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 2, 6, 6)
    D = down2(basis).reshape(n, -1).T                       # (18, 72): column j = D e_j
    U = up2(torch.eye(18, dtype=torch.float64).reshape(18, 2, 3, 3)).reshape(18, -1).T
    P = project_coarse(basis).reshape(n, -1).T
    torch.testing.assert_close(D @ D.T, torch.eye(18, dtype=torch.float64))       # D D^T = I
    torch.testing.assert_close(U, D.T)                                              # U = D^T
    torch.testing.assert_close(P @ P, P)                                            # idempotent
    torch.testing.assert_close(P, P.T)                                              # symmetric
    assert round(torch.trace(P).item()) == 18                                       # rank n / 4
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    px = project_coarse(x)
    total = x.pow(2).sum((1, 2, 3))
    torch.testing.assert_close(total, px.pow(2).sum((1, 2, 3)) + (x - px).pow(2).sum((1, 2, 3)))
    assert (px * (x - px)).sum().abs().item() < 1e-10
    # D is the Haar LL band; U is the inverse Haar transform with zero detail; P averages 2x2 blocks.
    torch.testing.assert_close(down2(x), haar_dwt(x)[:, :3])
    y = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(up2(y), haar_idwt(torch.cat([y, torch.zeros(5, 9, 4, 4, dtype=y.dtype)], 1)))
    torch.testing.assert_close(px[..., 0::2, 0::2], x.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))


# -- configuration and the attenuation schedule ---------------------------------------------------

def test_config_validation():
    cfg = DVDPConfig(turning_points=[[400, 2], [700, 2]])     # YAML-style lists are accepted
    assert cfg.turning_points == ((400, 2), (700, 2))
    assert cfg.ddpm_config() == DDPMConfig()
    for bad in (((500, 4),), ((700, 2), (400, 2)), ((400, 2), (400, 2)), ((0, 2),), ((999, 2),), ((1000, 2),)):
        with pytest.raises(ValueError):
            DVDPConfig(turning_points=bad)
    for kw in ({"attenuation_ramp": 0.0}, {"attenuation_ramp": 1.5}, {"attenuation_shape": "step"},
               {"prediction": "v"}):
        with pytest.raises(ValueError):
            DVDPConfig(**kw)


@pytest.mark.parametrize("shape", ("cosine", "linear"))
@pytest.mark.parametrize("ramp", (0.5, 1.0, 0.01))
def test_attenuation_schedule(shape, ramp):
    cfg = DVDPConfig(turning_points=((400, 2), (700, 2)), attenuation_ramp=ramp, attenuation_shape=shape)
    lam = attenuation_table(cfg).numpy()
    assert lam.shape == (2, 1000)
    prev = 0
    for k, (tk, _) in enumerate(cfg.turning_points):
        r = max(1, round(ramp * (tk - prev)))
        start = tk - r
        assert start >= prev
        np.testing.assert_array_equal(lam[k, : start + 1], 1.0)         # 1 up to the ramp's start
        np.testing.assert_array_equal(lam[k, tk:], 0.0)                 # 0 at and after t_k
        assert (lam[k, :tk] > 0).all()                                  # a signal remains before t_k
        assert (np.diff(lam[k, start: tk + 1]) < 0).all()               # strictly falling over the ramp
        assert (np.diff(lam[k]) <= 0).all() and lam[k].max() <= 1.0
        mid = start + r / 2
        if r % 2 == 0:
            want = math.cos(math.pi / 4) if shape == "cosine" else 0.5
            assert lam[k, int(mid)] == pytest.approx(want, abs=1e-12)
        prev = tk
    # The default: a cosine ramp over the second half of each stage's span.
    proc = DVDPProcess(DVDPConfig(turning_points=((400, 2), (700, 2))))
    assert proc.attenuation(200, 0) == 1.0 and proc.attenuation(300, 0) == pytest.approx(math.cos(math.pi / 4))
    assert proc.attenuation(400, 0) == 0.0 and proc.attenuation(550, 1) == 1.0 and proc.attenuation(700, 1) == 0.0
    assert proc.attenuation(999, 2) == 1.0
    torch.testing.assert_close(proc.attenuation(torch.tensor([200, 300]), 0),
                               torch.tensor([1.0, math.cos(math.pi / 4)], dtype=torch.float64))


# -- stages, shapes and the forward process --------------------------------------------------------

def test_stages_and_shapes():
    torch.manual_seed(0)
    proc = DVDPProcess(DVDPConfig(turning_points=((400, 2), (700, 2))))
    cases = {0: 0, 399: 0, 400: 0, 401: 1, 700: 1, 701: 2, 999: 2}
    for t, s in cases.items():
        assert proc.stage_of(t) == s
        assert proc.resolution_at(t, 32) == 32 // 2 ** s
    torch.testing.assert_close(proc.stage_of(torch.tensor(list(cases))), torch.tensor(list(cases.values())))
    assert proc.state_shape(5, 32) == (5, 3, 8, 8) and proc.state_shape(2, 32, channels=1) == (2, 1, 8, 8)
    assert DVDPProcess(DVDPConfig()).state_shape(4, 32) == (4, 3, 16, 16)
    assert DVDPProcess(DVDPConfig(turning_points=())).state_shape(4, 32) == (4, 3, 32, 32)
    with pytest.raises(ValueError):
        proc.state_shape(1, 30)
    x0 = torch.rand(3, 3, 32, 32) * 2 - 1
    for t, s in cases.items():
        assert proc.q_sample(x0, t, torch.randn_like(x0)).shape == (3, 3, 32 // 2 ** s, 32 // 2 ** s)
    with pytest.raises(ValueError):
        proc.q_sample(x0, torch.tensor([10, 500, 900]), torch.randn_like(x0))   # mixed stages


def test_forward_consistency_at_turning_points():
    """D of the stage s-1 state at t_k equals the stage-s form at t_k (lam = 0), for the same noise; and for
    x0 constant on 2^K x 2^K blocks the attenuation has nothing to act on: DVDP is D^s of the plain DDPM."""
    proc = small()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for k, tk in enumerate((40, 70)):
        below = proc.q_sample(x0, tk, noise)                         # stage k, detail fully attenuated
        ab = float(proc.alphas_cumprod[tk])
        want = math.sqrt(ab) * ll(x0, k + 1) + math.sqrt(1 - ab) * ll(noise, k + 1)
        torch.testing.assert_close(down2(below), want)
        torch.testing.assert_close(below - project_coarse(below), math.sqrt(1 - ab) * (
            ll(noise, k) - project_coarse(ll(noise, k))))            # the detail is pure noise at t_k
    blocks = up2(up2(torch.rand(4, 2, 2, 2, generator=g, dtype=torch.float64) * 2 - 1)) * 4   # constant on 4x4
    ddpm = GaussianDiffusion(DDPMConfig(num_timesteps=100, beta_schedule="cosine"))
    for t in (0, 20, 35, 40, 41, 60, 70, 71, 99):
        s = proc.stage_of(t)
        torch.testing.assert_close(proc.q_sample(blocks, t, noise), ll(ddpm.q_sample(blocks, t, noise), s))


def test_forward_moments_monte_carlo():
    proc = small()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    N = 20_000
    for t in (0, 15, 25, 30, 39, 40, 41, 58, 65, 70, 71, 99):
        x = proc.q_sample(x0.expand(N, -1, -1, -1), t, torch.randn(N, 1, 8, 8, generator=g, dtype=torch.float64))
        w = haar_dwt(x) if x.shape[-1] > 1 else x
        mu = expected_haar_mean(proc, x0, t)
        var = 1 - float(proc.alphas_cumprod[t])
        z_mean = (w.mean(0) - mu[0]) / math.sqrt(var / N)
        z_var = (w.var(0) / var - 1) / math.sqrt(2 / (N - 1))
        # 64 values per t and 12 t: |z| < 6 has a family-wise false-alarm rate below 1e-5.
        assert z_mean.abs().max() < 6 and z_var.abs().max() < 6, (t, z_mean.abs().max(), z_var.abs().max())


# -- training loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", ("epsilon", "sample"))
def test_loss_groups_stages(prediction):
    proc = small(prediction=prediction, clip_sample=False)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(9, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 30, 40, 41, 55, 70, 71, 99, 20])

    # An oracle that knows each sample's x0: zero loss, x0_hat = the block average of x0 at the stage's scale.
    def per_sample_oracle(x, tt):
        idx = torch.cat([torch.nonzero(t == v).reshape(-1)[:1] for v in tt.tolist()])
        s = proc.stage_of(int(tt[0]))
        z = ll(x0[idx], s)
        if prediction == "sample":
            return z
        ab = proc.alphas_cumprod[tt].reshape(-1, 1, 1, 1)
        return (x - ab.sqrt() * z) / (1 - ab).sqrt()
    net = Recorder(per_sample_oracle)
    mse, x0_hat = proc.loss(net, x0, t=t, noise=noise)
    assert mse.item() < 1e-20
    assert sorted(net.calls) == sorted([((4, 2, 8, 8), 0), ((3, 2, 4, 4), 41), ((2, 2, 2, 2), 71)])
    for i, ti in enumerate(t.tolist()):
        s = proc.stage_of(ti)
        want = ll(x0[i:i + 1], s)
        for _ in range(s):
            want = haar_idwt(torch.cat([want, torch.zeros(1, 6, *want.shape[-2:], dtype=want.dtype)], 1))
        torch.testing.assert_close(x0_hat[i:i + 1], want)
    # A zero network: each sample's mean squared target, averaged over samples.
    mse0, _ = proc.loss(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=noise)
    want0 = []
    for i, ti in enumerate(t.tolist()):
        s = proc.stage_of(ti)
        z = ll(x0[i:i + 1], s)
        ab = float(proc.alphas_cumprod[ti])
        target = z if prediction == "sample" else (proc.q_sample(x0[i:i + 1], ti, noise[i:i + 1])
                                                   - math.sqrt(ab) * z) / math.sqrt(1 - ab)
        want0.append(target.pow(2).mean().item())
    assert mse0.item() == pytest.approx(float(np.mean(want0)), rel=1e-12)
    # Drawn t and noise; gradients flow to a real network at every stage's resolution.
    unet = UNet(UNetConfig(in_channels=2, image_size=8, block_out_channels=(8, 16), attention_levels=(False, True),
                           layers_per_block=1, norm_groups=4, attention_head_dim=8, dropout=0.0)).double()
    loss, _ = proc.loss(unet, x0, generator=torch.Generator().manual_seed(4))
    loss.backward()
    assert all(p.grad is not None for p in unet.parameters())


def test_epsilon_target_is_the_noise_outside_the_ramps():
    proc = small()
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    for t in (0, 10, 20, 30, 39, 40, 41, 60, 70, 71, 99):
        s = proc.stage_of(t)
        x_t = proc.q_sample(x0, t, noise)
        z, n = ll(x0, s), ll(noise, s)
        target = proc.training_targets(z, x_t, torch.tensor([t]))
        lam = float(proc.lambdas[s, t]) if s < 2 else 1.0
        ab = float(proc.alphas_cumprod[t])
        detail = z - project_coarse(z)
        torch.testing.assert_close(target, n - math.sqrt(ab) * (1 - lam) / math.sqrt(1 - ab) * detail)
        if lam == 1.0:
            torch.testing.assert_close(target, n)
        # x0 is recoverable from the target at every t, including t_k where the detail carries no signal.
        torch.testing.assert_close(proc.predict_x0(target, x_t, torch.tensor([t]), s, clip=False), z)


# -- samplers ---------------------------------------------------------------------------------------

def test_timestep_sequences():
    tks = (40, 70)
    for spacing in ("linear", "quadratic", "leading"):
        for steps in (3, 4, 7, 10, 25, 100):
            try:
                seq = dvdp_timestep_sequence(100, steps, spacing, tks)
            except ValueError:
                assert spacing == "leading" and steps <= 3
                continue
            assert len(seq) == steps and len(set(seq)) == steps
            assert all(a > b for a, b in zip(seq, seq[1:])) and set(tks) <= set(seq)
            assert seq[0] > 70 and seq[-1] >= 0
    assert dvdp_timestep_sequence(100, 10, "leading", tks) == list(range(90, -1, -10))   # already contains t_k
    assert dvdp_timestep_sequence(100, 2, "linear", (40,)) == [99, 40]
    assert dvdp_timestep_sequence(1000, 10, "linear", (500,)) == [999, 888, 777, 666, 500, 444, 333, 222, 111, 0]
    with pytest.raises(ValueError):
        dvdp_timestep_sequence(100, 2, "linear", tks)


class Checker:
    """Callback comparing the sampler's states with q(x_t | x0) in Haar coordinates: per-element mean and
    variance z-scores, and the pooled variance of the coarse (LL) and detail bands. Records the worst."""

    def __init__(self, proc: DVDPProcess, x0: torch.Tensor, N: int):
        self.proc, self.x0, self.N = proc, x0, N
        self.worst, self.visited, self.lift_error = 0.0, [], 0.0

    def check(self, x: torch.Tensor, t: int, stage: int) -> None:
        proc, N = self.proc, self.N
        assert x.shape[-1] == self.x0.shape[-1] // 2 ** stage
        w = haar_dwt(x)
        tks = proc.turning_steps
        s = stage
        ab = float(proc.alphas_cumprod[t])
        mu = haar_dwt(ll(self.x0, s))
        lam = float(proc.lambdas[s, t]) if s < len(tks) else 1.0
        mu[:, x.shape[1]:] *= lam
        mu = math.sqrt(ab) * mu
        var = 1 - ab
        r = w - mu
        z_mean = r.mean(0) / math.sqrt(var / N)
        z_var = (r.pow(2).mean(0) / var - 1) / math.sqrt(2 / N)
        C = x.shape[1]
        pooled = [r[:, :C], r[:, C:]]
        z_pool = [(p.pow(2).mean() / var - 1) / math.sqrt(2 / p.numel()) for p in pooled]
        self.worst = max(self.worst, z_mean.abs().max().item(), z_var.abs().max().item(),
                         *[abs(z.item()) for z in z_pool])
        self.visited.append((t, stage))

    def __call__(self, info: dict) -> None:
        u = info["t_next"]
        if u < 0:
            return
        self.check(info["x"], u, self.proc.stage_of(u))
        if info["x_before_lift"] is not None:
            self.check(info["x_before_lift"], u, self.proc.stage_of(u) + 1)
            err = (down2(info["x"]) - info["x_before_lift"]).abs().max().item()
            self.lift_error = max(self.lift_error, err)   # the lift must keep D x = y exactly


def run_oracle_chain(proc, sampler, steps=None, eta=0.0, N=4000, seed=6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2 - 1
    xb = x0.expand(N, -1, -1, -1)
    T = proc.num_timesteps
    x_T = proc.q_sample(xb, T - 1, torch.randn(N, 1, 8, 8, generator=g, dtype=torch.float64))
    checker = Checker(proc, x0, N)
    out = proc.sample(oracle(proc, x0), x_T, sampler=sampler, steps=steps, eta=eta, generator=g, callback=checker)
    return out, x0, checker


@pytest.mark.parametrize("prediction", ("epsilon", "sample"))
@pytest.mark.parametrize("turning_points", (ONE, CHAIN))
def test_ddpm_oracle_chain_has_the_forward_marginals(prediction, turning_points):
    """THE key test. With the oracle and x_T ~ q(x_T | x0), every state of the ancestral chain, at every t,
    before and after each lift, is distributed as the forward process. N = 4000 chains of 64 values; about
    100 steps x (64 + 64 + 2) z-scores: |z| < 6 gives a family-wise false-alarm rate below 1e-4, while the
    errors this guards against (plain-DDPM steps through the ramp, an unprojected or unscaled lift noise)
    give z-scores in the tens to thousands (test_marginal_checker_catches_wrong_samplers)."""
    proc = small(turning_points, prediction=prediction)
    out, x0, checker = run_oracle_chain(proc, "ddpm")
    assert checker.worst < 6, checker.worst
    assert checker.lift_error < 1e-12 and len(checker.visited) == 99 + len(turning_points)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-9, rtol=0)


@pytest.mark.parametrize("eta", (0.0, 0.5, 1.0))
def test_ddim_oracle_chain_has_the_forward_marginals(eta):
    proc = small(CHAIN)
    out, x0, checker = run_oracle_chain(proc, "ddim", steps=12, eta=eta)
    assert checker.worst < 6 and checker.lift_error < 1e-12, (checker.worst, checker.lift_error)
    assert {(40, 0), (40, 1), (70, 1), (70, 2)} <= set(checker.visited)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-9, rtol=0)


def test_marginal_checker_catches_wrong_samplers():
    """The key test can fail: a sampler that ignores the attenuation (plain DDPM steps on the whole state)
    or lifts with unprojected or unscaled noise is flagged."""
    class NoAttenuationInReverse(DVDPProcess):
        def _scales(self, t, stage):
            a, _, s = super()._scales(t, stage)
            return a, a, s

    class UnprojectedLift(DVDPProcess):
        def _lift(self, y, t, generator):
            return up2(y) + math.sqrt(1 - float(self.alphas_cumprod[t])) * torch.randn(
                up2(y).shape, generator=generator, dtype=y.dtype)

    class UnscaledLift(DVDPProcess):
        def _lift(self, y, t, generator):
            z = torch.randn(up2(y).shape, generator=generator, dtype=y.dtype)
            return up2(y) + (z - project_coarse(z))

    cfg = DVDPConfig(num_timesteps=100, beta_schedule="cosine", turning_points=ONE)
    for cls in (NoAttenuationInReverse, UnprojectedLift, UnscaledLift):
        _, _, checker = run_oracle_chain(cls(cfg), "ddpm", N=2000)
        assert checker.worst > 20, (cls.__name__, checker.worst)


@pytest.mark.parametrize("prediction", ("epsilon", "sample"))
def test_ddim_eta0_oracle_moves_along_the_forward_path(prediction):
    """Exactness: with the oracle, DDIM (eta = 0) keeps the noise fixed. Each state equals
    sqrt(ab_u) m_u(z) + sqrt(1 - ab_u) e with one e per stage, the lift keeps D e and only adds detail
    noise, and the output is x0. Checked to float64 precision, for several spacings and step counts."""
    proc = small(CHAIN, prediction=prediction)
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    for spacing, steps in (("linear", 5), ("quadratic", 9), ("leading", 10), ("linear", 100)):
        x_T = torch.randn(proc.state_shape(3, 8, channels=2), generator=g, dtype=torch.float64)
        noises = {}

        def implied_noise(x, u, s):
            ab = float(proc.alphas_cumprod[u])
            z = ll(x0, s)
            lam = float(proc.lambdas[s, u]) if s < 2 else 1.0
            m = project_coarse(z) + lam * (z - project_coarse(z)) if s < 2 else z
            return (x - math.sqrt(ab) * m) / math.sqrt(1 - ab)

        noises[2] = [x_T]

        def cb(info):
            u = info["t_next"]
            if u < 0:
                return
            s = proc.stage_of(u)
            if info["x_before_lift"] is not None:
                e_low = implied_noise(info["x_before_lift"], u, s + 1)
                torch.testing.assert_close(e_low, noises[s + 1][0], rtol=0, atol=1e-8)
                e = implied_noise(info["x"], u, s)
                torch.testing.assert_close(down2(e), e_low, rtol=0, atol=1e-8)
                noises[s] = [e]
            else:
                torch.testing.assert_close(implied_noise(info["x"], u, s), noises[s][0], rtol=0, atol=1e-8)

        # x_T is the state at seq[0] itself; its implied noise is fixed by the first step.
        seq = proc.timesteps("ddim", steps, spacing)
        noises[2] = [implied_noise(x_T, seq[0], 2)]
        out = proc.sample(oracle(proc, x0), x_T, sampler="ddim", steps=steps, spacing=spacing, generator=g,
                          callback=cb)
        assert set(noises) == {0, 1, 2}
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def test_last_stage_matches_the_plain_ddpm_samplers():
    """The last stage has no attenuation: its states are those of models.ddpm's samplers on the same network
    (DDIM with a sequence that already holds the turning points; DDPM ancestral with the same generator),
    up to and including the low-resolution state at the last turning point."""
    proc = small(CHAIN, clip_sample=False)
    ddpm = GaussianDiffusion(DDPMConfig(num_timesteps=100, beta_schedule="cosine", clip_sample=False))
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 0.3

    def net(x, t):
        return torch.einsum("oc,bchw->bohw", w, x) + torch.sin(t.to(x.dtype) / 7)[:, None, None, None]
    x_T = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    for sampler, kw in (("ddim", {"steps": 20, "spacing": "leading", "eta": 0.3}), ("ddpm", {})):
        mine, ref = {}, {}
        proc.sample(net, x_T, sampler=sampler, generator=torch.Generator().manual_seed(11),
                    callback=lambda i: mine.__setitem__(i["t_next"], i["x_before_lift"] if i["t_next"] == 70
                                                        else i["x"]), **kw)
        fn = ddim_sample if sampler == "ddim" else ddpm_sample
        fn(ddpm, net, x_T, generator=torch.Generator().manual_seed(11),
           callback=lambda i: ref.__setitem__(i["t_next"], i["x"]), **kw)
        last = [u for u in mine if u >= 70]
        assert len(last) >= 3
        for u in last:
            torch.testing.assert_close(mine[u], ref[u], rtol=1e-12, atol=1e-12)


def test_ddim_eta1_all_steps_is_ddpm():
    """DDIM's per-component sigma(eta = 1) reproduces the per-component posterior of the ancestral sampler,
    through the attenuation ramps and the lifts (same generator, any network)."""
    proc = small(CHAIN, clip_sample=False)
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 0.3

    def net(x, t):
        return torch.einsum("oc,bchw->bohw", w, x) + torch.cos(t.to(x.dtype) / 5)[:, None, None, None]
    x_T = torch.randn(2, 2, 2, 2, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    a = proc.sample(net, x_T, sampler="ddpm", generator=torch.Generator().manual_seed(14))
    b = proc.sample(net, x_T, sampler="ddim", steps=100, eta=1.0, generator=torch.Generator().manual_seed(14))
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
    c = proc.sample(net, x_T, sampler="ddim", steps=100, eta=0.0, generator=torch.Generator().manual_seed(14))
    assert (c - a).abs().max().item() > 1e-2


def test_nfe_and_call_resolutions():
    torch.manual_seed(0)
    proc = small(CHAIN)
    x_T = torch.randn(proc.state_shape(2, 8))
    net = Recorder(lambda x, t: 0.1 * x)
    out = proc.sample(net, x_T, sampler="ddpm", generator=torch.Generator().manual_seed(15))
    assert out.shape == (2, 3, 8, 8) and len(net.calls) == 100
    assert [t for _, t in net.calls] == list(range(99, -1, -1))
    for spacing in ("linear", "quadratic", "leading"):
        for steps in (4, 7, 20, 100):
            net.calls = []
            out = proc.sample(net, x_T, sampler="ddim", steps=steps, spacing=spacing, eta=0.5,
                              generator=torch.Generator().manual_seed(16))
            assert len(net.calls) == steps and out.shape == (2, 3, 8, 8)
            assert [t for _, t in net.calls] == proc.timesteps("ddim", steps, spacing)
            for shape, t in net.calls:                       # each call at its stage's (cheaper) resolution
                r = proc.resolution_at(t, 8)
                assert shape == (2, 3, r, r)
            sizes = {shape[-1] for shape, _ in net.calls}
            assert sizes == {2, 4, 8}
    with pytest.raises(ValueError):
        proc.sample(net, x_T, sampler="ddpm", steps=10)
    with pytest.raises(ValueError):
        proc.sample(net, x_T, sampler="ddpm", eta=0.5)
    with pytest.raises(ValueError):
        proc.sample(net, x_T, sampler="ddim", steps=2)         # two turning points need 3 steps
    a = proc.sample(net, x_T, sampler="ddim", steps=7, generator=torch.Generator().manual_seed(17))
    b = proc.sample(net, x_T, sampler="ddim", steps=7, generator=torch.Generator().manual_seed(17))
    c = proc.sample(net, x_T, sampler="ddim", steps=7, generator=torch.Generator().manual_seed(18))
    assert torch.equal(a, b) and not torch.equal(a, c)      # eta = 0: the lifts' noise still varies


def test_tiny_unet_samples_at_every_stage():
    proc = small(CHAIN)
    unet = UNet(UNetConfig(in_channels=1, image_size=8, block_out_channels=(8, 16), attention_levels=(False, True),
                           layers_per_block=1, norm_groups=4, attention_head_dim=8, dropout=0.0)).eval()
    x_T = torch.randn(proc.state_shape(2, 8, channels=1), generator=torch.Generator().manual_seed(19))
    out = proc.sample(unet, x_T, sampler="ddim", steps=6, generator=torch.Generator().manual_seed(20))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all() and out.abs().max() <= 1.0
