"""What a job's quality metrics are: the ``eval.metrics`` config, its metric sets and backbones. Torch-free: reading a
config imports no metric library (bench.metrics computes them)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRIC_SETS", "BACKBONES", "PR_BACKBONES", "SAMPLE_FORMATS", "MetricsConfig", "metric_sets",
           "resolve_backbone"]

METRIC_SETS = ("paper", "dinov2", "inception")
BACKBONES = ("auto", "digits-classifier", "inception-vgg16")
PR_BACKBONES = ("vgg16", "inception")
# What the generated samples are when their features are extracted: the uint8 images themselves, or each one after
# a JPEG round trip at PIL's default quality (how the DDGAN / WaveDiff / WDDM papers' FIDs were computed: samples
# saved as .jpg files by torchvision's save_image, then read back by pytorch-fid).
SAMPLE_FORMATS = ("uint8", "jpeg")


@dataclass
class MetricsConfig:
    num_samples: int = 1000             # generated samples per evaluation
    sets: tuple[str, ...] = ("paper",)  # metric sets: paper (FID/KID/PRC as the papers) | dinov2 (FD-DINOv2, PRDC)
    #                                     | inception (FID/KID/PRC in Inception-v3 features, beside paper or dinov2)
    backbone: str = "auto"              # paper set: auto | digits-classifier | inception-vgg16 (auto: digits on digits)
    inception_weights: str | None = None  # Inception-v3 weights (FID/KID); None = torch hub's cache, where
    #                                       python -m bench.backbones fetch inception puts them, else a download
    vgg16_weights: str | None = None    # local torchvision VGG16 state_dict (precision/recall); None = cache/download
    pr_backbone: str = "vgg16"          # paper set with Inception: precision/recall in vgg16 (the papers'; not
    #                                     measured when its weights are absent) | inception (precision_inception)
    kid_subset_size: int = 1000         # KID subset size; lowered to the smaller set size when needed
    kid_subsets: int = 100              # KID subsets averaged (torch-fidelity's default)
    prc_neighborhood: int = 3           # k of the k-NN balls in precision/recall
    dinov2_model: str = "dinov2-vit-l-14"  # dinov2 set: dinov2-vit-s-14 | -b-14 | -l-14 | -g-14 (torch-fidelity's)
    dinov2_weights: str | None = None   # dinov2 set: the hub model's state_dict file, or a torch hub dir holding it
    dinov2_neighborhood: int = 5        # dinov2 set: k of precision/recall/density/coverage (dgm-eval's nearest_k)
    batch_size: int = 200               # feature-extraction batch size
    reference_split: str = "train"      # data split the generated samples are compared against
    sample_format: str = "uint8"        # uint8 (the samples as generated) | jpeg (each through a JPEG round trip at
    #                                     PIL's default quality first: the papers' published protocol)


def metric_sets(cfg: MetricsConfig) -> tuple[str, ...]:
    """``eval.metrics.sets`` as a tuple (a grid may give one set as a bare string)."""
    return (cfg.sets,) if isinstance(cfg.sets, str) else tuple(cfg.sets)


def resolve_backbone(backbone: str, dataset: str) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"eval.metrics.backbone={backbone!r} is not a backbone; valid: {', '.join(BACKBONES)}")
    if backbone == "auto":
        return "digits-classifier" if dataset == "digits" else "inception-vgg16"
    return backbone
