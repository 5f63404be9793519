"""Quality metrics (FID, KID, precision, recall), computed by torch-fidelity's own code.

Backbones: on ``digits`` a small CNN digit classifier that the suite trains once (seeded) and caches, registered
with torch-fidelity as the feature extractor ``wavebench-digits`` (FID, KID and precision/recall all use its
128-d penultimate layer); on real data sets ``inception-v3-compat`` (FID/KID, 2048-d pool3) and ``vgg16``
(precision/recall, ``fc2_relu``), from local weight files when configured, else downloaded.

Reference-side features and FID statistics are cached by torch-fidelity under ``<cache>/fidelity`` with a cache
name that holds the data set name, a content hash of the reference images, resolution, count and backbone.
The metrics themselves are pure functions of features (:func:`frechet_distance` is the independent check).
"""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.data import DataConfig, dataset_fingerprint, load_dataset, reference_uint8

__all__ = [
    "MetricsConfig", "MetricsError", "BACKBONES", "DIGITS_EXTRACTOR", "DigitClassifier", "DigitsFeatureExtractor",
    "compute_metrics", "frechet_distance", "feature_statistics", "extract_features", "digits_classifier",
    "digits_classifier_path", "default_cache_dir", "resolve_backbone", "reference_images", "check_metrics_config",
]

BACKBONES = ("auto", "digits-classifier", "inception-vgg16")
DIGITS_EXTRACTOR = "wavebench-digits"
CLASSIFIER_VERSION = 1  # bump when the architecture, training or feature definition changes
CLASSIFIER_MIN_ACCURACY = 0.95
CLASSIFIER_RESOLUTION = 32
IMPLEMENTATION = f"torch-fidelity {torch_fidelity.__version__}"
URL_VGG16 = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1
DOWNLOAD_TIMEOUT_S = 60.0


class MetricsError(RuntimeError):
    """A metric backbone that cannot be set up: names the file to provide and the config key to set."""


@dataclass
class MetricsConfig:
    num_samples: int = 1000             # generated samples per evaluation
    backbone: str = "auto"              # auto | digits-classifier | inception-vgg16 (auto: digits-classifier on digits)
    inception_weights: str | None = None  # local torch-fidelity Inception-v3 weights (FID/KID); None = download
    vgg16_weights: str | None = None    # local torchvision VGG16 state_dict (precision/recall); None = download
    kid_subset_size: int = 1000         # KID subset size; lowered to the smaller set size when needed
    kid_subsets: int = 100              # KID subsets averaged (torch-fidelity's default)
    prc_neighborhood: int = 3           # k of the k-NN balls in precision/recall
    batch_size: int = 200               # feature-extraction batch size
    reference_split: str = "train"      # data split the generated samples are compared against


def check_metrics_config(cfg: MetricsConfig, check_files: bool = True) -> list[str]:
    """Problems with a metrics config, found without computing anything."""
    problems = []
    if cfg.backbone not in BACKBONES:
        problems.append(f"eval.metrics.backbone={cfg.backbone!r} is not a backbone; valid: {', '.join(BACKBONES)}")
    if cfg.num_samples < 2:
        problems.append(f"eval.metrics.num_samples={cfg.num_samples} must be >= 2")
    if cfg.prc_neighborhood < 1:
        problems.append(f"eval.metrics.prc_neighborhood={cfg.prc_neighborhood} must be >= 1")
    if cfg.kid_subset_size < 2:
        problems.append(f"eval.metrics.kid_subset_size={cfg.kid_subset_size} must be >= 2")
    if cfg.kid_subsets < 1:
        problems.append(f"eval.metrics.kid_subsets={cfg.kid_subsets} must be >= 1")
    if cfg.batch_size < 1:
        problems.append(f"eval.metrics.batch_size={cfg.batch_size} must be >= 1")
    if cfg.reference_split not in ("train", "test"):
        problems.append(f"eval.metrics.reference_split={cfg.reference_split!r} must be 'train' or 'test'")
    for key in ("inception_weights", "vgg16_weights"):
        path = getattr(cfg, key)
        if check_files and path is not None and not Path(path).expanduser().is_file():
            problems.append(f"eval.metrics.{key}={path} is not a file")
    return problems


def default_cache_dir() -> Path:
    """``$WAVEBENCH_CACHE`` if set, else ``<repo>/.cache/wavebench``."""
    env = os.environ.get("WAVEBENCH_CACHE")
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache" / "wavebench"


def resolve_backbone(backbone: str, dataset: str) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"eval.metrics.backbone={backbone!r} is not a backbone; valid: {', '.join(BACKBONES)}")
    if backbone == "auto":
        return "digits-classifier" if dataset == "digits" else "inception-vgg16"
    return backbone


def reference_images(data: DataConfig, cfg: MetricsConfig) -> torch.Tensor:
    """The uint8 images (N, C, H, W) that generated samples are compared against."""
    return reference_uint8(load_dataset(data, cfg.reference_split))


# ------------------------------------------------------------------------------------ digit classifier

class DigitClassifier(nn.Module):
    """Three conv blocks on 16x16 grey input (the 8x8 digits carry no finer detail) and a 128-unit layer.

    Its features are that layer's pre-activations (no unit is dead), times ``feature_scale``, which training
    sets so that they have unit RMS over the train split (KID's polynomial kernel assumes O(1) features).
    """

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128, num_classes: int = 10):
        super().__init__()
        c1, c2, c3 = widths
        self.convs = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 -> 4
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4 -> 2
        )
        self.fc = nn.Linear(c3 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, 32, 32) in [-1, 1] -> (B, feature_dim)."""
        return self.fc(self.convs(F.avg_pool2d(x, 2)).flatten(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activation(x) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.pre_activation(x)))


def _uint8_to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W), C in {1, 3} -> grey float (B, 1, 32, 32) in [-1, 1]."""
    x = x.float().mean(dim=1, keepdim=True)
    if x.shape[-2:] != (CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION):
        x = F.interpolate(x, size=(CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION), mode="bilinear",
                          antialias=True, align_corners=False)
    return x / 127.5 - 1.0


def _state_fingerprint(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _train_digits_classifier(seed: int = 0, epochs: int = 15, batch: int = 64, lr: float = 3e-3):
    """Train on the digits train split (seeded, random shifts of up to 2 px); return (model, test accuracy).

    Runs on one CPU thread: the layers are too small to gain from more, and the result then does not depend
    on the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG state untouched
            return _train_digits_classifier_body(seed, epochs, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _train_digits_classifier_body(seed: int, epochs: int, batch: int, lr: float):
    data = DataConfig(name="digits", resolution=CLASSIFIER_RESOLUTION)
    train, test = load_dataset(data, "train"), load_dataset(data, "test")
    x_train = _uint8_to_classifier_input(reference_uint8(train))
    y_train = train.labels
    x_test, y_test = _uint8_to_classifier_input(reference_uint8(test)), test.labels

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(x_train) // batch))
    pad = 2
    padded = F.pad(x_train, (pad,) * 4, value=-1.0)
    n, size = len(x_train), CLASSIFIER_RESOLUTION
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            xb = torch.stack([padded[j, :, dy:dy + size, dx:dx + size]
                              for j, (dy, dx) in zip(idx.tolist(), shifts[idx].tolist())])
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        model.feature_scale.fill_(model.pre_activation(x_train).square().mean().rsqrt().item())
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return model, accuracy


TRAINING_RUNS = 0  # trainings done by this process (the cache is reused otherwise)


def digits_classifier_path(cache_dir: str | Path | None = None) -> Path:
    """The cached classifier checkpoint, training it first (a few seconds on CPU) when absent or outdated."""
    path = Path(cache_dir or default_cache_dir()) / f"digits_classifier_v{CLASSIFIER_VERSION}.pt"
    if path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if ckpt.get("version") == CLASSIFIER_VERSION and ckpt.get("test_accuracy", 0) >= CLASSIFIER_MIN_ACCURACY:
                return path
        except Exception:  # unreadable or partial file: retrain
            pass
    global TRAINING_RUNS
    TRAINING_RUNS += 1
    model, accuracy = _train_digits_classifier()
    if accuracy < CLASSIFIER_MIN_ACCURACY:
        raise MetricsError(f"digits classifier reached test accuracy {accuracy:.4f} < {CLASSIFIER_MIN_ACCURACY}")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = {"version": CLASSIFIER_VERSION, "state_dict": state, "test_accuracy": accuracy,
            "fingerprint": _state_fingerprint(state), "resolution": CLASSIFIER_RESOLUTION}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: concurrent jobs never see a partial file
    return path


def digits_classifier(cache_dir: str | Path | None = None) -> tuple[DigitClassifier, dict]:
    """The cached classifier in eval mode, and its checkpoint info (version, test_accuracy, fingerprint)."""
    ckpt = torch.load(digits_classifier_path(cache_dir), map_location="cpu", weights_only=True)
    model = DigitClassifier()
    model.load_state_dict(ckpt["state_dict"])
    model.eval().requires_grad_(False)
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


class DigitsFeatureExtractor(torch_fidelity.FeatureExtractorBase):
    """torch-fidelity extractor over :class:`DigitClassifier`; weights = the cached checkpoint path."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MetricsError(f"feature extractor {DIGITS_EXTRACTOR!r} needs feature_extractor_weights_path "
                               "(see bench.metrics.digits_classifier_path)")
        ckpt = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.net = DigitClassifier()
        self.net.load_state_dict(ckpt["state_dict"])
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] in (1, 3)):
            raise ValueError(f"expected uint8 (B, 3, H, W) images, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        pre = self.net.pre_activation(_uint8_to_classifier_input(x))
        out = {"penultimate": pre * self.net.feature_scale, "logits": self.net.head(F.relu(pre))}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "penultimate"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, CLASSIFIER_RESOLUTION, CLASSIFIER_RESOLUTION, dtype=torch.uint8)


if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)


# ------------------------------------------------------------------------------------ real-data weights

def _weights_file(configured: str | None, url: str, key: str, what: str) -> str:
    """A local weights file: the configured one, else torch hub's cached copy, else a fresh download."""
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise MetricsError(f"eval.metrics.{key}={configured} does not exist; provide the {what} weights file "
                               f"({Path(url).name}, from {url}) there")
        return str(path)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if path.is_file():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a dead network must fail, not hang
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as e:
        raise MetricsError(
            f"could not download the {what} weights ({type(e).__name__}: {e}). Provide the file "
            f"{Path(url).name} (from {url}) locally and set metrics.{key} to its path "
            f"(or place it at {path})"
        ) from e
    finally:
        socket.setdefaulttimeout(previous)
    return str(path)


def inception_weights_file(cfg: MetricsConfig) -> str:
    return _weights_file(cfg.inception_weights, URL_INCEPTION_V3, "inception_weights",
                         "torch-fidelity Inception-v3 (FID/KID)")


def vgg16_weights_file(cfg: MetricsConfig) -> str:
    return _weights_file(cfg.vgg16_weights, URL_VGG16, "vgg16_weights", "torchvision VGG16 (precision/recall)")


# ------------------------------------------------------------------------------------ features and metrics

class _Uint8Images(Dataset):
    """Items are bare uint8 (3, H, W) tensors (grey replicated to 3 channels), as torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        if not (torch.is_tensor(images) and images.dtype == torch.uint8 and images.dim() == 4
                and images.shape[1] in (1, 3)):
            raise ValueError(f"expected uint8 images (N, 1|3, H, W), got {getattr(images, 'dtype', type(images))} "
                             f"{tuple(getattr(images, 'shape', ()))}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), with scipy's matrix square root."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():  # singular product: regularise
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N-1)-normalised covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _fidelity_kwargs(device: str, batch_size: int) -> dict:
    # save_cpu_ram: no DataLoader worker processes (the images are in memory) and chunked k-NN distances
    return {"cuda": str(device).startswith("cuda"), "batch_size": batch_size, "verbose": False, "save_cpu_ram": True}


def extract_features(images: torch.Tensor, backbone: str = "digits-classifier", *, layer: str | None = None,
                     cfg: MetricsConfig | None = None, cache_dir: str | Path | None = None,
                     device: str = "cpu") -> torch.Tensor:
    """(N, D) float features of uint8 images through torch-fidelity's extraction path.

    ``backbone``: digits-classifier | inception (FID/KID features) | vgg16 (precision/recall features).
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cfg = cfg or MetricsConfig()
    if backbone == "digits-classifier":
        name, weights = DIGITS_EXTRACTOR, str(digits_classifier_path(cache_dir))
    elif backbone == "inception":
        name, weights = "inception-v3-compat", inception_weights_file(cfg)
    elif backbone == "vgg16":
        name, weights = "vgg16", vgg16_weights_file(cfg)
    else:
        raise ValueError(f"backbone={backbone!r}; valid: digits-classifier, inception, vgg16")
    kw = _fidelity_kwargs(device, cfg.batch_size)
    layer = layer or FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid" if name != "vgg16"
                                                                                             else "prc")
    fe = create_feature_extractor(name, [layer], feature_extractor_weights_path=weights, **kw)
    feats = get_featuresdict_from_dataset(_Uint8Images(images), fe, cfg.batch_size, kw["cuda"], True, False)
    return feats[layer]


def compute_metrics(generated: torch.Tensor, reference: torch.Tensor, *, dataset: str, cfg: MetricsConfig,
                    cache_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """FID, KID (mean, std), precision and recall of ``generated`` against ``reference`` (uint8 N,C,H,W).

    Returns the float metrics and the protocol they were measured under (backbones, implementation, counts,
    k, KID subset size). Reference features/statistics are cached; generated ones never are.
    """
    problems = check_metrics_config(cfg, check_files=False)  # missing weights: MetricsError below
    if problems:
        raise ValueError("; ".join(problems))
    gen_ds, ref_ds = _Uint8Images(generated), _Uint8Images(reference)
    n, m = len(gen_ds), len(ref_ds)
    k = cfg.prc_neighborhood
    if min(n, m) < max(2, k + 1):
        raise ValueError(f"need at least {max(2, k + 1)} images per set (prc_neighborhood={k}); got "
                         f"generated={n}, reference={m}")
    kid_subset = min(cfg.kid_subset_size, n, m)
    backbone = resolve_backbone(cfg.backbone, dataset)
    cache_root = Path(cache_dir or default_cache_dir())
    res = "x".join(str(s) for s in reference.shape[-2:])
    ref_key = f"{dataset}-{dataset_fingerprint(reference)}-{res}-n{m}"
    common = dict(input1=gen_ds, input2=ref_ds, cache_root=str(cache_root / "fidelity"),
                  kid_subset_size=kid_subset, kid_subsets=cfg.kid_subsets,
                  prc_neighborhood=k, **_fidelity_kwargs(device, cfg.batch_size))

    if backbone == "digits-classifier":
        weights = digits_classifier_path(cache_root)
        info = torch.load(weights, map_location="cpu", weights_only=True)
        tag = f"{DIGITS_EXTRACTOR}-v{CLASSIFIER_VERSION}-{info['fingerprint']}"
        out = torch_fidelity.calculate_metrics(
            fid=True, kid=True, prc=True, feature_extractor=DIGITS_EXTRACTOR,
            feature_extractor_weights_path=str(weights), input2_cache_name=f"{ref_key}-{tag}", **common)
        backbone_fid = backbone_prc = f"{tag} (penultimate, 128-d; digits test accuracy {info['test_accuracy']:.4f})"
    else:
        inception, vgg = inception_weights_file(cfg), vgg16_weights_file(cfg)
        out = torch_fidelity.calculate_metrics(
            fid=True, kid=True, feature_extractor="inception-v3-compat", feature_extractor_weights_path=inception,
            input2_cache_name=ref_key, **common)  # torch-fidelity appends the extractor name
        out.update(torch_fidelity.calculate_metrics(
            prc=True, feature_extractor="vgg16", feature_extractor_weights_path=vgg,
            input2_cache_name=ref_key, **common))
        backbone_fid, backbone_prc = "inception-v3-compat (pool3, 2048-d)", "vgg16 (fc2_relu, 4096-d, 224 px)"

    return {
        "fid": float(out[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(out[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(out[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision": float(out[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall": float(out[torch_fidelity.KEY_METRIC_RECALL]),
        "backbone_fid": backbone_fid,
        "backbone_prc": backbone_prc,
        "implementation": IMPLEMENTATION,
        "num_generated": n,
        "num_reference": m,
        "prc_k": k,
        "kid_subset_size": kid_subset,
        "kid_subsets": cfg.kid_subsets,
    }
