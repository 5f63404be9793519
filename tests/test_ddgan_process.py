"""DDGAN process: schedule values, posterior against Bayes' rule, forward-pair statistics, the sampler."""
import numpy as np
import pytest
import torch

from models.ddgan import DDGANProcess, DDGANScheduleConfig, vp_betas


def _alpha_bar_ref(T: int, beta_min: float = 0.1, beta_max: float = 20.0) -> np.ndarray:
    """alpha_bar(tau_i) of the VP SDE on the grid tau_i = i/T (1 - 1e-3) + 1e-3, i = 0..T (float64)."""
    tau = np.linspace(0.0, 1.0, T + 1) * (1 - 1e-3) + 1e-3
    var = 1.0 - np.exp(-0.5 * tau ** 2 * (beta_max - beta_min) - tau * beta_min)
    return 1.0 - var


@pytest.mark.parametrize("T,expected", [(4, [0.478, 0.849, 0.956, 0.987]), (2, [0.921, 0.9995])])
def test_betas_published(T, expected):
    betas = vp_betas(DDGANScheduleConfig(num_timesteps=T))
    assert betas.shape == (T + 1,)
    assert betas[0] == 1e-8
    np.testing.assert_allclose(betas[1:], expected, atol=1e-3)
    ab = _alpha_bar_ref(T)
    np.testing.assert_allclose(betas[1:], 1 - ab[1:] / ab[:-1], rtol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 4])
def test_posterior_equals_bayes_rule(T):
    """Posterior of x_t given (x_{t+1}, x_0) from Gaussian conditioning, computed independently in numpy."""
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=T))
    ab = _alpha_bar_ref(T) / _alpha_bar_ref(T)[0]   # prod_{i=1..k}(1 - beta_i): the posterior ignores beta_0
    rng = np.random.default_rng(0)
    for t in range(T):
        x0 = rng.standard_normal((3, 2, 4, 4))
        x_tp1 = rng.standard_normal((3, 2, 4, 4))
        tt = torch.full((3,), t, dtype=torch.long)
        mean, var, log_var = proc.posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(x_tp1), tt)
        alpha = ab[t + 1] / ab[t]                      # one step t -> t+1
        if t == 0:                                     # x_t = x_0 exactly: zero variance
            ref_mean, ref_var = x0, 0.0
        else:
            # prior x_t | x_0 ~ N(sqrt(ab_t) x_0, 1 - ab_t); likelihood x_{t+1} | x_t ~ N(sqrt(alpha) x_t, 1 - alpha)
            prec = 1.0 / (1.0 - ab[t]) + alpha / (1.0 - alpha)
            ref_var = 1.0 / prec
            ref_mean = ref_var * (np.sqrt(ab[t]) * x0 / (1.0 - ab[t]) + np.sqrt(alpha) * x_tp1 / (1.0 - alpha))
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(var.numpy().ravel(), ref_var, rtol=1e-9, atol=1e-15)
        np.testing.assert_allclose(log_var.numpy().ravel(), np.log(max(ref_var, 1e-20)), rtol=1e-9)

        noise = torch.from_numpy(rng.standard_normal((3, 2, 4, 4)))
        x_t = proc.posterior_sample(torch.from_numpy(x0), torch.from_numpy(x_tp1), tt, noise=noise)
        expected = ref_mean + (np.sqrt(ref_var) if t > 0 else 0.0) * noise.numpy()
        np.testing.assert_allclose(x_t.numpy(), expected, rtol=1e-8, atol=1e-10)


def test_q_sample_pairs_statistics():
    """Monte-Carlo check of x_{t+1} | x_0 ~ N(sqrt(ab_{t+1}) x_0, 1 - ab_{t+1}) and of the step t -> t+1.

    N = 20,000 draws per pixel, 4 steps x 16 pixels. Tolerances are 5 standard errors: SE(mean) = sqrt(var / N),
    SE(variance) = var sqrt(2 / (N - 1)) (Gaussian), so each of the 64 comparisons fails by chance with
    probability ~6e-7 (and the seed is fixed).
    """
    torch.manual_seed(0)
    T, n = 4, 20_000
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=T))
    ab = _alpha_bar_ref(T) / _alpha_bar_ref(T)[0] * (1 - 1e-8)   # forward process includes beta_0 = 1e-8
    x0_img = torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, 1, 4, 4)
    for t in range(T):
        x0 = x0_img.expand(n, -1, -1, -1)
        x_t, x_tp1 = proc.q_sample_pairs(x0, torch.full((n,), t, dtype=torch.long))
        for x, k in ((x_t, t), (x_tp1, t + 1)):
            mean, var = x.mean(0), x.var(0)
            true_mean, true_var = np.sqrt(ab[k]) * x0_img[0], 1 - ab[k]
            assert ((mean - true_mean).abs() < 5 * np.sqrt(true_var / n)).all(), (t, k)
            assert ((var - true_var).abs() < 5 * true_var * np.sqrt(2 / (n - 1))).all(), (t, k)
        # The step noise: x_{t+1} - sqrt(1 - beta_{t+1}) x_t has variance beta_{t+1} and is uncorrelated with x_t.
        beta = 1 - ab[t + 1] / ab[t]
        r = x_tp1 - np.sqrt(1 - beta) * x_t
        assert ((r.var(0) - beta).abs() < 5 * beta * np.sqrt(2 / (n - 1))).all()
        corr = ((r - r.mean(0)) * (x_t - x_t.mean(0))).mean(0) / (r.std(0) * x_t.std(0))
        assert (corr.abs() < 5 / np.sqrt(n)).all()


def test_q_sample_pairs_given_noise_is_deterministic():
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=2))
    x0 = torch.ones(2, 1, 2, 2)
    e1, e2 = torch.zeros_like(x0), torch.ones_like(x0)
    x_t, x_tp1 = proc.q_sample_pairs(x0, torch.tensor([0, 1]), noise=(e1, e2))
    ab = proc.alphas_cumprod
    assert torch.allclose(x_t[:, 0, 0, 0], torch.tensor([ab[0], ab[1]], dtype=torch.float32).sqrt())
    b = proc.betas
    want = [np.sqrt(1 - b[1]) * np.sqrt(ab[0]) + np.sqrt(b[1]), np.sqrt(1 - b[2]) * np.sqrt(ab[1]) + np.sqrt(b[2])]
    assert torch.allclose(x_tp1[:, 0, 0, 0], torch.tensor(want, dtype=torch.float32))


class _RecordingGenerator:
    """G(x, t, z) that records its calls and returns a fixed x_0."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def __call__(self, x, t, z):
        self.calls.append((t.clone(), z.shape, x.shape))
        return self.x0


@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 12])
def test_sample_calls_and_returns_x0(T, channels):
    torch.manual_seed(0)
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=T))
    x0 = torch.rand(3, channels, 8, 8) * 2 - 1
    g = _RecordingGenerator(x0)
    out = proc.sample(g, torch.randn(3, channels, 8, 8), nz=100)
    assert len(g.calls) == T                                         # NFE = T
    assert [int(t[0]) for t, _, _ in g.calls] == list(range(T - 1, -1, -1))
    assert all((t == t[0]).all() and t.dtype == torch.long for t, _, _ in g.calls)
    assert all(zs == (3, 100) and xs == (3, channels, 8, 8) for _, zs, xs in g.calls)
    assert out.shape == x0.shape and out.dtype == x0.dtype
    assert torch.allclose(out, x0, atol=1e-6)                        # the t = 0 step adds no noise


def test_sample_reproducible_with_rng_and_uses_z():
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=4))
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    def g(x, t, z):  # depends on z, so different z give different samples
        return torch.tanh(0.5 * x + z.mean(1).view(-1, 1, 1, 1))

    a = proc.sample(g, x_T, nz=8, generator=torch.Generator().manual_seed(7))
    b = proc.sample(g, x_T, nz=8, generator=torch.Generator().manual_seed(7))
    c = proc.sample(g, x_T, nz=8, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype):
    proc = DDGANProcess(DDGANScheduleConfig(num_timesteps=4))
    x0 = torch.randn(4, 12, 4, 4, dtype=dtype)
    t = torch.tensor([0, 1, 2, 3])
    x_t, x_tp1 = proc.q_sample_pairs(x0, t)
    assert x_t.dtype == x_tp1.dtype == dtype and x_t.shape == x_tp1.shape == x0.shape
    post = proc.posterior_sample(x0, x_tp1, t)
    assert post.dtype == dtype and post.shape == x0.shape
    assert torch.isfinite(post).all()


def test_loss_parts_follow_their_definitions():
    """DDGANLoss on stand-in networks whose gradients are known: R1 = gamma/2 ||w||^2 for D = <w, x_t>; the
    generator's total is adv + lambda_rec * L1(G's x0, x0); D's total adds R1 only on R1 steps."""
    from models.ddgan import DDGANLoss

    torch.manual_seed(0)
    process = DDGANProcess(DDGANScheduleConfig(num_timesteps=4))
    w = torch.randn(1, 2, 4, 4)
    D = lambda x_t, t, x_tp1: (x_t * w).flatten(1).sum(1) + 0.0 * x_tp1.sum()  # noqa: E731
    G = lambda x_tp1, t, z: 0.5 * x_tp1 + z.mean(1).view(-1, 1, 1, 1)          # noqa: E731
    loss = DDGANLoss(process, nz=3, r1_gamma=0.1, lambda_rec=2.0)
    x0 = torch.randn(5, 2, 4, 4)
    d = loss.discriminator(D, G, x0, r1=True)
    torch.testing.assert_close(d["r1"], 0.05 * w.pow(2).sum())
    torch.testing.assert_close(d["loss"], d["loss_d_real"] + d["loss_d_fake"] + d["r1"])
    plain = loss.discriminator(D, G, x0)
    assert "r1" not in plain and torch.equal(plain["loss"], plain["loss_d"])
    g = loss.generator(G, D, x0)
    torch.testing.assert_close(g["loss"], g["loss_g"] + 2.0 * g["loss_rec"])
    assert g["loss_rec"] > 0 and float(d["loss_d_real"]) > 0


@pytest.mark.parametrize("T", [4, 2])
def test_pairs_and_posterior_sample_equal_their_formulas_bitwise(T):
    """q_sample_pairs and posterior_sample look their coefficients up in one table (fewer kernels per step); they
    compute bitwise what the per-coefficient formulas do."""
    process = DDGANProcess(DDGANScheduleConfig(num_timesteps=T))
    torch.manual_seed(0)
    x0 = torch.randn(16, 3, 8, 8)
    t = torch.randint(0, T, (16,))
    n_t, n_step, noise = torch.randn_like(x0), torch.randn_like(x0), torch.randn_like(x0)
    x_t, x_tp1 = process.q_sample_pairs(x0, t, (n_t, n_step))
    assert torch.equal(x_t, process.q_sample(x0, t, n_t))
    c = process._coef
    assert torch.equal(x_tp1, c("sqrt_alphas", t + 1, x0) * x_t + c("sqrt_betas", t + 1, x0) * n_step)
    mean, _, log_var = process.posterior_mean_variance(x0, x_tp1, t)
    nonzero = (t != 0).float().view(-1, 1, 1, 1)
    assert torch.equal(process.posterior_sample(x0, x_tp1, t, noise), mean + nonzero * torch.exp(0.5 * log_var) * noise)
