"""Gaussian diffusion and its samplers, checked against closed forms written here in numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.ddpm import (SAMPLERS, DDPMConfig, GaussianDiffusion, ddim_sample, ddim_sigma, ddpm_sample,
                         make_betas, timestep_sequence)


pytestmark = pytest.mark.usefixtures("one_thread")


SCHEDULES = ("linear", "cosine")


def np_betas(schedule: str, T: int) -> np.ndarray:
    if schedule == "linear":
        return np.linspace(1e-4, 0.02, T)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


def np_alpha_bar(schedule: str, T: int) -> np.ndarray:
    return np.cumprod(1 - np_betas(schedule, T))


def oracle(x0: torch.Tensor, ab: np.ndarray, prediction: str = "epsilon"):
    """A denoiser that knows x0: returns the exact noise consistent with (x_t, t), or x0 itself."""
    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        if prediction == "sample":
            return x0.clone()
        a = torch.as_tensor(ab, dtype=x.dtype)[t].reshape(-1, *([1] * (x.dim() - 1)))
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return model


class CountingModel:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.fn(x, t)


# -- schedules and the forward process ------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_betas_match_formulas(schedule):
    T = 1000
    betas = make_betas(DDPMConfig(num_timesteps=T, beta_schedule=schedule)).numpy()
    np.testing.assert_allclose(betas, np_betas(schedule, T), rtol=1e-12, atol=1e-15)
    diff = GaussianDiffusion(DDPMConfig(num_timesteps=T, beta_schedule=schedule))
    np.testing.assert_allclose(diff.alphas_cumprod.numpy(), np_alpha_bar(schedule, T), rtol=1e-10)
    if schedule == "linear":
        assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    else:
        # alpha_bar_t = f((t+1)/T) / f(0) wherever the cap is inactive; the last beta is capped at 0.999.
        f = np.cos((np.arange(1, T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
        np.testing.assert_allclose(diff.alphas_cumprod.numpy()[:-1], f[:-1], rtol=1e-9)
        assert betas[-1] == pytest.approx(0.999) and betas.max() <= 0.999


def test_q_sample_moments_and_per_sample_t():
    torch.manual_seed(0)
    diff = GaussianDiffusion(DDPMConfig(beta_schedule="cosine"))
    ab = np_alpha_bar("cosine", 1000)
    for t in (0, 250, 700, 999):
        x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
        xt = diff.q_sample(x0, torch.tensor([t]), torch.randn_like(x0))
        assert xt.mean().item() == pytest.approx(math.sqrt(ab[t]) * 0.7, abs=5 * math.sqrt((1 - ab[t]) / 2e5))
        assert xt.var().item() == pytest.approx(1 - ab[t], rel=0.02, abs=1e-6)
    # Each sample uses its own t.
    t = torch.tensor([3, 500, 998])
    x0, noise = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    want = np.sqrt(ab[t.numpy()])[:, None, None, None] * x0.numpy() + \
        np.sqrt(1 - ab[t.numpy()])[:, None, None, None] * noise.numpy()
    np.testing.assert_allclose(diff.q_sample(x0, t, noise).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_posterior_matches_bayes_rule(schedule):
    """q(x_{t-1}|x_t,x0) ∝ N(x_{t-1}; sqrt(ab_{t-1}) x0, 1-ab_{t-1}) N(x_t; sqrt(alpha_t) x_{t-1}, beta_t)."""
    T = 1000
    diff = GaussianDiffusion(DDPMConfig(num_timesteps=T, beta_schedule=schedule))
    betas, ab = np_betas(schedule, T), np_alpha_bar(schedule, T)
    rng = np.random.default_rng(0)
    t = np.array([1, 2, 10, 400, 998, 999])
    x0, xt = rng.uniform(-1, 1, size=(len(t), 5)), rng.normal(size=(len(t), 5))
    precision = 1 / (1 - ab[t - 1]) + (1 - betas[t]) / betas[t]
    want_var = 1 / precision
    want_mean = (np.sqrt(ab[t - 1])[:, None] * x0 / (1 - ab[t - 1])[:, None]
                 + np.sqrt(1 - betas[t])[:, None] * xt / betas[t][:, None]) * want_var[:, None]
    mean, var = diff.q_posterior(torch.from_numpy(x0), torch.from_numpy(xt), torch.from_numpy(t))
    np.testing.assert_allclose(var.reshape(-1).numpy(), want_var, rtol=1e-9)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-8, atol=1e-12)
    # t = 0: no variance, the mean is x0.
    mean0, var0 = diff.q_posterior(torch.from_numpy(x0), torch.from_numpy(xt), torch.zeros(len(t), dtype=torch.long))
    assert var0.abs().max().item() == 0.0
    np.testing.assert_allclose(mean0.numpy(), x0, atol=1e-12)


# -- training loss ---------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_loss_x0_hat_uses_each_samples_own_t(schedule):
    torch.manual_seed(1)
    diff = GaussianDiffusion(DDPMConfig(beta_schedule=schedule, clip_sample=False))
    x0 = torch.rand(64, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (64,))
    assert len(t.unique()) > 10
    mse, x0_hat = diff.loss(lambda x, tt: noise, x0, t=t, noise=noise)  # the model returns the true noise
    assert mse.item() == 0.0
    np.testing.assert_allclose(x0_hat.numpy(), x0.numpy(), atol=1e-6)
    # Converting at t = 0 for every sample (WDDM's public code) does not recover x0.
    x_t = diff.q_sample(x0, t, noise)
    wrong = diff.predict_x0(noise, x_t, torch.zeros_like(t))
    assert (wrong - x0).abs().max().item() > 0.1
    # A zero network: mse is mean(noise^2); t and noise are drawn when not given.
    mse0, _ = diff.loss(lambda x, tt: torch.zeros_like(x), x0, t=t, noise=noise)
    assert mse0.item() == pytest.approx(noise.pow(2).mean().item(), rel=1e-12)
    mse1, x0_hat1 = diff.loss(lambda x, tt: torch.zeros_like(x), x0)
    assert mse1.item() > 0.5 and x0_hat1.shape == x0.shape


def test_sample_prediction_mode():
    torch.manual_seed(2)
    diff = GaussianDiffusion(DDPMConfig(beta_schedule="cosine", prediction="sample"))
    x0 = torch.rand(16, 2, 4, 4, dtype=torch.float64) * 2 - 1
    noise, t = torch.randn_like(x0), torch.randint(0, 1000, (16,))
    assert torch.equal(diff.training_targets(x0, t, noise), x0)
    x_t = diff.q_sample(x0, t, noise)
    np.testing.assert_allclose(diff.predict_eps(x0, x_t, t).numpy(), noise.numpy(), atol=1e-6)
    assert torch.equal(diff.predict_x0(x0, x_t, t), x0)
    assert torch.equal(diff.predict_x0(3 * x0, x_t, t), (3 * x0).clamp(-1, 1))   # clip_sample
    mse, x0_hat = diff.loss(lambda x, tt: x0, x0, t=t, noise=noise)
    assert mse.item() == 0.0 and torch.equal(x0_hat, x0)
    with pytest.raises(ValueError):
        DDPMConfig(prediction="v")
    with pytest.raises(ValueError):
        DDPMConfig(beta_schedule="sigmoid")


# -- timestep sub-sequences ------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", ("linear", "quadratic", "leading"))
def test_subsequences_valid(spacing):
    for T in (1000, 50, 7):
        for S in sorted({1, 2, 3, 10, 49, 50, 100, 999, T}):
            if S > T:
                continue
            seq = timestep_sequence(T, S, spacing)
            assert len(seq) == S
            assert all(0 <= s <= T - 1 for s in seq)
            assert all(a > b for a, b in zip(seq, seq[1:])), (T, S, spacing)
    with pytest.raises(ValueError):
        timestep_sequence(10, 11, spacing)


def test_subsequence_formulas():
    assert timestep_sequence(1000, 50, "leading") == list(range(980, -1, -20))
    assert timestep_sequence(1000, 10, "linear") == [math.floor(111 * i) for i in range(9, -1, -1)]
    assert timestep_sequence(1000, 1000, "linear") == list(range(999, -1, -1))
    c = 800 / 81
    assert timestep_sequence(1000, 10, "quadratic") == [math.floor(c * i * i) for i in range(9, -1, -1)]
    assert timestep_sequence(1000, 20, "quadratic")[0] == 800


# -- samplers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", ("epsilon", "sample"))
def test_ddim_eta0_oracle_recovers_x0(schedule, prediction):
    torch.manual_seed(3)
    diff = GaussianDiffusion(DDPMConfig(beta_schedule=schedule, prediction=prediction))
    ab = np_alpha_bar(schedule, 1000)
    x0 = torch.rand(4, 3, 4, 4, dtype=torch.float64) * 2 - 1
    for spacing in ("linear", "quadratic", "leading"):
        for steps in (1, 2, 10, 50, 333):
            x_T = torch.randn_like(x0)
            out = ddim_sample(diff, oracle(x0, ab, prediction), x_T, steps=steps, eta=0.0, spacing=spacing)
            np.testing.assert_allclose(out.numpy(), x0.numpy(), atol=1e-5, err_msg=f"{spacing} {steps}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_oracle_chain_has_the_forward_marginals(schedule):
    """With the oracle and x_T ~ q(x_T|x0), every state of the ancestral chain is distributed as
    q(x_t|x0) = N(sqrt(ab_t) x0, 1 - ab_t): this checks the posterior mean and the fixed-small variance
    (beta_t instead of beta_tilde_t, or a missing noise term, breaks the variance). The last step returns x0."""
    T = 1000
    diff = GaussianDiffusion(DDPMConfig(num_timesteps=T, beta_schedule=schedule))
    ab = np_alpha_bar(schedule, T)
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(8, 1, 50, 50, generator=g, dtype=torch.float64) * 2 - 1   # 20,000 values
    x_T = diff.q_sample(x0, torch.tensor([T - 1]), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    n, worst_mean, worst_var = x0.numel(), 0.0, 0.0

    def check(info):
        nonlocal worst_mean, worst_var
        s = info["t_next"]
        if s < 0:
            return
        z = (info["x"] - math.sqrt(ab[s]) * x0) / math.sqrt(1 - ab[s])
        worst_mean = max(worst_mean, abs(z.mean().item()) / math.sqrt(1 / n))
        worst_var = max(worst_var, abs(z.var().item() - 1) / math.sqrt(2 / n))

    out = ddpm_sample(diff, oracle(x0, ab), x_T, generator=g, callback=check)
    assert worst_mean < 6 and worst_var < 6, (worst_mean, worst_var)   # in standard errors
    np.testing.assert_allclose(out.numpy(), x0.numpy(), atol=1e-6)


def test_ddim_eta1_full_steps_is_ddpm():
    T = 100
    diff = GaussianDiffusion(DDPMConfig(num_timesteps=T, beta_schedule="cosine", clip_sample=False))
    ab, betas = np_alpha_bar("cosine", T), np_betas("cosine", T)
    beta_tilde = (1 - ab[:-1]) / (1 - ab[1:]) * betas[1:]
    sig2 = np.array([ddim_sigma(ab[t], ab[t - 1], 1.0) ** 2 for t in range(1, T)])
    np.testing.assert_allclose(sig2, beta_tilde, rtol=1e-10)
    np.testing.assert_allclose(diff.posterior_variance.numpy()[1:], beta_tilde, rtol=1e-10)
    assert ddim_sigma(ab[5], ab[4], 0.0) == 0.0

    torch.manual_seed(5)
    w = torch.randn(3, 3, dtype=torch.float64) * 0.3
    def net(x, t):  # an arbitrary t-dependent network
        return torch.einsum("oc,bchw->bohw", w, x) + torch.sin(t.to(x.dtype) / 7)[:, None, None, None]
    x_T = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    a = ddpm_sample(diff, net, x_T, generator=torch.Generator().manual_seed(6))
    b = ddim_sample(diff, net, x_T, steps=T, eta=1.0, spacing="linear", generator=torch.Generator().manual_seed(6))
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-9)
    c = ddim_sample(diff, net, x_T, steps=T, eta=0.0, generator=torch.Generator().manual_seed(6))
    assert (c - a).abs().max().item() > 1e-2


def test_nfe_equals_steps_and_reproducibility():
    diff = GaussianDiffusion(DDPMConfig(num_timesteps=40, beta_schedule="cosine"))
    x_T = torch.randn(2, 3, 4, 4)
    net = CountingModel(lambda x, t: 0.1 * x)
    ddpm_sample(diff, net, x_T)
    assert net.calls == 40
    for spacing in ("linear", "quadratic", "leading"):
        for steps in (1, 4, 13, 40):
            net.calls = 0
            ddim_sample(diff, net, x_T, steps=steps, spacing=spacing, eta=0.5)
            assert net.calls == steps
    with pytest.raises(ValueError):
        ddpm_sample(diff, net, x_T, steps=10)
    # Same signature for every sampler; a seeded generator reproduces the samples.
    for name, sampler in SAMPLERS.items():
        a = sampler(diff, net, x_T, steps=40, generator=torch.Generator().manual_seed(7))
        b = sampler(diff, net, x_T, steps=40, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b) and a.shape == x_T.shape, name
    a = ddpm_sample(diff, net, x_T, generator=torch.Generator().manual_seed(7))
    b = ddpm_sample(diff, net, x_T, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(a, b)
