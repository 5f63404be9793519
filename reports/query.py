"""MLflow queries shared by the tables and the plots.

One row per FINISHED run that carries a ``variant`` tag (grid parents and report runs have none), with its
latest metric values, its seed and its measurement protocol. Runs measured under different protocols (data set,
scale, metric backbone, sample count, timing device, timing batch) are never aggregated together.

Selection rule: the latest FINISHED run per (protocol, variant, seed); the seeds are then aggregated into
mean, standard deviation (ddof 1) and count.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from bench.tracking import tracking_uri

__all__ = ["METRICS", "PRESET_OF", "Protocol", "load_runs", "select_latest", "aggregate", "protocols",
           "metric_history", "convergence", "log_report_artifacts", "natural_key"]

# Metrics read from every run (the latest value: the evaluation is logged at the final training step).
METRICS = ("fid", "kid_mean", "kid_std", "precision", "recall", "nfe", "gflops_per_sample", "params_generator",
           "params_discriminator", "params_denoiser", "time_mean_s", "time_std_s", "time_median_s", "time_min_s",
           "time_max_s", "train_steps", "train_epochs", "train_wall_clock_s", "train_images_per_s",
           "train_s_per_epoch")

# The paper configuration a data set runs (bench.registry.DATASET_PRESETS); identity otherwise.
PRESET_OF = {"digits": "cifar10"}

REPORT_TAG = "wavebench.report"


@dataclass(frozen=True)
class Protocol:
    """How a measured number was obtained; runs share a table column only when all fields agree."""
    dataset: str         # data set tag (digits, cifar10, ...)
    scale: str           # tiny | paper
    backbone: str        # metric_backbone tag (digits-classifier | inception-vgg16)
    samples: str         # eval.metrics.num_samples (generated samples per FID)
    timing_device: str   # device, its name and (on CPU) the thread count
    timing_batch: str    # eval.timing.batch_size (images per timed sampler call)

    def key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def label(self) -> str:
        return (f"{self.dataset}, scale {self.scale}, metrics {self.backbone} on {self.samples} samples, "
                f"timing {self.timing_device}, batch {self.timing_batch}")

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.dataset}-{self.scale}-{self.backbone}").strip("-")


def _device_label(tags: dict) -> str:
    device = tags.get("device", "") or "?"
    name = tags.get("timing_device", "")
    threads = tags.get("timing_threads", "")
    parts = [p for p in (name, f"{threads} threads" if threads and device.startswith("cpu") else "") if p]
    return f"{device} ({', '.join(parts)})" if parts else device


def natural_key(s: str) -> list:
    """'ddim-100' after 'ddim-20'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


_BASE_COLUMNS = ["run_id", "run_name", "start_time", "status", "variant", "dataset", "scale", "family", "paper",
                 "published_row", "seed", "parent_run_id", "grid", "backbone", "backbone_fid", "implementation",
                 "samples", "timing_device", "timing_batch", "timing_repeats", "timing_warmup", "protocol", "params"]


def load_runs(experiment: str = "wavebench", *, datasets: list[str] | None = None,
              variants: list[str] | None = None, filter_string: str | None = None,
              run_ids: list[str] | None = None, uri: str | None = None) -> pd.DataFrame:
    """Every FINISHED run with a variant tag in ``experiment`` (optionally restricted), one row each.

    ``filter_string`` is an MLflow search filter ANDed with the status filter (e.g. ``tags.grid = 'ablation'``);
    ``run_ids`` keeps only those runs (an empty list keeps none).
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    cols = _BASE_COLUMNS + list(METRICS)
    if exp is None or (run_ids is not None and not run_ids):
        return pd.DataFrame(columns=cols)
    clauses = ["attributes.status = 'FINISHED'"]
    if filter_string:
        clauses.append(filter_string)
    if run_ids:
        clauses.append("attributes.run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")")
    if datasets and len(datasets) == 1:
        clauses.append(f"tags.dataset = '{datasets[0]}'")
    records, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], " and ".join(clauses), max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            rec = _record(run)
            if rec is not None:
                records.append(rec)
        token = page.token
        if not token:
            break
    df = pd.DataFrame(records, columns=cols)
    if datasets:
        df = df[df["dataset"].isin(datasets)]
    if variants:
        df = df[df["variant"].isin(variants)]
    return df.reset_index(drop=True)


def _record(run) -> dict | None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    variant = tags.get("variant", "")
    if not variant:
        return None
    seed = params.get("seed")
    proto = Protocol(dataset=tags.get("dataset", "?"), scale=tags.get("scale", params.get("scale", "?")),
                     backbone=tags.get("metric_backbone", "?") or "?",
                     samples=params.get("eval.metrics.num_samples", "?"), timing_device=_device_label(tags),
                     timing_batch=params.get("eval.timing.batch_size", "?"))
    rec = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "start_time": run.info.start_time,
        "status": run.info.status, "variant": variant, "dataset": proto.dataset, "scale": proto.scale,
        "family": tags.get("family", ""), "paper": tags.get("paper", ""),
        "published_row": tags.get("published_row", ""),
        "seed": int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else seed,
        "parent_run_id": tags.get("mlflow.parentRunId", ""), "grid": tags.get("grid", ""),
        "backbone": proto.backbone, "backbone_fid": tags.get("metric_backbone_fid", ""),
        "implementation": tags.get("metric_implementation", ""), "samples": proto.samples,
        "timing_device": proto.timing_device, "timing_batch": proto.timing_batch,
        "timing_repeats": params.get("eval.timing.repeats", "?"),
        "timing_warmup": params.get("eval.timing.warmup", "?"),
        "protocol": proto, "params": dict(params),
    }
    for m in METRICS:
        rec[m] = float(metrics[m]) if m in metrics else np.nan
    return rec


def select_latest(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest run per (protocol, variant, seed)."""
    if runs.empty:
        return runs
    key = runs["protocol"].map(lambda p: p.key())
    df = runs.assign(_key=key, _seed=runs["seed"].astype(str))
    df = df.sort_values("start_time", ascending=False).drop_duplicates(["_key", "variant", "_seed"])
    return df.drop(columns=["_key", "_seed"]).sort_values("start_time").reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, variant): ``<metric>_mean``, ``<metric>_std`` (NaN for one seed), ``n``, seeds, run ids.

    Call on :func:`select_latest`'s output.
    """
    out = []
    if runs.empty:
        return pd.DataFrame(columns=["protocol", "variant", "n"])
    for (_, variant), g in runs.groupby([runs["protocol"].map(lambda p: p.key()), "variant"], sort=False):
        first = g.iloc[-1]
        rec = {"protocol": first["protocol"], "variant": variant, "dataset": first["dataset"],
               "scale": first["scale"], "family": first["family"], "published_row": first["published_row"],
               "n": len(g), "seeds": sorted(g["seed"].tolist(), key=str), "run_ids": g["run_id"].tolist(),
               "params": first["params"], "backbone_fid": first["backbone_fid"],
               "implementation": first["implementation"], "timing_repeats": first["timing_repeats"],
               "timing_warmup": first["timing_warmup"]}
        for m in METRICS:
            vals = g[m].astype(float).dropna().to_numpy()
            rec[f"{m}_mean"] = float(vals.mean()) if len(vals) else np.nan
            rec[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else np.nan
            rec[f"{m}_n"] = len(vals)
        out.append(rec)
    return pd.DataFrame(out)


def protocols(runs: pd.DataFrame) -> list[Protocol]:
    """The distinct protocols of ``runs``, in a stable order (data set, scale, backbone, ...)."""
    found = {p.key(): p for p in runs["protocol"]} if not runs.empty else {}
    return [found[k] for k in sorted(found, key=lambda k: [natural_key(x) for x in k])]


def metric_history(run_id: str, key: str, uri: str | None = None) -> pd.DataFrame:
    """(step, value, timestamp) of one metric of one run."""
    hist = _client(uri).get_metric_history(run_id, key)
    return pd.DataFrame([(m.step, m.value, m.timestamp) for m in hist], columns=["step", "value", "timestamp"])


def convergence(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """FID against training wall-clock for every run: the ``fid_intermediate`` history (FID during training,
    ``eval.every_steps``) plus the final ``fid`` at a step the history lacks, joined on step with the
    ``train_wall_clock_s`` history (the value logged at the same step)."""
    rows = []
    for _, r in runs.iterrows():
        inter = metric_history(r["run_id"], "fid_intermediate", uri)
        final = metric_history(r["run_id"], "fid", uri)
        fid = pd.concat([inter, final[~final["step"].isin(inter["step"])]]) if not inter.empty else final
        wall = metric_history(r["run_id"], "train_wall_clock_s", uri)
        if fid.empty or wall.empty:
            continue
        fid = fid.sort_values("timestamp").drop_duplicates("step", keep="last")
        wall = wall.sort_values("timestamp").drop_duplicates("step", keep="last")
        j = fid.merge(wall, on="step", suffixes=("_fid", "_wall"))
        for _, p in j.iterrows():
            rows.append({"run_id": r["run_id"], "variant": r["variant"], "seed": r["seed"],
                         "protocol": r["protocol"], "step": int(p["step"]), "fid": p["value_fid"],
                         "train_wall_clock_s": p["value_wall"]})
    cols = ["run_id", "variant", "seed", "protocol", "step", "fid", "train_wall_clock_s"]
    return pd.DataFrame(rows, columns=cols).sort_values(["run_id", "step"]).reset_index(drop=True)


def log_report_artifacts(paths: list[Path], experiment: str = "wavebench", uri: str | None = None,
                         artifact_path: str = "reports") -> str:
    """Logs files to the experiment's run named "report" (created on first use); returns its run id."""
    from bench.tracking import get_experiment_id

    client = _client(uri)
    exp_id = get_experiment_id(experiment, uri)
    found = client.search_runs([exp_id], f"tags.`{REPORT_TAG}` = 'true'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    run_id = found[0].info.run_id if found else client.create_run(
        exp_id, run_name="report", tags={REPORT_TAG: "true"}).info.run_id
    for p in paths:
        client.log_artifact(run_id, str(p), artifact_path)
    client.set_terminated(run_id, status="FINISHED")
    return run_id
