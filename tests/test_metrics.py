"""Quality metrics: the digits backbone, torch-fidelity's FID/KID/PRC on it, caching and the offline errors."""

import numpy as np
import pytest
import torch

from bench import backbones as B
from bench import metrics as M
from bench.data import DataConfig, dataset_fingerprint, load_dataset, reference_uint8
from conftest import online

CFG = M.MetricsConfig(kid_subsets=20)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch and BLAS thread


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("wavebench-cache")


@pytest.fixture(scope="module")
def digits():
    data = DataConfig(name="digits")
    train = reference_uint8(load_dataset(data, "train"), limit=500)
    test = reference_uint8(load_dataset(data, "test"))  # 360 images
    noise = torch.randint(0, 256, test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return train, test, noise


@pytest.fixture(scope="module")
def classifier_path(cache):
    runs = B.TRAINING_RUNS
    path = M.digits_classifier_path(cache)
    assert B.TRAINING_RUNS == runs + 1  # a fresh cache dir trains once
    return path


@pytest.fixture(scope="module")
def results(cache, classifier_path, digits):
    """Metrics of the test split against itself, test vs train, uniform noise vs train."""
    train, test, noise = digits
    return {
        "same": M.compute_metrics(test, test, dataset="digits", cfg=CFG, cache_dir=cache),
        "real": M.compute_metrics(test, train, dataset="digits", cfg=CFG, cache_dir=cache),
        "noise": M.compute_metrics(noise, train, dataset="digits", cfg=CFG, cache_dir=cache),
    }


def test_classifier_accuracy_and_cache_reuse(cache, classifier_path):
    model, info = M.digits_classifier(cache)
    assert info["version"] == M.CLASSIFIER_VERSION and info["test_accuracy"] >= 0.95
    test = load_dataset(DataConfig(name="digits"), "test")
    with torch.no_grad():
        pred = model(test.images.float() / 127.5 - 1.0).argmax(1)
    accuracy = (pred == test.labels).float().mean().item()
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(info["test_accuracy"], abs=1e-6)

    runs, mtime = B.TRAINING_RUNS, classifier_path.stat().st_mtime_ns
    assert M.digits_classifier_path(cache) == classifier_path
    assert B.TRAINING_RUNS == runs and classifier_path.stat().st_mtime_ns == mtime


def test_fid_orders_self_real_noise(results):
    same, real, bad = results["same"], results["real"], results["noise"]
    assert abs(same["fid"]) < 1e-3 * bad["fid"]
    assert 10 * real["fid"] < bad["fid"]
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)
    assert real["precision"] > 0.7 and real["recall"] > 0.7
    assert bad["precision"] < 0.05 and bad["recall"] < 0.05
    assert bad["kid_mean"] > 10 * abs(real["kid_mean"])
    assert real["num_generated"] == 360 and real["num_reference"] == 500 and real["prc_k"] == 3
    assert real["implementation"].startswith("torch-fidelity")
    assert real["backbone_fid"].startswith(M.DIGITS_EXTRACTOR) and real["backbone_prc"] == real["backbone_fid"]
    assert list(real) == ["fid", "kid_mean", "kid_std", "precision", "recall", "backbone_fid", "backbone_prc",
                          "implementation", "num_generated", "num_reference", "prc_k", "kid_subset_size",
                          "kid_subsets", "sample_format", "reference_split"]  # the paper set's keys, then how the
    #                                                                samples and the reference were taken


def test_fid_equals_direct_frechet(cache, results, digits):
    train, test, noise = digits
    model, _ = M.digits_classifier(cache)

    def features(x):  # independent of the torch-fidelity path: grey in [-1, 1] straight into the network
        with torch.no_grad():
            return model.features(x.float().mean(1, keepdim=True) / 127.5 - 1.0).double().numpy()

    ref = M.feature_statistics(features(train))
    for gen, key in ((test, "real"), (noise, "noise")):
        direct = M.frechet_distance(*M.feature_statistics(features(gen)), *ref)
        assert results[key]["fid"] == pytest.approx(direct, rel=1e-4)
    assert torch.allclose(M.extract_features(test, cache_dir=cache).double(), torch.from_numpy(features(test)),
                          rtol=1e-5, atol=1e-5)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a, b, m = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5), rng.normal(size=5)
    expected = m @ m + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(np.zeros(5), np.diag(a), m, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]  # rotation-invariant
    got = M.frechet_distance(np.zeros(5), q @ np.diag(a) @ q.T, q @ m, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_rgb_input_matches_grey(cache, results, digits):
    train, test, _ = digits
    grey = results["real"]
    rgb = M.compute_metrics(test.expand(-1, 3, -1, -1), train, dataset="digits", cfg=CFG, cache_dir=cache)
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert rgb[key] == pytest.approx(grey[key], rel=1e-6, abs=1e-9)


def test_kid_subset_lowered_for_small_sets(cache, classifier_path, digits):
    train, test, _ = digits
    out = M.compute_metrics(test[:40], train[:60], dataset="digits", cfg=M.MetricsConfig(kid_subsets=5),
                            cache_dir=cache)
    assert out["kid_subset_size"] == 40 and np.isfinite(out["kid_mean"])
    out = M.compute_metrics(test[:40], train[:60], dataset="digits",
                            cfg=M.MetricsConfig(kid_subset_size=25, kid_subsets=5), cache_dir=cache)
    assert out["kid_subset_size"] == 25
    with pytest.raises(ValueError, match="at least"):
        M.compute_metrics(test[:3], train, dataset="digits", cfg=CFG, cache_dir=cache)


def test_reference_cache_key(cache, results, digits):
    train, test, _ = digits
    names = sorted(p.name for p in (cache / "fidelity").iterdir())
    key = f"digits-{dataset_fingerprint(train)}-32x32-n500-{M.DIGITS_EXTRACTOR}"
    assert any(n.startswith(key) and "stat-fid" in n for n in names)
    changed = train.clone()
    changed[0, 0, 10, 10] ^= 1  # one grey level: a new fingerprint, so no stale statistics are reused
    after = M.compute_metrics(test, changed, dataset="digits", cfg=CFG, cache_dir=cache)["fid"]
    assert len(list((cache / "fidelity").iterdir())) > len(names) and after != results["real"]["fid"]


def test_bad_inputs_and_config(cache, digits):
    _, test, _ = digits
    with pytest.raises(ValueError, match="uint8"):
        M.compute_metrics(test.float(), test, dataset="digits", cfg=CFG, cache_dir=cache)
    with pytest.raises(ValueError, match="backbone"):
        M.compute_metrics(test, test, dataset="digits", cfg=M.MetricsConfig(backbone="resnet"), cache_dir=cache)
    assert M.check_metrics_config(M.MetricsConfig()) == []
    assert len(M.check_metrics_config(M.MetricsConfig(prc_neighborhood=0, inception_weights="/nonexistent"))) == 2
    assert M.resolve_backbone("auto", "digits") == "digits-classifier"
    assert M.resolve_backbone("auto", "cifar10") == "inception-vgg16"


def test_missing_local_weights_raise_clear_error(tmp_path, digits):
    _, test, _ = digits
    cfg = M.MetricsConfig(inception_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(M.MetricsError, match=r"eval\.metrics\.inception_weights"):
        M.compute_metrics(test[:10], test[:10], dataset="cifar10", cfg=cfg, cache_dir=tmp_path)
    present = tmp_path / "inception.pth"
    present.write_bytes(b"")  # resolved before any network use; VGG16 is resolved next
    cfg = M.MetricsConfig(inception_weights=str(present), vgg16_weights=str(tmp_path / "no-vgg.pth"))
    with pytest.raises(M.MetricsError, match=r"eval\.metrics\.vgg16_weights"):
        M.compute_metrics(test[:10], test[:10], dataset="cifar10", cfg=cfg, cache_dir=tmp_path)


def test_offline_download_raises_clear_error(tmp_path, monkeypatch, digits):
    if online():
        pytest.skip("network reachable: the offline error path cannot be exercised without a download")
    _, test, _ = digits
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no cached weights there
    with pytest.raises(M.MetricsError, match=r"set eval\.metrics\.inception_weights to its path") as e:
        M.compute_metrics(test[:10], test[:10], dataset="cifar10", cfg=M.MetricsConfig(), cache_dir=tmp_path)
    assert "weights-inception-2015-12-05" in str(e.value)


def test_jpeg_sample_format_is_the_papers_file_round_trip(cache, results, digits):
    """sample_format jpeg: each generated sample as PIL writes and reads a .jpg at its default quality (what
    torchvision's save_image to a .jpg file does); the reference images are not touched; recorded in the protocol."""
    import io

    from PIL import Image

    _, test, _ = digits
    rgb = torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    for x in (test[:3], rgb):
        y = M.jpeg_roundtrip(x)
        assert y.dtype == torch.uint8 and y.shape == x.shape and not torch.equal(x, y)  # lossy
        arr = x[0].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="JPEG", quality=75)
        direct = np.asarray(Image.open(io.BytesIO(buf.getvalue()))).reshape(arr.shape)
        assert np.array_equal(y[0].permute(1, 2, 0).numpy(), direct)  # PIL's default quality is 75
    cfg = M.MetricsConfig(kid_subsets=20, sample_format="jpeg")
    q = M.compute_metrics(test, test, dataset="digits", cfg=cfg, cache_dir=cache)
    assert q["sample_format"].startswith("jpeg: each generated sample through a JPEG round trip")
    assert results["same"]["sample_format"].startswith("uint8") and results["same"]["fid"] < 1e-3
    assert q["fid"] > 10 * max(results["same"]["fid"], 1e-6)  # the samples moved, the reference set did not
    assert q["reference_split"] == "train"
    assert M.check_metrics_config(M.MetricsConfig(sample_format="png")) == [
        "eval.metrics.sample_format='png'; valid: uint8, jpeg"]
