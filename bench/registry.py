"""The registry: variant name -> typed configuration + family. Its keys are the command-line choices and the MLflow
``variant`` tag; every one of them is written out below (grep finds each name).

    python -m bench.registry list [--dataset cifar10] [--json]
    python -m bench.registry show NAME [--dataset cifar10] [--scale paper]

``list`` prints every variant with its paper, its network's parameter count at that data set's paper
configuration, GFLOPs per network call at batch 1 (2 x multiply-adds), NFE and the published table row it
reproduces. ``show`` prints one variant's whole definition: the resolved config, the classes and functions it
builds (file:line), its paper and published row, parameters and FLOPs (bench/describe.py).

A variant = a name, a family (bench/families.py: derived keys, checks, the system it builds, its training loop),
and a ``configure(preset, scale)`` that gives its model, training and evaluation configs from the paper tables
below. Variants whose resolved configs are the same share one job hash (and one training): the hashes hold the
family, not the name.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from bench.config import (ConfigError, EvalConfig, RunConfig, apply_overrides, canonical, config_hash, to_dict,
                          unflatten)
from bench.data import DataConfig, check_data_config, dataset_channels
from bench.families import DIFFUSION, DVDP, GAN, Family  # noqa: F401 (registry.GAN ...)
from bench.metrics import check_metrics_config
from bench.sampling import EVAL_PRECISIONS
from bench.schema import paper_preset
from bench.systems import DiffusionModelConfig, GANModelConfig
from bench.train import DiffusionTrainConfig, GANTrainConfig, check_train_config
from models.ddgan import DDGANScheduleConfig
from models.discriminator import DiscriminatorConfig
from models.ddpm import DDPMConfig
from models.dvdp import DVDPConfig
from models.ncsnpp import NCSNppConfig
from models.ukan import UKANConfig
from models.unet import UNetConfig

__all__ = ["Variant", "VARIANTS", "DATASET_PRESETS", "SCALES", "default_config", "resolve", "build", "family",
           "train_hash", "job_hash", "from_dict", "evaluation_prerequisites", "describe", "main"]

SCALES = ("tiny", "paper")

# Data set presets: the data config, and which paper configuration applies (bench.schema.paper_preset: `digits`,
# 1x32x32 and embedded, runs every CIFAR-10 configuration unchanged; only the channel count differs).
DATASET_PRESETS: dict[str, tuple[DataConfig, str]] = {name: (data, paper_preset(name)) for name, data in {
    "digits": DataConfig(name="digits", resolution=32),
    "cifar10": DataConfig(name="cifar10", resolution=32, hflip=True),
    "stl10": DataConfig(name="image-folder", resolution=64, hflip=True),
    "celebahq256": DataConfig(name="image-folder", resolution=256, hflip=True),
    "celebahq512": DataConfig(name="image-folder", resolution=512, hflip=True),
    "celebahq1024": DataConfig(name="image-folder", resolution=1024, hflip=True),
    "lsun_church": DataConfig(name="image-folder", resolution=256, hflip=True),
}.items()}


@dataclass(frozen=True)
class Variant:
    name: str                     # command-line choice and MLflow tag
    family: Family                # derived keys, checks, system, training loop (bench/families.py)
    paper: str                    # where the method comes from
    summary: str                  # one line: what this variant is
    published_row: str | None     # the model name of the published table row it reproduces
    configure: Callable[[str, str], tuple[Any, Any, dict]]   # (paper data set key, scale) -> model, train, eval
    trains_as: str | None = None  # evaluation-only variants reuse this variant's trained checkpoint


# ============================================================================================== GAN family
# Paper configurations (PAPERS.md sections 1-2). gen: nf, ch_mult, attn, n_mlp; disc: kind, layers; T.
_GAN_PAPER: dict[str, dict[str, dict]] = {
    "ddgan": {
        "cifar10": dict(nf=128, ch_mult=(1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        # STL-10 at 64 px: the CIFAR-10 generator widths one level deeper (UNVERIFIED: not in PAPERS.md).
        "stl10": dict(nf=128, ch_mult=(1, 1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        "celebahq256": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 6)),
        "lsun_church": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=4, disc=("large", 6)),
    },
    "wavediff": {
        "cifar10": dict(nf=128, ch_mult=(1, 2, 2), attn=(), n_mlp=4, T=4, disc=("small", 3)),
        "stl10": dict(nf=128, ch_mult=(1, 2, 2, 2), attn=(16,), n_mlp=4, T=4, disc=("small", 4)),
        "celebahq256": dict(nf=64, ch_mult=(1, 2, 2, 2, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 5)),
        "celebahq512": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(16,), n_mlp=3, T=2, disc=("large", 6)),
        "celebahq1024": dict(nf=64, ch_mult=(1, 1, 2, 2, 4, 4), attn=(), n_mlp=3, T=2, disc=("large", 6),
                             patch_size=2),
        "lsun_church": dict(nf=64, ch_mult=(1, 2, 2, 2, 4), attn=(16,), n_mlp=3, T=4, disc=("large", 5)),
    },
}
# Training settings (PAPERS.md section 1 table; WaveDiff's scripts for batch sizes and epochs).
_GAN_TRAIN: dict[str, dict] = {
    "cifar10": dict(r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4, lr_d=1.25e-4, ema_decay=0.9999, batch_size=256,
                    max_epochs=1800),
    "stl10": dict(r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4, lr_d=1.25e-4, ema_decay=0.9999, batch_size=256,
                  max_epochs=900),
    "celebahq256": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=64,
                        max_epochs=500),
    "celebahq512": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=32,
                        max_epochs=500),
    "celebahq1024": dict(r1_gamma=2.0, lazy_reg=10, lr_g=2e-4, lr_d=1e-4, ema_decay=0.9999, batch_size=16,
                         max_epochs=500),
    "lsun_church": dict(r1_gamma=1.0, lazy_reg=10, lr_g=1.6e-4, lr_d=1e-4, ema_decay=0.999, batch_size=64,
                        max_epochs=500),
}
# CPU-sized: same code, smaller widths. Calibrated on 2 CPU cores (README "make demo").
_GAN_TINY = {
    "ddgan": dict(nf=32, ch_mult=(1, 2, 2), attn=(), n_mlp=2, T=4, disc=("small", 3), ngf=16),
    "wavediff": dict(nf=32, ch_mult=(1, 2, 2), attn=(), n_mlp=2, T=4, disc=("small", 3), ngf=16),
}
_GAN_TINY_TRAIN = dict(batch_size=64, r1_gamma=0.02, lazy_reg=15, lr_g=1.6e-4 * 4, lr_d=1.25e-4 * 4,
                       ema_decay=0.99, max_steps=400, checkpoint_every=200)

_WG_SWITCHES = ("wavelet_residual", "wavelet_updown", "wavelet_bottleneck")


def _gan_configure(base: str, lambda_rec: float, switches: tuple[str, ...] = ()):
    """Configuration factory for one GAN variant: ``base`` picks the architecture table (ddgan | wavediff)."""
    wavelet = 1 if base == "wavediff" else 0

    def configure(key: str, scale: str):
        table = _GAN_PAPER[base] if scale == "paper" else {k: _GAN_TINY[base] for k in _GAN_PAPER[base]}
        if key not in table:
            raise ConfigError([f"no paper configuration of this variant for data set preset {key!r}; "
                               f"available: {', '.join(table)}"])
        p = table[key]
        gen = NCSNppConfig(nf=p["nf"], ch_mult=p["ch_mult"], attn_resolutions=p["attn"], n_mlp=p["n_mlp"],
                           patch_size=p.get("patch_size", 1), num_res_blocks=p.get("num_res_blocks", 2),
                           **{s: (s in switches) for s in _WG_SWITCHES})
        side = DATASET_PRESETS[key][0].resolution // 2**wavelet  # placeholder until the data set is known
        disc = DiscriminatorConfig(kind=p["disc"][0], num_layers=p["disc"][1], ngf=p.get("ngf", 64), image_size=side)
        model = GANModelConfig(wavelet_levels=wavelet, schedule=DDGANScheduleConfig(num_timesteps=p["T"]),
                               generator=gen, discriminator=disc)
        train = GANTrainConfig(**(_GAN_TRAIN[key] if scale == "paper" else _GAN_TINY_TRAIN), lambda_rec=lambda_rec)
        return model, train, {}

    return configure


_DDGAN = "DDGAN (Xiao et al., ICLR 2022)"
_WAVEDIFF = "WaveDiff (Phung et al., CVPR 2023)"
VARIANTS: dict[str, Variant] = {}


def _register(v: Variant) -> None:
    VARIANTS[v.name] = v


_NO_UPDOWN = ("wavelet_residual", "wavelet_bottleneck")
_NO_RESIDUAL = ("wavelet_updown", "wavelet_bottleneck")
_NO_BOTTLENECK = ("wavelet_residual", "wavelet_updown")
_register(Variant("ddgan", GAN, _DDGAN, "pixel-space DDGAN, NCSN++ generator with adaptive GroupNorm", "DDGAN",
                  _gan_configure("ddgan", 0.0)))
_register(Variant("wavediff", GAN, _WAVEDIFF, "DDGAN on one-level Haar coefficients, plain generator, "
                  "reconstruction term", "WaveDiff", _gan_configure("wavediff", 1.0)))
_register(Variant("wavediff-wg", GAN, _WAVEDIFF, "WaveDiff with the wavelet-embedded generator (all three "
                  "components)", "WaveDiff + W-Generator", _gan_configure("wavediff", 1.0, _WG_SWITCHES)))
_register(Variant("wavediff-wg-no-residual", GAN, _WAVEDIFF, "W-Generator without the frequency residual "
                  "connection", "w/o residual", _gan_configure("wavediff", 1.0, _NO_RESIDUAL)))
_register(Variant("wavediff-wg-no-updown", GAN, _WAVEDIFF, "W-Generator without the frequency-aware down/up blocks",
                  "w/o up&down", _gan_configure("wavediff", 1.0, _NO_UPDOWN)))
_register(Variant("wavediff-wg-no-bottleneck", GAN, _WAVEDIFF, "W-Generator without the frequency bottleneck",
                  "w/o bottleneck", _gan_configure("wavediff", 1.0, _NO_BOTTLENECK)))
_register(Variant("wavediff-no-rec", GAN, _WAVEDIFF, "WaveDiff (plain generator) without the reconstruction term "
                  "(lambda_rec = 0)", None, _gan_configure("wavediff", 0.0)))

# ============================================================================================== DDPM family
# PAPERS.md sections 3 and 5. Denoiser tables: (kind, paper config per data set key, tiny config).
_UNET_PAPER = {
    # level 0 is the pixel DDPM baseline, sized like the level-1 WDDM UNet at full resolution.
    0: {"cifar10": dict(block_out_channels=(128, 256, 256), attention_levels=(True, True, False), dropout=0.1)},
    1: {"cifar10": dict(block_out_channels=(128, 256, 256), attention_levels=(True, True, False), dropout=0.1),
        "celebahq256": dict(block_out_channels=(128, 128, 256, 256, 256),
                            attention_levels=(False, False, True, True, False), dropout=0.0)},
    2: {"cifar10": dict(block_out_channels=(64, 128, 128), attention_levels=(True, False, False), dropout=0.1),
        "celebahq256": dict(block_out_channels=(64, 128, 128, 256), attention_levels=(False, True, False, False),
                            dropout=0.0)},
}
_UNET_TINY = dict(block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1, dropout=0.0,
                  norm_groups=8, attention_head_dim=8)
# WDDM's U-KAN configs ask for attention at level 0 at level 1 (the public code silently drops it; we honour it).
_UKAN_PAPER = {1: {"cifar10": dict(ch=128, ch_mult=(1, 2), attn=(0,), dropout=0.1)},
               2: {"cifar10": dict(ch=128, ch_mult=(1,), attn=(), dropout=0.1)}}
_UKAN_TINY = {1: dict(ch=32, ch_mult=(1, 2), attn=(), dropout=0.0), 2: dict(ch=32, ch_mult=(1,), attn=(), dropout=0.0)}
_DIFF_TRAIN = {"cifar10": dict(batch_size=512, max_epochs=3000),
               "celebahq256": dict(batch_size=64, max_epochs=500)}
_DIFF_TINY_TRAIN = dict(batch_size=64, lr=5e-4, warmup_steps=50, max_steps=400, checkpoint_every=200)


def _diffusion_configure(kind: str, levels: int, sampler: str = "ddpm", steps: int = 0,
                         spacing: str = "linear"):
    def configure(key: str, scale: str):
        if scale == "paper":
            table = (_UNET_PAPER if kind == "unet" else _UKAN_PAPER)[levels]
            if key not in table:
                raise ConfigError([f"no paper configuration of this variant for data set preset {key!r}; "
                                   f"available: {', '.join(table)}"])
            den = table[key]
            train = DiffusionTrainConfig(**_DIFF_TRAIN[key], image_loss_weight=1.0 if levels else 0.0)
        else:
            den = _UNET_TINY if kind == "unet" else _UKAN_TINY[levels]
            train = DiffusionTrainConfig(**_DIFF_TINY_TRAIN, image_loss_weight=1.0 if levels else 0.0)
        # in/out channels and image size are derived from the data set (placeholders here).
        denoiser = UNetConfig(in_channels=4**levels, image_size=32, **den) if kind == "unet" else \
            UKANConfig(in_channels=4**levels, out_channels=4**levels, image_size=32 // 2**levels, **den)
        model = DiffusionModelConfig(wavelet_levels=levels, process=DDPMConfig(beta_schedule="cosine"),
                                     denoiser=denoiser)
        return model, train, {"sampler": sampler, "steps": steps, "spacing": spacing}

    return configure


_DDPM = "DDPM (Ho et al., NeurIPS 2020)"
_DDIM = "DDIM (Song et al., ICLR 2021)"
_WDDM = "WDDM (Aivazoglou-Vounatsos and Mehdipour Ghazi, FAIEMA 2025)"

_DDIM_SUMMARY = "the trained ddpm model sampled with DDIM, {} steps, eta 0, quadratic sub-sequence"
_register(Variant("ddpm", DIFFUSION, _DDPM, "pixel-space DDPM, UNet (WDDM level-1 widths), 1000 ancestral steps",
                  "DDPM", _diffusion_configure("unet", 0)))
_register(Variant("ddim-10", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(10), "DDIM (10 steps)",
                  _diffusion_configure("unet", 0, "ddim", 10, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-20", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(20), "DDIM (20 steps)",
                  _diffusion_configure("unet", 0, "ddim", 20, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-50", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(50), "DDIM",
                  _diffusion_configure("unet", 0, "ddim", 50, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-100", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(100), "DDIM (100 steps)",
                  _diffusion_configure("unet", 0, "ddim", 100, "quadratic"), trains_as="ddpm"))
_WDDM_SUMMARY = "DDPM on level-{0} Haar coefficients / {1}, {2} denoiser"
_register(Variant("wddm-unet-l1", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(1, 2, "UNet"), "WDDM UNet L1",
                  _diffusion_configure("unet", 1)))
_register(Variant("wddm-unet-l2", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(2, 4, "UNet"), "WDDM UNet L2",
                  _diffusion_configure("unet", 2)))
_register(Variant("wddm-ukan-l1", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(1, 2, "U-KAN"), "WDDM UKAN L1",
                  _diffusion_configure("ukan", 1)))
_register(Variant("wddm-ukan-l2", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(2, 4, "U-KAN"), "WDDM UKAN L2",
                  _diffusion_configure("ukan", 2)))

# ============================================================================================== DVDP
# PAPERS.md section 4 (no public code; construction in docs/dvdp.md). The denoiser is the pixel DDPM UNet.


def _dvdp_configure(turning_points):
    base = _diffusion_configure("unet", 0)

    def configure(key: str, scale: str):
        model, train, ev = base(key, scale)
        proc = DVDPConfig(beta_schedule="cosine", turning_points=turning_points)
        return replace(model, process=proc), train, ev

    return configure


_DVDP = "DVDP (Zhang et al., CVPR 2023)"
_DVDP_SUMMARY = "dimensionality-varying DDPM, turning points {} (model.process.turning_points), pixel UNet"
# dvdp and dvdp-tp1 are the same configuration (the published table has a row for each): one job hash.
_register(Variant("dvdp", DVDP, _DVDP, _DVDP_SUMMARY.format([[500, 2]]), "DVDP", _dvdp_configure(((500, 2),))))
_register(Variant("dvdp-tp1", DVDP, _DVDP, _DVDP_SUMMARY.format([[500, 2]]), None, _dvdp_configure(((500, 2),))))
_register(Variant("dvdp-tp2", DVDP, _DVDP, _DVDP_SUMMARY.format([[400, 2], [700, 2]]), None,
                  _dvdp_configure(((400, 2), (700, 2)))))


# ============================================================================================== resolution

def _unknown_variant(name: str) -> str:
    return f"unknown variant {name!r}; valid: {', '.join(VARIANTS)}"


def default_config(variant: str, dataset: str = "digits", scale: str = "tiny") -> RunConfig:
    problems = []
    if variant not in VARIANTS:
        problems.append(_unknown_variant(variant))
    if dataset not in DATASET_PRESETS:
        problems.append(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_PRESETS)}")
    if scale not in SCALES:
        problems.append(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    if problems:
        raise ConfigError(problems)
    v = VARIANTS[variant]
    data, key = DATASET_PRESETS[dataset]
    model, train, eval_over = v.configure(key, scale)
    ev = apply_overrides(EvalConfig(), eval_over)
    if scale == "tiny":  # CPU-sized evaluation: the paper protocol's structure, fewer repetitions
        ev = replace(ev, timing=replace(ev.timing, warmup=2, repeats=5))
    return RunConfig(variant=variant, dataset=dataset, scale=scale, data=replace(data), model=model, train=train,
                     eval=ev)


def resolve(job: dict, check_paths: bool = True, allow_derived: bool = False) -> RunConfig:
    """One fully resolved, validated RunConfig from a job mapping (variant, dataset, scale + overrides).

    Raises :class:`ConfigError` listing every problem at once. ``allow_derived`` accepts the derived keys
    (channels, sizes): used to rebuild a config that was already resolved (see :func:`from_dict`).
    """
    job = unflatten(dict(job))
    if "variant" not in job:
        raise ConfigError([f"missing key 'variant'; valid variants: {', '.join(VARIANTS)}"])
    cfg = default_config(job.pop("variant"), job.pop("dataset", "digits"), job.pop("scale", "tiny"))
    fam = VARIANTS[cfg.variant].family
    problems: list[str] = []
    frozen = frozenset() if allow_derived else fam.derived_keys
    cfg = apply_overrides(cfg, job, problems=problems, frozen_keys=frozen)
    if check_paths:
        problems += check_data_config(cfg.data)
    if not problems:
        try:
            cfg = fam.derive(cfg, dataset_channels(cfg.data))
        except (ValueError, TypeError) as e:
            problems.append(str(e))
    if not problems:  # value checks need well-typed values
        problems += _check_values(cfg)
    if problems:
        raise ConfigError(problems)
    return canonical(cfg)  # the same hash here and after a JSON round trip in the job's process


def from_dict(d: dict) -> RunConfig:
    """Rebuild a resolved config from its dict form (a checkpoint's, a job's, an MLflow artifact's)."""
    return resolve(d, check_paths=False, allow_derived=True)


def _check_values(cfg: RunConfig) -> list[str]:
    p = []
    t = cfg.train
    if getattr(t, "batch_size", 1) < 1:
        p.append(f"train.batch_size must be >= 1, got {t.batch_size}")
    if getattr(t, "lambda_rec", 0.0) < 0:
        p.append(f"train.lambda_rec must be >= 0, got {t.lambda_rec}")
    budgets = [getattr(t, k, None) for k in ("max_steps", "max_epochs", "max_minutes")]
    if all(b is None for b in budgets):
        p.append("no training budget: set one of train.max_steps, train.max_epochs, train.max_minutes")
    if any(b is not None and b < 0 for b in budgets):
        p.append("training budgets must be >= 0")
    p += check_train_config(t)
    if cfg.eval.precision not in EVAL_PRECISIONS:
        p.append(f"eval.precision={cfg.eval.precision!r}; valid: {', '.join(EVAL_PRECISIONS)}")
    p += check_metrics_config(cfg.eval.metrics)
    if cfg.eval.metrics.backbone == "digits-classifier" and cfg.data.name != "digits":
        p.append("eval.metrics.backbone=digits-classifier only applies to the digits data set")
    p += family(cfg).check(cfg)
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda")):
        p.append(f"device={cfg.device!r}; valid: auto, cpu, cuda, cuda:N")
    if cfg.processes < 1:
        p.append(f"processes must be >= 1, got {cfg.processes}")
    elif cfg.processes > 1:
        if getattr(t, "batch_size", 0) % cfg.processes:
            p.append(f"train.batch_size={t.batch_size} is not divisible by processes={cfg.processes} "
                     "(the batch size counts all processes together)")
        if cfg.device.startswith("cuda:"):
            p.append(f"device={cfg.device!r} pins one GPU; with processes={cfg.processes} use auto or cuda "
                     "(each process takes the GPU of its local rank)")
    return p


_PREREQUISITE_FAILURES: dict[tuple, list[str]] = {}  # this process's failed look-ups (a download is not retried)


def evaluation_prerequisites(cfg: RunConfig, *, allow_download: bool = True) -> list[str]:
    """What a job needs to evaluate and does not have, found before it trains: the metric backbones' weights
    (:func:`bench.metrics.metrics_prerequisites`: the configured path, torch hub's cache, else a download with a
    timeout) and the data set (:func:`bench.data.check_data_config`). Nothing is loaded and no feature is computed.
    Empty when ``eval.quality`` is false (no metric is computed). The grid runner calls it for every job before
    submitting anything (exit 2), and every job again before it trains (so a cluster job fails in seconds)."""
    from torch.hub import get_dir

    from bench.metrics import metrics_prerequisites

    problems = check_data_config(cfg.data)
    if not cfg.eval.quality:
        return problems
    m = cfg.eval.metrics
    sets = (m.sets,) if isinstance(m.sets, str) else tuple(m.sets)
    key = (cfg.data.name, sets, m.backbone, m.inception_weights, m.vgg16_weights, m.pr_backbone, m.dinov2_model,
           m.dinov2_weights, get_dir(), allow_download)
    if metrics_prerequisites(m, cfg.data.name, allow_download=False) and key in _PREREQUISITE_FAILURES:
        return problems + _PREREQUISITE_FAILURES[key]  # still missing: the download failed a moment ago
    missing = metrics_prerequisites(m, cfg.data.name, allow_download=allow_download)
    if missing:
        _PREREQUISITE_FAILURES[key] = missing
    return problems + missing


def family(cfg: RunConfig) -> Family:
    """The family of a config's variant (its system, checks and training loop)."""
    return VARIANTS[cfg.variant].family


def build(cfg: RunConfig):
    """The system (networks + process) of a resolved config."""
    return family(cfg).build(cfg)


def train_hash(cfg: RunConfig) -> str:
    """Identifies a training run: what is trained, on what, how (not how it is evaluated or where it runs). The
    family, not the variant's name: variants that train the same thing (ddpm and its ddim-N evaluations, dvdp and
    dvdp-tp1) share one training."""
    d = to_dict(cfg)
    return config_hash({"family": family(cfg).name, "dataset": cfg.dataset, "scale": cfg.scale,
                        "seed": cfg.seed, "processes": cfg.processes, "data": d["data"], "model": d["model"],
                        "train": d["train"]})


def job_hash(cfg: RunConfig) -> str:
    """Identifies a job: the whole resolved config, with the family in place of the variant's name (two names
    for one configuration are one job)."""
    return config_hash({**to_dict(cfg), "variant": family(cfg).name})


def describe(name: str, dataset: str = "cifar10") -> dict:
    """Paper-configuration facts of one variant on one data set preset (see bench/describe.py)."""
    from bench.describe import describe as _describe

    return _describe(name, dataset)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.registry list|show`` (bench/describe.py)."""
    from bench.describe import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
