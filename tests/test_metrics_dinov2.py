"""The ``dinov2`` metric set (FD-DINOv2, precision/recall/density/coverage), weights resolution, the fail-fast
prerequisites check and the extraction-cost probe.

No DINOv2 weights can be downloaded here, so the real loading and feature path runs on a tiny ViT of the hub
model's interface (patch 14, 518 px position grid, layer scale) with random weights, saved as a state_dict file and
registered as the test-only model ``dinov2-vit-test-14``.
"""
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch_fidelity.feature_extractor_dinov2 import MODEL_METADATA
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from bench import metrics as M
from bench.data import DataConfig, load_dataset, reference_uint8
from conftest import online

TINY = "dinov2-vit-test-14"
TINY_ARCH = M.DinoV2Arch(embed_dim=48, depth=2, num_heads=3)
M.register_dinov2_model(TINY, TINY_ARCH)
K = 5

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch and BLAS thread


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("wavebench-cache")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A random-weight tiny DINOv2 saved as the hub's files are: a plain state_dict. (Extraction time on CPU goes
    mostly to torch-fidelity's TF1-compatible resize to 224 px, not to the network: keep the sets small.)"""
    torch.manual_seed(0)
    net = M.DinoV2ViT(TINY_ARCH)
    with torch.no_grad():
        net.pos_embed.normal_(0, 0.02)  # not all-zero, so the position-grid interpolation matters
        net.cls_token.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("dinov2") / f"{TINY}.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cfg(tiny_weights):
    return M.MetricsConfig(sets=("dinov2",), dinov2_model=TINY, dinov2_weights=str(tiny_weights), kid_subsets=5)


@pytest.fixture(scope="module")
def digits():
    data = DataConfig(name="digits")
    train = reference_uint8(load_dataset(data, "train"), limit=150)
    test = reference_uint8(load_dataset(data, "test"), limit=100)
    noise = torch.randint(0, 256, test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return train, test, noise


# ------------------------------------------------------------------------------------ references

def brute_force_prdc(gen: np.ndarray, ref: np.ndarray, k: int) -> dict:
    """Precision/recall as torch-fidelity defines them (k-NN balls, <=) and density/coverage as Naeem et al. (<),
    with Euclidean distances pair by pair in float64."""
    gen, ref = np.asarray(gen, np.float64), np.asarray(ref, np.float64)
    m, n = len(gen), len(ref)

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    d_rg = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            d_rg[i, j] = dist(ref[i], gen[j])
    r_ref = np.array([sorted(dist(ref[i], ref[j]) for j in range(n))[k] for i in range(n)])  # [0] is self
    r_gen = np.array([sorted(dist(gen[i], gen[j]) for j in range(m))[k] for i in range(m)])
    precision = np.mean([any(d_rg[i, j] <= r_ref[i] for i in range(n)) for j in range(m)])
    recall = np.mean([any(d_rg[i, j] <= r_gen[j] for j in range(m)) for i in range(n)])
    density = sum(d_rg[i, j] < r_ref[i] for i in range(n) for j in range(m)) / (k * m)
    coverage = np.mean([d_rg[i].min() < r_ref[i] for i in range(n)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


# ------------------------------------------------------------------------------------ the network

# Parameter counts of the hub entry points (facebookresearch/dinov2 at b8931f7, pretrained=False), which this
# suite's ViT must reproduce key for key to load their *_pretrain.pth files.
HUB_PARAMS = {"dinov2-vit-s-14": 22_056_576, "dinov2-vit-b-14": 86_580_480, "dinov2-vit-l-14": 304_368_640,
              "dinov2-vit-g-14": 1_136_480_768}


def test_architectures_are_the_hub_models():
    assert set(MODEL_METADATA) <= set(M.DINOV2_MODELS)
    for name, entry in MODEL_METADATA.items():
        arch = M.DINOV2_MODELS[name]
        assert arch.hub_name == entry
        assert arch.weights(name).filename == f"{entry}_pretrain.pth"
        with torch.device("meta"):
            net = M.DinoV2ViT(arch)
        assert sum(p.numel() for p in net.parameters()) == HUB_PARAMS[name]
    assert M.MetricsConfig().dinov2_model == "dinov2-vit-l-14"  # dgm-eval's choice


def _official_repo() -> Path | None:
    for p in (os.environ.get("WAVEBENCH_DINOV2_REPO"), Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"):
        if p and (Path(p) / "hubconf.py").is_file():
            return Path(p)
    return None


@pytest.mark.skipif(_official_repo() is None, reason="facebookresearch/dinov2 code not available locally "
                    "(set WAVEBENCH_DINOV2_REPO or have torch hub's copy)")
def test_matches_official_dinov2_code(monkeypatch):
    monkeypatch.setenv("XFORMERS_DISABLED", "1")  # the same plain-PyTorch attention as here
    official = torch.hub.load(str(_official_repo()), "dinov2_vits14", source="local", pretrained=False).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.05)
    mine = M.DinoV2ViT(M.DINOV2_MODELS["dinov2-vit-s-14"]).eval()
    mine.load_state_dict(official.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), official(x), rtol=1e-5, atol=1e-5)


def test_extractor_is_torch_fidelity_preprocessing_then_the_vit(cfg, tiny_weights, digits, cache):
    _, test, _ = digits
    x = test[:16]
    feats = M.extract_features(x, "dinov2", cfg=cfg, cache_dir=cache)
    assert feats.shape == (16, TINY_ARCH.embed_dim) and feats.dtype == torch.float32
    net = M.load_dinov2(TINY, tiny_weights)
    rgb = x.expand(-1, 3, -1, -1).float()
    rgb = interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(224, 224), align_corners=False)
    rgb = torchvision.transforms.functional.normalize(rgb, [255 * v for v in (0.485, 0.456, 0.406)],
                                                      [255 * v for v in (0.229, 0.224, 0.225)])
    with torch.no_grad():
        direct = net(rgb)
    torch.testing.assert_close(feats, direct, rtol=1e-5, atol=1e-5)
    assert feats.std(0).mean() > 1e-2  # images are told apart


# ------------------------------------------------------------------------------------ density and coverage

def test_density_coverage_against_brute_force_and_known_cases():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 6)).astype(np.float32)
    gen = (rng.normal(size=(40, 6)) * 1.3 + 0.4).astype(np.float32)
    expected = brute_force_prdc(gen, ref, K)
    for block in (1 << 24, 64):  # one block; one row per block
        density, coverage = M.density_coverage(torch.from_numpy(gen), torch.from_numpy(ref), K, max_block=block)
        assert density == pytest.approx(expected["density"], abs=1e-12)
        assert coverage == pytest.approx(expected["coverage"], abs=1e-12)
    assert 0.1 < expected["coverage"] < 0.95 and 0.1 < expected["density"] < 1.5  # a non-trivial case
    assert M.density_coverage(ref, ref, K) == (1.0, 1.0)  # identical: each ball holds itself and k-1 others
    assert M.density_coverage(ref + 100.0, ref, K) == (0.0, 0.0)  # disjoint, far apart
    d, c = M.density_coverage(np.repeat(ref[:1], 40, axis=0), ref, K)  # mode collapse onto one real sample
    assert c == pytest.approx(expected_collapse_coverage(ref, K), abs=2 / 50) and d > 0  # ties at r_i
    with pytest.raises(ValueError, match="k=5"):
        M.density_coverage(gen, ref[:5], K)


def expected_collapse_coverage(ref: np.ndarray, k: int) -> float:
    """All generated samples at ref[0]: covered are the reference samples whose ball holds ref[0]."""
    d = np.linalg.norm(ref[:, None].astype(np.float64) - ref[None].astype(np.float64), axis=-1)
    radii = np.sort(d, axis=1)[:, k]
    return float(np.mean(d[:, 0] < radii))


# ------------------------------------------------------------------------------------ the dinov2 set

@pytest.fixture(scope="module")
def results(cfg, cache, digits):
    train, test, noise = digits
    return {
        "same": M.compute_metrics(test, test, dataset="digits", cfg=cfg, cache_dir=cache),
        "real": M.compute_metrics(test, train, dataset="digits", cfg=cfg, cache_dir=cache),
        "noise": M.compute_metrics(noise, train, dataset="digits", cfg=cfg, cache_dir=cache),
    }


def test_dinov2_set_orders_self_real_noise(results):
    same, real, bad = results["same"], results["real"], results["noise"]
    assert abs(same["fd_dinov2"]) < 1e-4 * bad["fd_dinov2"]
    assert 5 * real["fd_dinov2"] < bad["fd_dinov2"]
    for key in ("precision_dinov2", "recall_dinov2", "density_dinov2", "coverage_dinov2"):
        assert same[key] == pytest.approx(1.0, abs=1e-9), key
        assert bad[key] < 0.05, key
        assert real[key] > 0.3, key
    assert set(real) == {*M.SCORE_KEYS["dinov2"], "backbone_dinov2", "dinov2_k", "implementation",
                         "num_generated", "num_reference", "sample_format", "reference_split"}
    assert real["num_generated"] == 100 and real["num_reference"] == 150 and real["dinov2_k"] == K
    assert real["backbone_dinov2"].startswith(f"{TINY} (CLS token") and "48-d, 224 px" in real["backbone_dinov2"]


def test_both_sets_match_independent_computations(cfg, cache, digits):
    """paper + dinov2 in one call: paper's keys as before, and every dinov2 number recomputed from the features."""
    train, test, _ = digits
    gen, ref = test[:40], train[:50]
    both = M.MetricsConfig(sets=("paper", "dinov2"), dinov2_model=TINY, dinov2_weights=cfg.dinov2_weights,
                           kid_subsets=5)
    out = M.compute_metrics(gen, ref, dataset="digits", cfg=both, cache_dir=cache)
    paper = M.compute_metrics(gen, ref, dataset="digits", cfg=M.MetricsConfig(kid_subsets=5), cache_dir=cache)
    assert set(out) == set(paper) | {*M.SCORE_KEYS["dinov2"], "backbone_dinov2", "dinov2_k"}
    for key in paper:
        assert out[key] == pytest.approx(paper[key], rel=1e-9) if isinstance(paper[key], float) else \
            out[key] == paper[key]

    fg = M.extract_features(gen, "dinov2", cfg=cfg, cache_dir=cache).double().numpy()
    fr = M.extract_features(ref, "dinov2", cfg=cfg, cache_dir=cache).double().numpy()
    fd = M.frechet_distance(*M.feature_statistics(fg), *M.feature_statistics(fr))
    assert out["fd_dinov2"] == pytest.approx(fd, rel=1e-4)
    expected = brute_force_prdc(fg, fr, K)
    tol = 1.0 / 40  # one sample flipping on a float32 near-tie
    for key in ("precision", "recall", "density", "coverage"):
        assert out[f"{key}_dinov2"] == pytest.approx(expected[key], abs=tol), key
    assert 0 < expected["coverage"] < 1 and 0 < expected["precision"] < 1  # not a degenerate case


def test_metric_sets_config():
    assert M.check_metrics_config(M.MetricsConfig()) == []
    assert M.MetricsConfig().sets == ("paper",)
    assert M.check_metrics_config(M.MetricsConfig(sets=("paper", "dinov2"))) == []
    (p,) = M.check_metrics_config(M.MetricsConfig(sets=("paper", "clip")))
    assert "'clip'" in p and "paper, dinov2" in p
    (p,) = M.check_metrics_config(M.MetricsConfig(sets=()))
    assert "at least one" in p
    (p,) = M.check_metrics_config(M.MetricsConfig(dinov2_model="dinov2-vit-h-14"))
    assert "eval.metrics.dinov2_model" in p and "dinov2-vit-l-14" in p
    assert len(M.check_metrics_config(M.MetricsConfig(dinov2_neighborhood=0, dinov2_weights="/nonexistent"))) == 2
    with pytest.raises(ValueError, match="dinov2_neighborhood=5"):
        M.compute_metrics(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.zeros(9, 1, 8, 8, dtype=torch.uint8),
                          dataset="digits", cfg=M.MetricsConfig(sets=("dinov2",)))


# ------------------------------------------------------------------------------------ weights and prerequisites

def test_dinov2_weights_resolution(tmp_path, monkeypatch, tiny_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / f"{TINY}.pth"
    cfg = M.MetricsConfig(sets=("dinov2",), dinov2_model=TINY)
    with pytest.raises(M.MetricsError, match="eval.metrics.dinov2_weights") as e:
        M.dinov2_weights_file(cfg)
    assert f"{TINY}.pth" in str(e.value) and str(hub_file) in str(e.value)

    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(tiny_weights.read_bytes())
    assert M.dinov2_weights_file(cfg) == str(hub_file)  # torch hub's cache
    local = tmp_path / "elsewhere.pth"
    local.write_bytes(tiny_weights.read_bytes())
    assert M.dinov2_weights_file(M.MetricsConfig(dinov2_model=TINY, dinov2_weights=str(local))) == str(local)
    hub_dir = tmp_path / "a-hub-dir"  # a torch hub directory: <dir>/checkpoints/<file>
    (hub_dir / "checkpoints").mkdir(parents=True)
    (hub_dir / "checkpoints" / f"{TINY}.pth").write_bytes(tiny_weights.read_bytes())
    assert M.dinov2_weights_file(M.MetricsConfig(dinov2_model=TINY, dinov2_weights=str(hub_dir))) == \
        str(hub_dir / "checkpoints" / f"{TINY}.pth")
    with pytest.raises(M.MetricsError, match=f"eval.metrics.dinov2_weights={tmp_path}.*{TINY}.pth"):
        M.dinov2_weights_file(M.MetricsConfig(dinov2_model=TINY, dinov2_weights=str(tmp_path)))

    other = tmp_path / "other.pth"  # a file of another model: refused, naming it and the key
    torch.save(M.DinoV2ViT(M.DinoV2Arch(embed_dim=24, depth=1, num_heads=2)).state_dict(), other)
    with pytest.raises(M.MetricsError, match="(?s)other.pth is not a state_dict.*eval.metrics.dinov2_weights"):
        M.load_dinov2(TINY, other)


def test_prerequisites_name_every_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    cfg = M.MetricsConfig(sets=("paper", "dinov2"))
    problems = M.metrics_prerequisites(cfg, "cifar10", allow_download=False)
    files = ("weights-inception-2015-12-05-6726825d.pth", "vgg16-397923af.pth", "dinov2_vitl14_pretrain.pth")
    keys = ("eval.metrics.inception_weights", "eval.metrics.vgg16_weights", "eval.metrics.dinov2_weights")
    # VGG16 is not a prerequisite unless configured: without it precision/recall are reported as not measured.
    assert len(problems) == 2
    for problem, file, key in zip(problems, files[::2], keys[::2]):
        assert file in problem and key in problem and str(checkpoints / file) in problem
    assert "python -m bench.backbones fetch inception" in problems[0]  # how to build it from the registry
    assert M.metrics_prerequisites(M.MetricsConfig(), "digits", allow_download=False) == []  # trained locally
    assert len(M.metrics_prerequisites(M.MetricsConfig(sets=("dinov2",)), "digits", allow_download=False)) == 1
    assert len(M.metrics_prerequisites(M.MetricsConfig(backbone="inception-vgg16"), "digits",
                                       allow_download=False)) == 1
    assert len(M.metrics_prerequisites(M.MetricsConfig(sets=("dinov2", "inception")), "digits",
                                       allow_download=False)) == 2

    checkpoints.mkdir(parents=True)
    for file in files:  # present in torch hub's cache: found without opening them
        (checkpoints / file).write_bytes(b"")
    t0 = time.perf_counter()
    assert M.metrics_prerequisites(cfg, "cifar10") == []
    assert time.perf_counter() - t0 < 0.5
    for file in files:
        (checkpoints / file).rename(tmp_path / file)
    configured = M.MetricsConfig(sets=("paper", "dinov2"), inception_weights=str(tmp_path / files[0]),
                                 vgg16_weights=str(tmp_path / files[1]), dinov2_weights=str(tmp_path / files[2]))
    assert M.metrics_prerequisites(configured, "cifar10", allow_download=False) == []
    (tmp_path / files[1]).unlink()
    (problem,) = M.metrics_prerequisites(configured, "cifar10", allow_download=False)
    assert f"eval.metrics.vgg16_weights={tmp_path / files[1]} does not exist" in problem


def test_prerequisites_offline_download_fails_fast(tmp_path, monkeypatch):
    if online():
        pytest.skip("network reachable: this would download the weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    t0 = time.perf_counter()
    problems = M.metrics_prerequisites(M.MetricsConfig(sets=("paper", "dinov2")), "stl10")
    assert time.perf_counter() - t0 < 3 * M.DOWNLOAD_TIMEOUT_S
    assert len(problems) == 2 and all("download failed" in p for p in problems)  # Inception, DINOv2
    assert not any((Path(torch.hub.get_dir()) / "checkpoints").iterdir())  # no partial files left


# ------------------------------------------------------------------------------------ cost

def test_extraction_seconds_per_1000(cfg, cache, digits):
    _, test, _ = digits
    x = test[:64]
    digits_s = M.extraction_seconds_per_1000("digits-classifier", x, cfg, "cpu", cache_dir=cache, repeats=1)
    dino_s = M.extraction_seconds_per_1000("dinov2", x, cfg, "cpu", cache_dir=cache, repeats=1)
    assert 0 < digits_s < dino_s < 600  # a ViT at 224 px costs more than the 32 px CNN
    with pytest.raises(ValueError, match="valid: digits-classifier, inception, vgg16, dinov2"):
        M.extraction_seconds_per_1000("clip", x, cfg)
