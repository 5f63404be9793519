"""The registry: variant name -> typed configuration + family. Its keys are the command-line choices and the MLflow
``variant`` tag; every one of them is written out below (grep finds each name).

    python -m bench.registry list [--dataset cifar10] [--json]
    python -m bench.registry show NAME [--dataset cifar10] [--scale paper]

``list`` prints every variant with its paper, its network's parameter count at that data set's paper
configuration, GFLOPs per network call at batch 1 (2 x multiply-adds), NFE and the published table row it
reproduces. ``show`` prints one variant's whole definition: the resolved config, the classes and functions it
builds (file:line), its paper and published row, parameters and FLOPs (bench/describe.py).

A variant = a name, a family (bench/families/<name>.py: its configs, system, training step, checks and paper
tables), and a ``configure(preset, scale)`` from that family's module that gives the variant's model, training and
evaluation configs. Variants whose resolved configs are the same share one job hash (and one training): the hashes
hold the family, not the name.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable

from bench.config import (ConfigError, EvalConfig, RunConfig, apply_overrides, canonical, config_hash, to_dict,
                          unflatten)
from bench.data import DATASET_PRESETS, check_data_config, dataset_channels
from bench.families import DIFFUSION, DVDP, FAMILIES, GAN, Family, diffusion, dvdp, gan  # noqa: F401
from bench.metrics import check_metrics_config
from bench.metrics_config import metric_sets
from bench.schema import PRECISIONS
from bench.train import check_train_config

__all__ = ["Variant", "VARIANTS", "DATASET_PRESETS", "SCALES", "default_config", "resolve", "build", "family",
           "train_hash", "job_hash", "from_dict", "evaluation_prerequisites"]

SCALES = ("tiny", "paper")



@dataclass(frozen=True)
class Variant:
    name: str                     # command-line choice and MLflow tag
    family: Family                # configs, system, training step, checks (bench/families/<name>.py)
    paper: str                    # where the method comes from
    summary: str                  # one line: what this variant is
    published_row: str | None     # the model name of the published table row it reproduces
    configure: Callable[[str, str], tuple[Any, Any, dict]]   # (paper data set key, scale) -> model, train, eval
    trains_as: str | None = None  # evaluation-only variants reuse this variant's trained checkpoint


# ============================================================================================== the variants
# One line each: name, family, paper, summary, published row, paper configuration (the family module's
# ``configure`` factory, over its paper tables).

VARIANTS: dict[str, Variant] = {}


def _register(v: Variant) -> None:
    VARIANTS[v.name] = v


_DDGAN = "DDGAN (Xiao et al., ICLR 2022)"
_WAVEDIFF = "WaveDiff (Phung et al., CVPR 2023)"
_WG = gan.WG_SWITCHES
_NO_UPDOWN = ("wavelet_residual", "wavelet_bottleneck")
_NO_RESIDUAL = ("wavelet_updown", "wavelet_bottleneck")
_NO_BOTTLENECK = ("wavelet_residual", "wavelet_updown")
_register(Variant("ddgan", GAN, _DDGAN, "pixel-space DDGAN, NCSN++ generator with adaptive GroupNorm", "DDGAN",
                  gan.configure("ddgan", 0.0)))
_register(Variant("wavediff", GAN, _WAVEDIFF, "DDGAN on one-level Haar coefficients, plain generator, "
                  "reconstruction term", "WaveDiff", gan.configure("wavediff", 1.0)))
_register(Variant("wavediff-wg", GAN, _WAVEDIFF, "WaveDiff with the wavelet-embedded generator (all three "
                  "components)", "WaveDiff + W-Generator", gan.configure("wavediff", 1.0, _WG)))
_register(Variant("wavediff-wg-no-residual", GAN, _WAVEDIFF, "W-Generator without the frequency residual "
                  "connection", "w/o residual", gan.configure("wavediff", 1.0, _NO_RESIDUAL)))
_register(Variant("wavediff-wg-no-updown", GAN, _WAVEDIFF, "W-Generator without the frequency-aware down/up blocks",
                  "w/o up&down", gan.configure("wavediff", 1.0, _NO_UPDOWN)))
_register(Variant("wavediff-wg-no-bottleneck", GAN, _WAVEDIFF, "W-Generator without the frequency bottleneck",
                  "w/o bottleneck", gan.configure("wavediff", 1.0, _NO_BOTTLENECK)))
_register(Variant("wavediff-no-rec", GAN, _WAVEDIFF, "WaveDiff (plain generator) without the reconstruction term "
                  "(lambda_rec = 0)", None, gan.configure("wavediff", 0.0)))

_DDPM = "DDPM (Ho et al., NeurIPS 2020)"
_DDIM = "DDIM (Song et al., ICLR 2021)"
_WDDM = "WDDM (Aivazoglou-Vounatsos and Mehdipour Ghazi, FAIEMA 2025)"
_DDIM_SUMMARY = "the trained ddpm model sampled with DDIM, {} steps, eta 0, quadratic sub-sequence"
_register(Variant("ddpm", DIFFUSION, _DDPM, "pixel-space DDPM, UNet (WDDM level-1 widths), 1000 ancestral steps",
                  "DDPM", diffusion.configure("unet", 0)))
_register(Variant("ddim-10", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(10), "DDIM (10 steps)",
                  diffusion.configure("unet", 0, "ddim", 10, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-20", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(20), "DDIM (20 steps)",
                  diffusion.configure("unet", 0, "ddim", 20, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-50", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(50), "DDIM",
                  diffusion.configure("unet", 0, "ddim", 50, "quadratic"), trains_as="ddpm"))
_register(Variant("ddim-100", DIFFUSION, _DDIM, _DDIM_SUMMARY.format(100), "DDIM (100 steps)",
                  diffusion.configure("unet", 0, "ddim", 100, "quadratic"), trains_as="ddpm"))
_WDDM_SUMMARY = "DDPM on level-{0} Haar coefficients / {1}, {2} denoiser"
_register(Variant("wddm-unet-l1", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(1, 2, "UNet"), "WDDM UNet L1",
                  diffusion.configure("unet", 1)))
_register(Variant("wddm-unet-l2", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(2, 4, "UNet"), "WDDM UNet L2",
                  diffusion.configure("unet", 2)))
_register(Variant("wddm-ukan-l1", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(1, 2, "U-KAN"), "WDDM UKAN L1",
                  diffusion.configure("ukan", 1)))
_register(Variant("wddm-ukan-l2", DIFFUSION, _WDDM, _WDDM_SUMMARY.format(2, 4, "U-KAN"), "WDDM UKAN L2",
                  diffusion.configure("ukan", 2)))

_DVDP = "DVDP (Zhang et al., CVPR 2023)"
_DVDP_SUMMARY = "dimensionality-varying DDPM, turning points {} (model.process.turning_points), pixel UNet"
# dvdp and dvdp-tp1 are the same configuration (the published table has a row for each): one job hash.
_register(Variant("dvdp", DVDP, _DVDP, _DVDP_SUMMARY.format([[500, 2]]), "DVDP", dvdp.configure(((500, 2),))))
_register(Variant("dvdp-tp1", DVDP, _DVDP, _DVDP_SUMMARY.format([[500, 2]]), None, dvdp.configure(((500, 2),))))
_register(Variant("dvdp-tp2", DVDP, _DVDP, _DVDP_SUMMARY.format([[400, 2], [700, 2]]), None,
                  dvdp.configure(((400, 2), (700, 2)))))


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
        problems += check_data_config(cfg.data) + cfg.init.problems()
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
    if t.batch_size < 1:
        p.append(f"train.batch_size must be >= 1, got {t.batch_size}")
    budgets = [getattr(t, k, None) for k in ("max_steps", "max_epochs", "max_minutes")]
    if all(b is None for b in budgets):
        p.append("no training budget: set one of train.max_steps, train.max_epochs, train.max_minutes")
    if any(b is not None and b < 0 for b in budgets):
        p.append("training budgets must be >= 0")
    p += check_train_config(t)
    if cfg.eval.precision not in PRECISIONS:
        p.append(f"eval.precision={cfg.eval.precision!r}; valid: {', '.join(PRECISIONS)}")
    p += check_metrics_config(cfg.eval.metrics)
    if cfg.eval.metrics.backbone == "digits-classifier" and cfg.data.name != "digits":
        p.append("eval.metrics.backbone=digits-classifier only applies to the digits data set")
    p += family(cfg).check(cfg)
    if not (cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda")):
        p.append(f"device={cfg.device!r}; valid: auto, cpu, cuda, cuda:N")
    if cfg.processes < 1:
        p.append(f"processes must be >= 1, got {cfg.processes}")
    elif cfg.processes > 1:
        if t.batch_size % cfg.processes:
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
    sets = metric_sets(m)
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
    """Identifies a training run: what is trained, on what, how, from which weights (not how it is evaluated or
    where it runs). The family, not the variant's name: variants that train the same thing (ddpm and its ddim-N
    evaluations, dvdp and dvdp-tp1) share one training."""
    d = _without_neutral_keys(to_dict(cfg))
    return config_hash({"family": family(cfg).name, "dataset": cfg.dataset, "scale": cfg.scale,
                        "seed": cfg.seed, "processes": cfg.processes, "data": d["data"], "model": d["model"],
                        "train": d["train"], **({"init": d["init"]} if "init" in d else {})})


# Config keys added after runs were logged, with the value every earlier run had: a config that holds that value
# hashes as it did before the key existed, so its FINISHED runs are still found (and not trained again). A section
# that only such keys make up (``init``) is left out with them.
HASH_NEUTRAL_KEYS: dict[str, Any] = {"eval.metrics.pr_backbone": "vgg16", "eval.metrics.sample_format": "uint8",
                                     "init.weights": "", "train.cuda_graphs": False,
                                     "train.fast_sums": False}


def _without_neutral_keys(d: dict) -> dict:
    for dotted, value in HASH_NEUTRAL_KEYS.items():
        *path, last = dotted.split(".")
        nodes = [d]
        for k in path:
            nodes.append(nodes[-1].get(k, {}))
        if nodes[-1].get(last, object()) == value:
            del nodes[-1][last]
            for parent, k, node in reversed(list(zip(nodes[:-1], path, nodes[1:]))):
                if node:
                    break
                del parent[k]  # a section left empty
    return d


def job_hash(cfg: RunConfig) -> str:
    """Identifies a job: the whole resolved config, with the family in place of the variant's name (two names
    for one configuration are one job); keys at their :data:`HASH_NEUTRAL_KEYS` value are left out."""
    return config_hash(_without_neutral_keys({**to_dict(cfg), "variant": family(cfg).name}))


if __name__ == "__main__":  # `python -m bench.registry list|show`: served by the module that describes
    from bench.describe import main

    sys.exit(main())
