"""MLflow queries shared by the tables and the plots.

One row per FINISHED job run: a run that carries a ``variant`` tag and is neither a grid parent (tag
``kind=grid``), a tuning study (``kind=study``) nor a tuning trial (``kind=trial``: its lambda_rec is a search
point, not the variant's configuration); report runs have no variant tag. Each row has its latest metric values,
its seed, its experiment and its measurement protocol. Runs measured under different protocols (data set, scale,
metric backbone, sample count, timing device, timing batch) are never aggregated together.

Scope: every experiment of the store (one store = one place: ``make demo``'s experiment ``demo`` and the grids'
``wavebench`` alike) except the speed benchmark's (``perf``), or one experiment when it is named.

Selection rule: the latest FINISHED run per (protocol, variant, seed), whichever experiment it is in; the seeds
are then aggregated into mean, standard deviation (ddof 1) and count.

The ``dinov2`` metric set (:data:`DINOV2_METRICS`, ``eval.metrics.sets: [paper, dinov2]``) is measured beside the
paper set on the same generated samples, so it does not split a protocol: a run without it stays in its section.
Its features are part of its own protocol, though: per (protocol, variant) its values are aggregated separately
for each DINOv2 model (``dinov2`` column of :func:`aggregate`), never across models. The model is read from the tag
``metric_backbone_dinov2`` when the run has one, else from the run's configured ``eval.metrics.dinov2_model``,
else it is :data:`DINOV2_NOT_RECORDED`.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from bench.schema import RENAMED_METRICS, REPORT_METRICS, SCORE_KEYS
from bench.tracking import tracking_uri

__all__ = ["METRICS", "DINOV2_METRICS", "DINOV2_NOT_RECORDED", "NOT_ROWS", "OTHER_EXPERIMENTS",
           "DEFAULT_REPORT_EXPERIMENT", "Protocol",
           "scope_label", "load_runs", "select_latest", "aggregate", "protocols", "metric_history",
           "CONVERGENCE_COLUMNS", "convergence", "log_report_artifacts", "log_report_and_say",
           "natural_key"]

# Metrics read from every run (the latest value: the evaluation is logged at the final training step).
# Renamed metrics (bench.tracking.RENAMED_METRICS) are read under their new names, from the old name when a run
# was logged before the rename; the old names stay readable too.
METRICS = REPORT_METRICS

# The dinov2 metric set (bench.metrics.SCORE_KEYS["dinov2"]), read from every run that logged it; aggregated per
# DINOv2 model (see the module doc), so they are not in METRICS.
DINOV2_METRICS = SCORE_KEYS["dinov2"]
DINOV2_NOT_RECORDED = "DINOv2 (backbone not recorded)"


REPORT_TAG = "wavebench.report"
# Runs with a variant tag that are not job runs (tag ``kind``): grid parents, tuning studies and their trials.
NOT_ROWS = ("grid", "study", "trial")
# Experiments read only when named: the speed benchmark's runs measure the code, not a variant.
OTHER_EXPERIMENTS = ("perf",)
# The experiment report runs are logged to when none is named.
DEFAULT_REPORT_EXPERIMENT = "wavebench"


@dataclass(frozen=True)
class Protocol:
    """How a measured number was obtained; runs share a table column only when all fields agree."""
    dataset: str         # data set tag (digits, cifar10, ...)
    scale: str           # tiny | paper
    backbone: str        # metric_backbone tag (digits-classifier | inception-vgg16)
    samples: str         # eval.metrics.num_samples (generated samples per FID)
    timing_device: str   # device, its name and (on CPU) the thread count
    timing_batch: str    # eval.timing.batch_size (images per timed sampler call)
    precision: str = "fp32/fp32"  # train.precision / eval.precision (runs before these keys: fp32)
    sample_format: str = "uint8"  # eval.metrics.sample_format: uint8 | jpeg (the papers' JPEG round trip)

    def key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))

    def label(self) -> str:
        numerics = "" if self.precision == "fp32/fp32" else \
            ", precision train {} / sampling {}".format(*self.precision.split("/"))
        jpeg = "" if self.sample_format == "uint8" else f", samples through {self.sample_format} (the papers' way)"
        return (f"{self.dataset}, scale {self.scale}, metrics {self.backbone} on {self.samples} samples{jpeg}, "
                f"timing {self.timing_device}, batch {self.timing_batch}{numerics}")

    def slug(self) -> str:
        numerics = "" if self.precision == "fp32/fp32" else "-" + self.precision.replace("/", "-")
        numerics += "" if self.sample_format == "uint8" else "-" + self.sample_format
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.dataset}-{self.scale}-{self.backbone}{numerics}").strip("-")


def _device_label(tags: dict) -> str:
    device = tags.get("device", "") or "?"
    name = tags.get("timing_device", "")
    threads = tags.get("timing_threads", "")
    parts = [p for p in (name, f"{threads} threads" if threads and device.startswith("cpu") else "") if p]
    return f"{device} ({', '.join(parts)})" if parts else device


def public_row_variant(variant: str, source: str) -> str:
    """The table row key of runs that evaluated the papers' public weights (tag ``weights_source``): never merged
    with the variant's trained runs."""
    return f"{variant} [public weights: {source}]"


def natural_key(s: str) -> list:
    """'ddim-100' after 'ddim-20'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]


def _client(uri: str | None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


_BASE_COLUMNS = ["run_id", "run_name", "experiment", "start_time", "status", "variant", "base_variant", "origin",
                 "weights_source", "weights_sha256", "weights_file", "weights_where", "dataset", "scale",
                 "family", "paper", "published_row", "seed", "parent_run_id", "grid", "backbone", "backbone_fid",
                 "backbone_prc", "implementation", "samples", "timing_device", "timing_batch", "timing_repeats",
                 "timing_warmup", "protocol", "params", "dinov2_model", "backbone_dinov2"]


def scope_label(experiment: str | None) -> str:
    """"experiment 'demo'" or "every experiment of the store" (for headers and messages)."""
    return f"experiment '{experiment}'" if experiment else "every experiment of the MLflow store"


def _experiments(client, experiment: str | None) -> dict[str, str]:
    """experiment id -> name: the named one (none when it does not exist), else every active one but
    :data:`OTHER_EXPERIMENTS`."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        return {exp.experiment_id: exp.name} if exp is not None else {}
    return {e.experiment_id: e.name for e in client.search_experiments() if e.name not in OTHER_EXPERIMENTS}


def load_runs(experiment: str | None = None, *, datasets: list[str] | None = None,
              variants: list[str] | None = None, filter_string: str | None = None,
              run_ids: list[str] | None = None, uri: str | None = None) -> pd.DataFrame:
    """Every FINISHED job run (see the module doc) of ``experiment`` (None: every experiment but ``perf``),
    optionally restricted, one row each.

    ``filter_string`` is an MLflow search filter ANDed with the status filter (e.g. ``tags.grid = 'ablation'``);
    ``run_ids`` keeps only those runs (an empty list keeps none).
    """
    client = _client(uri)
    exps = _experiments(client, experiment)
    cols = _BASE_COLUMNS + list(METRICS) + list(DINOV2_METRICS)
    if not exps or (run_ids is not None and not run_ids):
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
        page = client.search_runs(list(exps), " and ".join(clauses), max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        for run in page:
            rec = _record(run, exps.get(run.info.experiment_id, "?"))
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


def _record(run, experiment: str) -> dict | None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    variant = tags.get("variant", "")
    if not variant or tags.get("kind") in NOT_ROWS:
        return None
    seed = params.get("seed")
    proto = Protocol(dataset=tags.get("dataset", "?"), scale=tags.get("scale", params.get("scale", "?")),
                     backbone=tags.get("metric_backbone", "?") or "?",
                     samples=params.get("eval.metrics.num_samples", "?"), timing_device=_device_label(tags),
                     timing_batch=params.get("eval.timing.batch_size", "?"),
                     precision=f"{params.get('train.precision', 'fp32')}/{params.get('eval.precision', 'fp32')}",
                     sample_format=params.get("eval.metrics.sample_format", "uint8"))
    source = tags.get("weights_source", "")
    rec = {
        "run_id": run.info.run_id, "run_name": run.info.run_name, "experiment": experiment,
        "start_time": run.info.start_time,
        "status": run.info.status, "variant": public_row_variant(variant, source) if source else variant,
        "base_variant": variant, "origin": "public" if source else "trained", "weights_source": source,
        "weights_sha256": tags.get("weights_sha256", ""), "weights_file": tags.get("weights_file", ""),
        "weights_where": tags.get("weights_where", ""), "dataset": proto.dataset, "scale": proto.scale,
        "family": tags.get("family", ""), "paper": tags.get("paper", ""),
        "published_row": tags.get("published_row", ""),
        "seed": int(seed) if seed is not None and str(seed).lstrip("-").isdigit() else seed,
        "parent_run_id": tags.get("mlflow.parentRunId", ""), "grid": tags.get("grid", ""),
        "backbone": proto.backbone, "backbone_fid": tags.get("metric_backbone_fid", ""),
        "backbone_prc": tags.get("metric_backbone_prc", ""),  # VGG16, the FID's backbone, or "not measured: ..."
        "implementation": tags.get("metric_implementation", ""), "samples": proto.samples,
        "timing_device": proto.timing_device, "timing_batch": proto.timing_batch,
        "timing_repeats": params.get("eval.timing.repeats", "?"),
        "timing_warmup": params.get("eval.timing.warmup", "?"),
        "protocol": proto, "params": dict(params),
    }
    for m in METRICS + DINOV2_METRICS:
        rec[m] = float(metrics[m]) if m in metrics else np.nan
    for old, new in RENAMED_METRICS.items():  # a run logged before the renames
        if new in rec and np.isnan(rec[new]) and old in metrics:
            rec[new] = float(metrics[old])
    logged = any(m in metrics for m in DINOV2_METRICS)
    rec["dinov2_model"], rec["backbone_dinov2"] = _dinov2_backbone(tags, params) if logged else ("", "")
    return rec


def _dinov2_backbone(tags: dict, params: dict) -> tuple[str, str]:
    """(model, description) of the DINOv2 features of a run's dinov2 metrics: the tag ``metric_backbone_dinov2``
    (bench.metrics' ``backbone_dinov2``: "<model> (<features>; weights <file> <fingerprint>)"), else the run's
    configured ``eval.metrics.dinov2_model`` (the model bench.metrics loads; its weights file is not recorded),
    else :data:`DINOV2_NOT_RECORDED`."""
    tag = (tags.get("metric_backbone_dinov2") or "").strip()
    if tag:
        return tag.split(" (")[0].strip() or tag, tag
    model = (params.get("eval.metrics.dinov2_model") or "").strip()
    if model:
        return model, f"{model} (eval.metrics.dinov2_model of the run's config; weights not recorded)"
    return DINOV2_NOT_RECORDED, DINOV2_NOT_RECORDED


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
               "base_variant": first["base_variant"], "origin": first["origin"],
               **{k: first[k] for k in ("weights_source", "weights_sha256", "weights_file", "weights_where")},
               "n": len(g), "seeds": sorted(g["seed"].tolist(), key=str), "run_ids": g["run_id"].tolist(),
               "experiments": sorted(set(g["experiment"])),
               "params": first["params"], "backbone_fid": first["backbone_fid"], "backbone_prc": first["backbone_prc"],
               "implementation": first["implementation"], "timing_repeats": first["timing_repeats"],
               "timing_warmup": first["timing_warmup"]}
        for m in METRICS:
            rec.update(_stats(g[m], m))
        rec["dinov2"] = _dinov2_stats(g)
        out.append(rec)
    return pd.DataFrame(out)


def _stats(values: pd.Series, key: str) -> dict:
    vals = values.astype(float).dropna().to_numpy()
    return {f"{key}_mean": float(vals.mean()) if len(vals) else np.nan,
            f"{key}_std": float(vals.std(ddof=1)) if len(vals) > 1 else np.nan, f"{key}_n": len(vals)}


def _dinov2_stats(g: pd.DataFrame) -> dict[str, dict]:
    """DINOv2 model -> the dinov2 metrics of the runs of ``g`` measured with it (``<metric>_mean``, ``_std``,
    ``_n``), the paper ``fid`` of the same runs (so both rankings rest on one set of runs), ``n`` (runs),
    ``backbones`` (their descriptions), ``k`` (``eval.metrics.dinov2_neighborhood``) and ``run_ids``."""
    out: dict[str, dict] = {}
    for model, r in g[g["dinov2_model"].astype(str) != ""].groupby("dinov2_model", sort=True):
        rec: dict = {"n": len(r), "backbones": sorted(set(r["backbone_dinov2"])), "run_ids": r["run_id"].tolist(),
                     "k": sorted({str(p.get("eval.metrics.dinov2_neighborhood", "?")) for p in r["params"]})}
        for m in DINOV2_METRICS + ("fid",):
            rec.update(_stats(r[m], m))
        out[str(model)] = rec
    return out


def protocols(runs: pd.DataFrame) -> list[Protocol]:
    """The distinct protocols of ``runs``, in a stable order (data set, scale, backbone, ...)."""
    found = {p.key(): p for p in runs["protocol"]} if not runs.empty else {}
    return [found[k] for k in sorted(found, key=lambda k: [natural_key(x) for x in k])]


def metric_history(run_id: str, key: str, uri: str | None = None) -> pd.DataFrame:
    """(step, value, timestamp) of one metric of one run."""
    hist = _client(uri).get_metric_history(run_id, key)
    return pd.DataFrame([(m.step, m.value, m.timestamp) for m in hist], columns=["step", "value", "timestamp"])


CONVERGENCE_COLUMNS = ["run_id", "variant", "seed", "protocol", "kind", "samples", "step", "fid", "train_wall_clock_s"]


def _wall_at(wall: pd.DataFrame, step: int, timestamp: int) -> float:
    """The ``train_wall_clock_s`` logged with a value at ``step``: the one logged in the same call (same
    timestamp), else the last one logged at that step up to ``timestamp``, else the last one at that step."""
    w = wall[wall["step"] == step].sort_values("timestamp")
    if w.empty:
        return np.nan
    same = w[w["timestamp"] == timestamp]
    before = w[w["timestamp"] <= timestamp]
    return float((same if not same.empty else before if not before.empty else w)["value"].iloc[-1])


def convergence(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """FID during training for every run, one row per evaluated point, at its training step and training
    wall-clock (the ``train_wall_clock_s`` logged at the same step, in the same call where it was).

    Two protocols, never merged: ``kind = "intermediate"`` is the ``fid_intermediate`` history (every
    ``eval.every_steps``, on ``eval.every_num_samples`` samples), ``kind = "final"`` the run's final ``fid`` (on
    ``eval.metrics.num_samples`` samples, the table's number); ``samples`` says how many. A run that logged no
    intermediate FID gives its final point only."""
    rows = []
    for _, r in runs.iterrows():
        wall = metric_history(r["run_id"], "train_wall_clock_s", uri)
        if wall.empty:
            continue
        params = r["params"] or {}
        inter = metric_history(r["run_id"], "fid_intermediate", uri)
        final = metric_history(r["run_id"], "fid", uri).sort_values("timestamp").tail(1)
        for kind, hist, samples in (("intermediate", inter, params.get("eval.every_num_samples", "?")),
                                    ("final", final, r["samples"])):
            # A resumed run may log a step twice: the last value logged wins.
            for _, p in hist.sort_values("timestamp").drop_duplicates("step", keep="last").iterrows():
                w = _wall_at(wall, int(p["step"]), int(p["timestamp"]))
                if np.isfinite(w):
                    rows.append({"run_id": r["run_id"], "variant": r["variant"], "seed": r["seed"],
                                 "protocol": r["protocol"], "kind": kind, "samples": str(samples),
                                 "step": int(p["step"]), "fid": float(p["value"]), "train_wall_clock_s": w})
    df = pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)
    return df.sort_values(["run_id", "kind", "step"], ascending=[True, False, True]).reset_index(drop=True)


def log_report_artifacts(paths: list[Path], experiment: str | None = None, uri: str | None = None,
                         artifact_path: str = "reports") -> str:
    """Logs files to the experiment's run named "report" (created on first use; experiment ``wavebench`` when
    none is named); returns its run id."""
    from bench.tracking import get_experiment_id

    experiment = experiment or DEFAULT_REPORT_EXPERIMENT
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


def log_report_and_say(paths: list[Path], experiment: str | None = None) -> str:
    """:func:`log_report_artifacts`, then says on stderr where the files went (the report CLIs' ``--log``)."""
    run_id = log_report_artifacts(paths, experiment)
    print(f"logged to run {run_id} ('report') in experiment '{experiment or DEFAULT_REPORT_EXPERIMENT}'",
          file=sys.stderr)
    return run_id
