"""Names the suite agrees on everywhere, in one module that imports nothing heavy (reports and the tuner read it
without torch): the metrics a job logs, with the direction they improve in; their renames; the metric sets'
scores; which paper configuration (and so which table) each data set preset runs. README "Metric names" explains
each metric's unit and scope.
"""
from __future__ import annotations

__all__ = ["SCORE_KEYS", "QUALITY_METRICS", "INTERMEDIATE_METRICS", "SAMPLING_KEYS", "RENAMED_METRICS",
           "FINAL_METRICS", "OBJECTIVE_METRICS", "REPORT_METRICS", "PAPER_PRESET", "paper_preset", "PRECISIONS"]

# The numerics a training run (train.precision) or an evaluation (eval.precision) may ask for; bench.train.autocast
# turns one into its autocast context.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

# Per metric set, the keys of bench.metrics.compute_metrics' result that are scores (the rest is protocol).
SCORE_KEYS: dict[str, tuple[str, ...]] = {
    "paper": ("fid", "kid_mean", "kid_std", "precision", "recall"),
    "dinov2": ("fd_dinov2", "precision_dinov2", "recall_dinov2", "density_dinov2", "coverage_dinov2"),
    # Inception-v3 features on any data set; precision/recall also come from the paper set with pr_backbone: inception
    "inception": ("fid_inception", "kid_inception_mean", "kid_inception_std", "precision_inception",
                  "recall_inception"),
}
QUALITY_METRICS: tuple[str, ...] = SCORE_KEYS["paper"] + SCORE_KEYS["dinov2"] + SCORE_KEYS["inception"]

# The distance measured during training (eval.every_steps), per set: FID when the paper set is on.
INTERMEDIATE_METRICS: dict[str, str] = {"paper": "fid_intermediate", "dinov2": "fd_dinov2_intermediate"}

# bench.evaluate.time_sampler's keys -> the metric names a job logs (seconds per sampler call on a batch).
SAMPLING_KEYS: dict[str, str] = {"time_mean_s": "sampling_s_per_batch_mean", "time_std_s": "sampling_s_per_batch_std",
                                 "time_median_s": "sampling_s_per_batch_median",
                                 "time_min_s": "sampling_s_per_batch_min", "time_max_s": "sampling_s_per_batch_max"}

# Old metric name -> new one: runs logged before a rename are still read under the new name.
RENAMED_METRICS: dict[str, str] = {
    **SAMPLING_KEYS,                       # seconds per sampler call on eval.timing.batch_size images
    "sec_per_step": "train_s_per_step",    # seconds per optimisation step (bench.train)
}

# The final metrics of a job (logged once, at its last training step) -> the direction they improve in.
FINAL_METRICS: dict[str, str] = {
    **{k: "maximize" if k.startswith(("precision", "recall", "density", "coverage")) else "minimize"
       for k in QUALITY_METRICS},
    **{name: "minimize" for name in SAMPLING_KEYS.values()},
    "sampling_s_per_sample": "minimize", "gflops_per_sample": "minimize", "nfe": "minimize",
    "params_generator": "minimize", "params_discriminator": "minimize", "params_denoiser": "minimize",
    "train_steps": "maximize", "train_epochs": "maximize", "train_wall_clock_s": "minimize",
    "train_images_per_s": "maximize", "train_s_per_epoch": "minimize",
}

# What the tuner may optimise: a final metric that says something about a trial's outcome.
OBJECTIVE_METRICS: dict[str, str] = {k: v for k, v in FINAL_METRICS.items()
                                     if not k.startswith(("params_", "train_steps", "train_epochs"))}

# What the reports read from every run: the final metrics except the dinov2 set's (aggregated per DINOv2 model,
# reports/query.py), and the old names of renamed ones.
REPORT_METRICS: tuple[str, ...] = tuple(k for k in FINAL_METRICS if k not in SCORE_KEYS["dinov2"]) + \
    tuple(old for old, new in RENAMED_METRICS.items() if new in FINAL_METRICS)

# The paper configuration (and table) a data set preset runs; identity for every other preset. digits (1 x 32 x 32,
# embedded) runs the CIFAR-10 configurations unchanged.
PAPER_PRESET: dict[str, str] = {"digits": "cifar10"}


def paper_preset(dataset: str) -> str:
    return PAPER_PRESET.get(dataset, dataset)
