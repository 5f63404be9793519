"""The suite on a CUDA GPU (marker ``cuda``: collected everywhere, skipped with the reason where torch sees no
GPU; ``make gpu-check`` runs them first on a GPU machine).

- Every family's sampler gives the same samples on the CPU and on CUDA for the same weights and the same noise
  (a CPU generator drives both: models/noise.py draws on the generator's device). Tolerances, on images in
  [-1, 1]: with TF32 off (exact fp32 arithmetic on both sides) max |diff| <= 1e-3; with PyTorch's default TF32
  convolutions (what the timed evaluation uses) mean |diff| <= 1e-2.
- Training resumes exactly on CUDA (the CUDA RNG state travels in the checkpoint), with deterministic kernels.
- DDP over NCCL: world size 1 on one GPU; two ranks when two GPUs exist.
- Sampling timings are taken with CUDA events.
"""
import pytest
import torch

from bench import registry
from bench.evaluate import TimingConfig, time_sampler
from conftest import micro

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")

# One variant per sampler family: the GAN T-step chain (pixels and wavelets), DDIM with noise (eta 1), the U-KAN
# denoiser on level-1 coefficients, DVDP's dimensionality-varying chain.
FAMILIES = {
    "ddgan": {},
    "wavediff-wg": {},
    "ddpm": {"eval.eta": 1.0},
    "wddm-ukan-l1": {"eval.eta": 1.0},
    "dvdp": {"eval.eta": 1.0, "eval.steps": 4},
}


@pytest.fixture
def exact_fp32():
    """TF32 off for the duration of a test (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _samples(variant: str, device: torch.device) -> torch.Tensor:
    cfg = registry.resolve(micro(variant, **FAMILIES[variant]))
    torch.manual_seed(0)
    system = registry.build(cfg)  # the same weights for both devices, perturbed so that no output layer is zero
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in system.sampling_network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    x_T = torch.randn(system.state_shape(8), generator=torch.Generator().manual_seed(1))
    system.to(device)
    return system.sample(x_T.to(device), rng=torch.Generator().manual_seed(2)).cpu()


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_samplers_agree_on_cpu_and_cuda(variant, exact_fp32):
    cpu, gpu = _samples(variant, torch.device("cpu")), _samples(variant, CUDA)
    assert cpu.shape == gpu.shape and cpu.abs().max() > 0.05  # real images, not a constant
    assert (cpu - gpu).abs().max() <= 1e-3, f"{variant}: max |cpu - cuda| = {(cpu - gpu).abs().max():.2e}"


@pytest.mark.parametrize("variant", ["wavediff-wg", "ddpm"])
def test_samplers_agree_with_default_tf32(variant):
    cpu, gpu = _samples(variant, torch.device("cpu")), _samples(variant, CUDA)
    assert (cpu - gpu).abs().mean() <= 1e-2, f"{variant}: mean |cpu - cuda| = {(cpu - gpu).abs().mean():.2e}"


def test_training_resumes_exactly_on_cuda(tmp_path, monkeypatch):
    from test_train import check_resume_is_exact

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        check_resume_is_exact(tmp_path, "cuda")
    finally:
        torch.use_deterministic_algorithms(False)


def test_ddp_with_nccl_at_world_size_1(tmp_path):
    from test_distributed import launch

    launch("nccl1", tmp_path, world=1, device="cuda")
    out = torch.load(tmp_path / "nccl1.pt", weights_only=True)
    assert out["backend"] == "nccl" and out["world_size"] == 1
    for n, g in out["plain"].items():
        torch.testing.assert_close(out["ddp"][n], g, rtol=1e-5, atol=1e-7, msg=f"{n}: DDP gradient differs")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_with_nccl_on_two_gpus(tmp_path):
    from test_distributed import check_two_ranks

    check_two_ranks(tmp_path, "wavediff", "cuda")


def test_sampling_timings_use_cuda_events(monkeypatch):
    made = []

    class CountingEvent(torch.cuda.Event):
        def __new__(cls, *args, **kwargs):
            made.append(kwargs.get("enable_timing", False))
            return super().__new__(cls, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "Event", CountingEvent)
    cfg = registry.resolve(micro("wavediff"))
    system = registry.build(cfg).to(CUDA)
    x_T = torch.randn(system.state_shape(4), device=CUDA)
    res = time_sampler(lambda x: system.sample(x), x_T, TimingConfig(batch_size=4, warmup=1, repeats=3), CUDA)
    assert made == [True] * 6  # a timed start and end event per repeat
    assert res["device"] == "cuda" and res["device_name"] == torch.cuda.get_device_name(CUDA)
    assert 0 < res["time_min_s"] <= res["time_median_s"] <= res["time_max_s"] < 10


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_cuda_graph_sampling_matches_eager(variant):
    """The same kernels replayed: max |graphs - eager| <= 1e-4 on images in [-1, 1] (not bitwise: a captured
    graph may be given other cuDNN workspaces)."""
    from bench.sampling import EvalSampler

    cfg = registry.resolve(micro(variant, **FAMILIES[variant]))
    torch.manual_seed(0)
    system = registry.build(cfg).to(CUDA)
    x_T = torch.randn(system.state_shape(8), device=CUDA)
    eager = EvalSampler(system, CUDA, cuda_graphs=False)(x_T, torch.Generator(device=CUDA).manual_seed(2))
    graphed = EvalSampler(system, CUDA, cuda_graphs=True)
    for _ in range(2):
        out = graphed(x_T, torch.Generator(device=CUDA).manual_seed(2))
        assert (out - eager).abs().max() <= 1e-4, f"{variant}: max |graphs - eager| {(out - eager).abs().max():.2e}"
    assert graphed.protocol()["sampler_cuda_graphs"] == "cuda graphs" and graphed.net.captures >= 1


def test_batches_on_the_gpu_are_the_cpu_batches():
    from bench.data import load_dataset
    from bench.train import BatchStream

    cfg = registry.resolve({"variant": "wavediff", "dataset": "digits", "data.hflip": True})
    ds = load_dataset(cfg.data)
    cpu, gpu = BatchStream(ds, 64, seed=1), BatchStream(ds, 64, seed=1).to(CUDA)
    for step in (0, 5, 30, 31):
        b = gpu.batch(step)
        assert b.device.type == "cuda" and torch.equal(b.cpu(), cpu.batch(step)), step


@pytest.mark.parametrize("variant", ["wavediff", "ddpm"])
def test_bf16_channels_last_training_on_cuda(variant, tmp_path):
    from bench.data import load_dataset
    from bench.tracking import NullTracker
    from bench.train import BatchStream

    cfg = registry.resolve(micro(variant, device="cuda", **{"train.max_steps": 4, "train.log_every": 1,
                                                            "train.precision": "bf16", "train.channels_last": True}))
    torch.manual_seed(0)
    system = registry.build(cfg).to(CUDA)
    tracker = NullTracker()
    res = registry.family(cfg).trainer(cfg, system, BatchStream(load_dataset(cfg.data), 16, 0), tracker, tmp_path, CUDA,
                                  progress=False)
    assert res.step == 4 and all(v == v and abs(v) < 1e6 for _, v, _ in tracker.metrics)


@pytest.mark.slow
def test_compiled_training_on_cuda(tmp_path):
    """train.compile with inductor on the GPU (compiling takes about a minute): losses as eager, to 1e-2."""
    from bench.data import load_dataset
    from bench.tracking import NullTracker
    from bench.train import BatchStream

    out = {}
    for flag in (False, True):
        cfg = registry.resolve(micro("wavediff", device="cuda", **{"train.max_steps": 3, "train.lazy_reg": 2,
                                                                   "train.log_every": 1, "train.compile": flag}))
        torch.manual_seed(0)
        system = registry.build(cfg).to(CUDA)
        tracker = NullTracker()
        registry.family(cfg).trainer(cfg, system, BatchStream(load_dataset(cfg.data), 16, 0), tracker, tmp_path / str(flag), CUDA,
                        progress=False)
        out[flag] = [v for k, v, _ in tracker.metrics if k == "loss_g"]
    assert out[True] == pytest.approx(out[False], rel=1e-2)
