"""Paper-style comparison tables: this suite's measured runs (MLflow) beside the published numbers.

    python -m reports.table --dataset cifar10 [--table NAME|all] [--format md|latex|html|csv] [--wide]
                            [--experiment NAME] [--out DIR] [--filter "tags.grid = 'cifar10'"] [--measured-only]
                            [--metrics paper|dinov2] [--log]

Tables (``reports/published.yaml``): cifar10, stl10, celebahq256, celebahq512, celebahq1024, lsun_church,
ablation, wddm, dvdp, ddim. Published values sit in columns labelled "(published)", counts from the public code
in "(reference)", this suite's values in "(measured)"; they are never mixed. Measured runs are split into one
section per protocol (data set, scale, metric backbone, sample count, timing device, timing batch), each with
its protocol written under it; speed-ups are computed within a section only. The latest FINISHED run per
variant and seed is used, from every experiment of the store unless ``--experiment`` names one; several seeds
give mean +- standard deviation.

The default rendering is paper-width: the table's ``columns`` (published.yaml; FID, recall, NFE, sampling time
for the image tables), each published value beside its measured twin, and the measured speed-up, every number
rounded as the papers print it. ``--wide`` adds every other column (precision, KID, GFLOPs, parameters,
training wall-clock, reference counts, the published speed-up, the number of runs). ``--measured-only`` keeps
only the measured rows and columns (what ``make demo`` prints). CSV always carries every number.

``--metrics dinov2`` adds, after those columns, the runs' ``dinov2`` metric set (FD-DINOv2, and precision, recall,
density and coverage in DINOv2 features): measured only (the papers publish none), one group of five columns per
DINOv2 model a section's runs used, each header naming that model; the footer names its features, k and sample
counts. A run that did not log the set shows "not logged". Files get ``-dinov2`` in their name.
"""
from __future__ import annotations

import argparse
import html
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

from bench.tracking import REPO_ROOT
from reports import query
from bench.schema import PAPER_PRESET, paper_preset
from reports.query import Protocol

__all__ = ["PUBLISHED_YAML", "OUT_DIR", "FORMATS", "Measure", "MEASURES", "DINOV2_MEASURES", "METRIC_VIEWS", "Section",
           "Report", "load_published", "table_names", "table_for_dataset", "build_report", "render", "write_report",
           "main"]

PUBLISHED_YAML = Path(__file__).with_name("published.yaml")
OUT_DIR = REPO_ROOT / "reports" / "out"
FORMATS = {"md": "md", "latex": "tex", "html": "html", "csv": "csv"}
# The table a data set's runs belong to when --table is not given.

MISSING = "missing"        # a variant reproduces this row, but it has no FINISHED run in this protocol
NOT_REPRODUCED = "n/a"     # no variant of the suite reproduces this row
NOT_LOGGED = "not logged"  # the run exists but did not log this metric
NO_VALUE = "-"             # the source gives no value


# ============================================================================================== columns

def _fixed(d: int) -> Callable[[float], str]:
    return lambda v: f"{v:.{d}f}"


def _sig(v: float) -> str:
    """About three significant digits without scientific notation for the usual ranges."""
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 0.001 or a == 0:
        return f"{v:#.3g}"
    return f"{v:.2e}"


def _g(v: float) -> str:
    return f"{v:g}"


def _int(v: float) -> str:
    return f"{v:.0f}"


def _time_published(v: float) -> str:
    """Seconds as the WaveDiff tables print them: 0.08, 0.60, 8.79, 80.5, 423.2."""
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _time(v: float) -> str:
    """Measured seconds: the papers' rounding, with two significant digits below 0.1 s (0.0034, not 0.00)."""
    a = abs(v)
    if a >= 0.1 or a == 0 or not math.isfinite(v):
        return _time_published(v)
    return f"{v:.{1 - math.floor(math.log10(a))}f}"


@dataclass(frozen=True)
class Measure:
    label: str                              # column header before "(published)" / "(measured)"
    metrics: tuple[str, ...] = ()           # MLflow metrics, the first one a run logged is used
    fmt: Callable[[float], str] = _sig      # measured value -> text
    pub_fmt: Callable[[float], str] = _g    # published / reference value -> text
    scale: float = 1.0                      # applied to the measured value (e.g. 1e-6 for millions)
    short: str = ""                         # label in the paper-width view (default: ``label``)


MEASURES: dict[str, Measure] = {
    "fid": Measure("FID", ("fid",), _fixed(2), _fixed(2)),
    "recall": Measure("Recall", ("recall",), _fixed(2), _fixed(2)),
    "precision": Measure("Precision", ("precision",), _fixed(2), _fixed(2)),
    "kid": Measure("KID", ("kid_mean",), _fixed(4), _g),
    "nfe": Measure("NFE", ("nfe",), _int, _int),
    "time_s": Measure("Time (s/batch)", ("sampling_s_per_batch_mean", "time_mean_s"), _time, _time_published,
                      short="Time"),
    "gflops": Measure("GFLOPs/sample", ("gflops_per_sample",), _sig, _sig),
    "params": Measure("Params G/denoiser (M)", ("params_generator", "params_denoiser"), _fixed(2), _fixed(2), 1e-6,
                      short="Params (M)"),
    "params_d": Measure("Params D (M)", ("params_discriminator",), _fixed(2), _fixed(2), 1e-6),
    "train_min": Measure("Train wall-clock (min)", ("train_wall_clock_s",), _sig, _g, 1 / 60),
    "train_ips": Measure("Train throughput (img/s)", ("train_images_per_s",), _sig, _g, short="Train img/s"),
    "train_s_epoch": Measure("Train time (s/epoch)", ("train_s_per_epoch",), _sig, _g),
    "train_speedup": Measure("Training speed-up"),
    "fid_eta0": Measure("FID eta=0", (), _fixed(2), _fixed(2)),
    "fid_eta1": Measure("FID eta=1", (), _fixed(2), _fixed(2)),
    "fid_sigma_hat": Measure("FID sigma-hat", (), _fixed(2), _fixed(2)),
}


def _fd(v: float) -> str:
    """FD-DINOv2: two decimals (dgm-eval and EDM2 print e.g. 52.25), one from 1000 on."""
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.2f}"


# --metrics dinov2: measured-only columns, keyed by MLflow metric (query.DINOV2_METRICS). Density may exceed 1.
DINOV2_MEASURES: dict[str, Measure] = {
    "fd_dinov2": Measure("FD-DINOv2", ("fd_dinov2",), _fd),
    "precision_dinov2": Measure("Precision", ("precision_dinov2",), _fixed(2)),
    "recall_dinov2": Measure("Recall", ("recall_dinov2",), _fixed(2)),
    "density_dinov2": Measure("Density", ("density_dinov2",), _fixed(2)),
    "coverage_dinov2": Measure("Coverage", ("coverage_dinov2",), _fixed(2)),
}
METRIC_VIEWS = ("paper", "dinov2")   # --metrics: the papers' columns only, or those and the dinov2 set's
INFO_LABELS = {"level": "Level", "backbone": "Backbone", "turning_points": "Turning points", "steps": "Steps S"}
# The paper-width view's measures when a table names no ``columns``.
DEFAULT_COLUMNS = ("fid", "recall", "nfe", "time_s")


def _ratio_text(ratio: float, name: str | None) -> str:
    """2.86 -> "2.9x faster than DDGAN"; 0.5 -> "2.0x slower than DDGAN"; without a name: "2.9x faster"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return NO_VALUE
    word = "faster" if ratio >= 1 else "slower"
    r = ratio if ratio >= 1 else 1 / ratio
    text = f"{r:.0f}x {word}" if r >= 10 else f"{r:.1f}x {word}"
    return f"{text} than {name}" if name else text


# ============================================================================================== data

def load_published(path: str | Path = PUBLISHED_YAML) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def table_names(published: dict | None = None) -> list[str]:
    return list((published or load_published())["tables"])


def table_for_dataset(dataset: str | None, published: dict | None = None) -> str:
    """The main table a data set's runs belong to: digits -> cifar10, cifar10 -> cifar10; else cifar10."""
    names = table_names(published)
    return PAPER_PRESET.get(dataset or "", dataset if dataset in names else "cifar10")


@dataclass
class Section:
    heading: str                   # "Measured under: <protocol>" or the empty-store heading
    protocol: Protocol | None      # None when nothing was measured
    frame: pd.DataFrame            # display text, one row per table row
    data: pd.DataFrame             # the same rows as numbers (CSV)
    lines: list[str] = field(default_factory=list)   # protocol footer, fill-in commands


@dataclass
class Report:
    name: str
    title: str
    header: list[str]              # published source and protocol
    sections: list[Section]
    notes: list[str]
    experiment: str | None         # None: every experiment of the store
    datasets: list[str] | None
    measured_only: bool = False    # only measured rows and columns (no published or reference values)
    wide: bool = False             # every column, not only the paper-width ones
    metrics: str = "paper"         # METRIC_VIEWS: "dinov2" adds the dinov2 metric set's columns


@dataclass
class _Row:
    model: str
    spec: dict | None              # the published row (None for measured-only rows)
    variant: str | None            # the measured variant (or the expected one when missing)
    expected: list[str]            # the variants that reproduce this row
    status: str                    # ok | missing | n/a


def _assign_rows(spec: dict, agg: pd.DataFrame | None) -> list[_Row]:
    """The paper's rows in order (each with its measured variant, if any), then measured-only rows."""
    present = {} if agg is None else {r["variant"]: r for _, r in agg.iterrows()}
    listed = {v for r in spec["rows"] for v in r.get("variants") or []}
    used: set[str] = set()
    rows = []
    for r in spec["rows"]:
        cands = list(r.get("variants") or [])
        cands += sorted((v for v, a in present.items() if v not in listed and v not in cands
                         and a["published_row"] == r["model"]), key=query.natural_key)
        hit = next((v for v in cands if v in present and v not in used), None)
        if hit:
            used.add(hit)
        status = "ok" if hit else (MISSING if cands else NOT_REPRODUCED)
        rows.append(_Row(r["model"], r, hit or (cands[0] if cands else None), cands, status))
    extra = spec.get("extra", [])
    for v in sorted(set(present) - used, key=query.natural_key):
        if extra == "all" or v in (extra or []):
            rows.append(_Row(present[v]["published_row"] or v, None, v, [v], "ok"))
    return rows


def _measured(a: pd.Series | dict | None, m: Measure) -> tuple[float, float, int]:
    """(mean, std, n) of the first metric of ``m`` that the aggregated runs logged, scaled."""
    if a is None:
        return np.nan, np.nan, 0
    for k in m.metrics:
        mean = a.get(f"{k}_mean", np.nan)
        if mean is not None and np.isfinite(mean):
            std = a.get(f"{k}_std", np.nan)
            return mean * m.scale, (std * m.scale if np.isfinite(std) else np.nan), int(a.get(f"{k}_n", 1))
    return np.nan, np.nan, 0


def _measured_text(row: _Row, a: pd.Series | dict | None, m: Measure) -> str:
    if row.status != "ok" or a is None:
        return row.status if row.status != "ok" else MISSING
    mean, std, n = _measured(a, m)
    if not np.isfinite(mean):
        return NOT_LOGGED
    # Several seeds: mean ± std; values every seed shares (parameter counts, NFE) stay plain.
    return f"{m.fmt(mean)} ± {m.fmt(std)}" if n > 1 and np.isfinite(std) and std > 0 else m.fmt(mean)


def _published_value(row: _Row, key: str) -> float:
    v = None if row.spec is None else row.spec.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def _reference(pub: dict, dataset: str, variant: str | None, key: str) -> float:
    costs = (pub.get("reference_costs") or {}).get(paper_preset(dataset), {}).get(variant or "", {})
    if key == "gflops":
        nfe, fwd = costs.get("nfe"), costs.get("gflops_forward")
        return float(nfe) * float(fwd) if nfe is not None and fwd is not None else np.nan
    v = costs.get(key)
    return float(v) * 1e-6 if v is not None else np.nan


def _config_text(a: pd.Series | None, key: str) -> str:
    if a is None:
        return ""
    params = a["params"] or {}
    if key in params:
        return str(params[key])
    hits = [f"{k}={v}" for k, v in sorted(params.items()) if key in k]
    return "; ".join(hits)


def _column_plan(spec: dict, wide: bool = True) -> list[tuple[str, str]]:
    """(kind, key) in display order: published value, its measured twin, its reference, speed-ups.

    Not ``wide``: the paper-width view, the table's ``columns`` (else :data:`DEFAULT_COLUMNS`) in that order, each
    as published beside measured, the measured sampling speed-up after the measured time; no reference columns
    and no published speed-up."""
    plan: list[tuple[str, str]] = []
    published, measured = list(spec.get("published") or []), list(spec.get("measured") or [])
    reference = list(spec.get("reference") or [])
    for key in dict.fromkeys(published + measured):
        if key in published:
            plan.append(("published", key))
        if key == "train_speedup":
            plan.append(("train_speedup", key))
            continue
        if MEASURES[key].metrics and (key in measured or key in published):
            plan.append(("measured", key))
        if key in reference:
            plan.append(("reference", key))
        if key == "time_s" and spec.get("baseline"):
            if key in published:
                plan.append(("speedup_published", key))
            plan.append(("speedup_measured", key))
    for key in reference:
        if ("reference", key) not in plan:
            plan.append(("reference", key))
    if wide:
        return plan
    keep = list(spec.get("columns") or DEFAULT_COLUMNS)
    unknown = [k for k in keep if k not in MEASURES]
    if unknown:
        raise ValueError(f"published.yaml: columns {unknown} are not measures; valid: {', '.join(MEASURES)}")
    return [(kind, key) for key in keep for kind in ("published", "measured", "train_speedup", "speedup_measured")
            if (kind, key) in plan]


def _header(kind: str, key: str, base_name: str = "", wide: bool = True) -> str:
    label = MEASURES[key].label if wide else (MEASURES[key].short or MEASURES[key].label)
    if not wide and kind in ("speedup_measured", "train_speedup"):
        what = "Speed-up" if kind == "speedup_measured" else "Training speed-up"
        return f"{what} vs {base_name} (measured)"
    return {"published": f"{label} (published)", "measured": f"{label} (measured)",
            "reference": f"{label} (reference)", "speedup_published": "Sampling speed-up (published)",
            "speedup_measured": "Sampling speed-up (measured)",
            "train_speedup": "Training speed-up (measured)"}[kind]


def _baseline_name(spec: dict) -> str:
    if spec.get("baseline_name"):
        return spec["baseline_name"]
    for r in spec["rows"]:
        if spec.get("baseline") in (r.get("variants") or []):
            return r["model"]
    return str(spec.get("baseline"))


def _measured_speedup(row: _Row, a: pd.Series | None, base_agg: pd.Series | None, baseline: str,
                      base_name: str | None, key: str, higher_is_better: bool) -> tuple[str, float]:
    """(text, ratio) of a row's measured ``MEASURES[key]`` against the baseline variant's, in the same protocol;
    ratio > 1 means better than the baseline (``base_name`` None: the header names the baseline)."""
    if row.status != "ok":
        return row.status, np.nan
    if base_agg is None:
        return f"no {baseline} run", np.nan
    if row.variant == baseline:
        return "baseline", 1.0
    ours, base = _measured(a, MEASURES[key])[0], _measured(base_agg, MEASURES[key])[0]
    ratio = ours / base if higher_is_better else base / ours
    return _ratio_text(ratio, base_name), ratio


def _dinov2_label(model: str | None) -> str:
    """How a header or footer names the DINOv2 model of a column group."""
    if model is None:
        return "DINOv2"
    if model == query.DINOV2_NOT_RECORDED:
        return "DINOv2, backbone not recorded"
    return model if "dinov2" in model.lower() else f"DINOv2 {model}"


def _dinov2_header(m: Measure, model: str | None) -> str:
    """"FD-DINOv2 (measured; dinov2-vit-l-14)": every DINOv2 column names the model of its features."""
    return f"{m.label} (measured; {_dinov2_label(model)})"


def _dinov2_models(rows: list[_Row], present: dict) -> list[str | None]:
    """The DINOv2 models the rows' runs used (one column group each); [None] when no run logged the set."""
    found = {m for r in rows if r.status == "ok" and r.variant in present for m in present[r.variant]["dinov2"]}
    return sorted(found) or [None]


def _section(name: str, spec: dict, pub: dict, agg: pd.DataFrame | None, protocol: Protocol | None,
             n_runs: int, measured_only: bool = False, wide: bool = False, metrics: str = "paper") -> Section:
    rows = _assign_rows(spec, agg)
    present = {} if agg is None else {r["variant"]: r for _, r in agg.iterrows()}
    plan, shown = _column_plan(spec), _column_plan(spec, wide)   # every number (CSV); the displayed columns
    base_pub = next((_published_value(r, "time_s") for r in rows if r.spec and spec.get("baseline") in r.expected),
                    np.nan)
    if measured_only:
        rows = [r for r in rows if r.status == "ok"]
        measured_kinds = ("measured", "speedup_measured", "train_speedup")
        plan = [(kind, key) for kind, key in plan if kind in measured_kinds]
        shown = [(kind, key) for kind, key in shown if kind in measured_kinds]
    dino_models = _dinov2_models(rows, present) if metrics == "dinov2" else []
    info = list(spec.get("info") or [])
    config_cols = dict(spec.get("config_columns") or {})
    baseline = spec.get("baseline")
    base_name = _baseline_name(spec)
    base_agg = present.get(baseline)
    dataset = protocol.dataset if protocol else (spec.get("published_dataset") or (spec.get("datasets") or ["?"])[0])

    text_rows, data_rows = [], []
    for row in rows:
        a = present.get(row.variant) if row.status == "ok" else None
        t = {"Model": row.model, "Variant": row.variant if row.status == "ok" else ", ".join(row.expected) or "-"}
        d: dict = {"table": name, "protocol": protocol.label() if protocol else "", "dataset": dataset,
                   "scale": protocol.scale if protocol else "", "backbone": protocol.backbone if protocol else "",
                   "samples": protocol.samples if protocol else "",
                   "timing_device": protocol.timing_device if protocol else "",
                   "timing_batch": protocol.timing_batch if protocol else "", "model": row.model,
                   "variant": row.variant or "", "status": row.status,
                   "published_row": row.spec is not None}
        for k in info:
            v = row.spec.get(k) if row.spec else None
            t[INFO_LABELS.get(k, k)] = "" if v is None else str(v)
            d[k] = v
        cells = {}   # (kind, key) -> text, for the displayed columns
        for kind, key in plan:
            m = MEASURES[key]
            if kind == "published":
                v = _published_value(row, key)
                cells[kind, key] = m.pub_fmt(v) if np.isfinite(v) else NO_VALUE
                d[f"{key}_published"] = v
            elif kind == "measured":
                cells[kind, key] = _measured_text(row, a, m)
                mean, std, _ = _measured(a, m)
                d[f"{key}_mean"], d[f"{key}_std"] = mean, std
            elif kind == "reference":
                v = _reference(pub, dataset, row.variant, key)
                cells[kind, key] = m.pub_fmt(v) if np.isfinite(v) else NO_VALUE
                d[f"{key}_reference"] = v
            elif kind == "speedup_published":
                v = _published_value(row, "time_s")
                ratio = base_pub / v if np.isfinite(v) and np.isfinite(base_pub) else np.nan
                is_base = row.spec is not None and baseline in row.expected
                cells[kind, key] = "baseline" if is_base and np.isfinite(v) else _ratio_text(ratio, base_name)
                d["speedup_published"] = ratio
            elif kind in ("speedup_measured", "train_speedup"):
                # Sampling: lower time is better; training: higher throughput is better. The paper-width
                # header names the baseline, its cells do not repeat it.
                metric, higher = ("time_s", False) if kind == "speedup_measured" else ("train_ips", True)
                cells[kind, key], ratio = _measured_speedup(row, a, base_agg, baseline,
                                                            base_name if wide else None, metric, higher)
                d[kind] = ratio
        for kind, key in shown:
            t[_header(kind, key, base_name, wide)] = cells[kind, key]
        for model in dino_models:
            # This model's runs of the variant only; {}: the row's runs did not log the set with it.
            s = (a["dinov2"].get(model, {}) if model else {}) if a is not None else None
            suffix = "" if len(dino_models) == 1 else f"[{model}]"
            for key, m in DINOV2_MEASURES.items():
                t[_dinov2_header(m, model)] = _measured_text(row, s, m)
                d[f"{key}_mean{suffix}"], d[f"{key}_std{suffix}"], d[f"{key}_n{suffix}"] = _measured(s, m)
            d[f"dinov2_model{suffix}"] = model or ""
        for label, key in config_cols.items():
            t[label] = _config_text(a, key)
            d[f"config:{key}"] = t[label]
        if wide:
            t["Runs"] = str(int(a["n"])) if a is not None else ("0" if row.status == MISSING else NO_VALUE)
        d["n"] = int(a["n"]) if a is not None else 0
        d["seeds"] = " ".join(str(s) for s in a["seeds"]) if a is not None else ""
        d["run_ids"] = " ".join(a["run_ids"]) if a is not None else ""
        d["experiments"] = " ".join(a["experiments"]) if a is not None else ""
        text_rows.append(t)
        data_rows.append(d)

    empty_cols = ["Model", "Variant"] + (["Runs"] if wide else [])
    frame = pd.DataFrame(text_rows) if text_rows else pd.DataFrame(columns=empty_cols)
    data = pd.DataFrame(data_rows) if data_rows else pd.DataFrame(columns=["table", "model", "variant", "status"])
    lines = _footer(spec, agg, protocol, n_runs, rows, measured_only, wide)
    if dino_models and protocol is not None:
        lines[1:1] = _dinov2_footer(agg, protocol, rows, dino_models)
    heading = f"Measured under: {protocol.label()}" if protocol else "Measured: no FINISHED runs yet"
    return Section(heading, protocol, frame, data, lines)


def fill_commands(spec: dict) -> dict[str | None, str]:
    """The commands that produce a table's runs: data set -> command (None: the table's own ``fill``)."""
    return {None: spec.get("fill", ""), **(spec.get("fill_by_dataset") or {})}


def _fill_text(spec: dict, dataset: str | None, name_dataset: bool = False) -> str:
    """"`command`" for a data set's runs, the table's note on it (``fill_notes``) and the data set after it."""
    cmds = fill_commands(spec)
    key = dataset if dataset in cmds else None
    note = (spec.get("fill_notes") or {}).get(key)
    extra = [x for x in ((key if name_dataset else None), note) if x]
    return f"`{cmds[key]}`" + (f" ({': '.join(extra)})" if extra else "")


def _dinov2_footer(agg: pd.DataFrame, protocol: Protocol, rows: list[_Row], models: list[str | None]) -> list[str]:
    """The protocol of the DINOv2 columns (model and features, k, samples), the rows whose runs did not log it."""
    present = {r["variant"]: r for _, r in agg.iterrows()}
    ok = [r for r in rows if r.status == "ok" and r.variant in present]
    if models == [None]:
        return [f"DINOv2 columns: no run in this section logged the dinov2 metric set ('{NOT_LOGGED}'); a job "
                "measures it with eval.metrics.sets: [paper, dinov2]."]
    splits = sorted({str((p or {}).get("eval.metrics.reference_split", "?")) for p in agg["params"]} - {"?"})
    split = f"the {protocol.dataset} " + (f"{', '.join(splits)} split" if splits else "reference images")
    lines = []
    for model in models:
        stats = [(r, present[r.variant]["dinov2"][model]) for r in ok if model in present[r.variant]["dinov2"]]
        backbones = "; ".join(sorted({b for _, st in stats for b in st["backbones"]}))
        ks = sorted({k for _, st in stats for k in st["k"]} - {"?"}, key=query.natural_key)
        k = f"k = {', '.join(ks)}" if ks else "k not recorded"
        partial = [f"{r.model} {st['n']} of {int(present[r.variant]['n'])}" for r, st in stats
                   if st["n"] < present[r.variant]["n"]]
        lines.append(f"DINOv2 protocol ({_dinov2_label(model)}): FD-DINOv2 (Frechet distance) and precision, recall, "
                     f"density, coverage ({k}) in the features of {backbones}, on the same {protocol.samples} "
                     f"generated samples as the FID, against {split} (reference count: metrics_num_reference in "
                     "each run's eval_summary.json); rows: "
                     f"{', '.join(r.model for r, _ in stats)}"
                     + (f"; runs per row that logged it: {', '.join(partial)}" if partial else "") + ".")
    not_logged = [r.model for r in ok if not present[r.variant]["dinov2"]]
    if not_logged:
        lines.append(f"DINOv2 columns '{NOT_LOGGED}': the runs of {', '.join(not_logged)} did not log the dinov2 "
                     "metric set (their eval.metrics.sets has no dinov2).")
    if len(models) > 1:
        lines.append("Several DINOv2 models in this section: one group of columns per model, never averaged across "
                     f"models; '{NOT_LOGGED}' under a model whose features a row's runs did not use.")
    return lines


def _experiments_text(agg: pd.DataFrame) -> str:
    names = sorted({e for es in agg["experiments"] for e in es})
    return (f"experiment '{names[0]}'" if len(names) == 1 else
            "experiments " + ", ".join(f"'{n}'" for n in names))


def _footer(spec: dict, agg: pd.DataFrame | None, protocol: Protocol | None, n_runs: int,
            rows: list[_Row], measured_only: bool = False, wide: bool = False) -> list[str]:
    lines = []
    if protocol is None:
        return lines
    uniq = lambda col: ", ".join(sorted({str(v) for v in agg[col] if str(v)})) or "?"  # noqa: E731
    lines.append(f"Measured protocol: data set {protocol.dataset}, scale {protocol.scale}; FID/KID/precision/recall "
                 f"with {uniq('backbone_fid')} ({uniq('implementation')}) on {protocol.samples} generated samples; "
                 f"sampling time = mean seconds per batch of {protocol.timing_batch}, {uniq('timing_repeats')} "
                 f"timed runs after {uniq('timing_warmup')} warm-up runs, on {protocol.timing_device}.")
    runs = (f"Runs: {n_runs} FINISHED run{'' if n_runs == 1 else 's'} in {_experiments_text(agg)}, the latest per "
            "variant and seed; '±' is the standard deviation over seeds")
    if wide:
        runs += " (Runs = number of seeds)."
    else:
        n_seeds = dict(zip(agg["variant"], agg["n"]))
        seeds = [(r.model, int(n_seeds[r.variant])) for r in rows if r.status == "ok" and r.variant in n_seeds]
        runs += (f" (seeds per row: {', '.join(f'{m} {n}' for m, n in seeds)})." if any(n > 1 for _, n in seeds)
                 else " (one seed per row).")
    lines.append(runs)
    published_preset = spec.get("published_dataset")
    if measured_only:
        if published_preset and protocol.dataset != published_preset:
            lines.append(f"Measured on {protocol.dataset}"
                         + (f" with the {published_preset} paper configurations" if
                            paper_preset(protocol.dataset) == published_preset else "")
                         + f"; the published numbers ({published_preset}) are not in this table.")
    elif published_preset and paper_preset(protocol.dataset) != published_preset:
        lines.append(f"Not the published data set: published numbers are on {published_preset}, measured ones on "
                     f"{protocol.dataset}; compare orderings and ratios, not absolute values.")
    elif published_preset and protocol.dataset != published_preset:
        lines.append(f"Measured on {protocol.dataset} with the {published_preset} paper configurations; the "
                     "published numbers are on the real data set: compare orderings and ratios, not absolute values.")
    if protocol.scale != "paper":
        lines.append(f"Scale {protocol.scale}: CPU-sized networks; parameter counts and GFLOPs differ from the paper "
                     "configurations" + ("." if measured_only else " (reference columns)."))
    missing = [v for r in rows if r.status == MISSING for v in r.expected[:1]]
    if missing:
        lines.append(f"Missing measured rows ({', '.join(missing)}): fill them with "
                     f"{_fill_text(spec, protocol.dataset)}.")
    return lines


def build_report(name: str, experiment: str | None = None, datasets: list[str] | None = None,
                 filter_string: str | None = None, uri: str | None = None, published: dict | None = None,
                 run_ids: list[str] | None = None, measured_only: bool = False, wide: bool = False,
                 metrics: str = "paper") -> Report:
    """One table: the published rows, and one measured section per protocol found in ``experiment`` (None:
    every experiment of the store but ``perf``).

    ``run_ids`` restricts the runs considered (e.g. those of one grid submission); ``measured_only`` keeps only
    the rows with a measured run and the measured columns (no published or reference values); ``wide`` shows
    every column instead of the paper-width ones; ``metrics="dinov2"`` adds the dinov2 metric set's measured
    columns (one group per DINOv2 model) and their protocol under each section.
    """
    if metrics not in METRIC_VIEWS:
        raise ValueError(f"metrics={metrics!r}; valid: {', '.join(METRIC_VIEWS)}")
    pub = published or load_published()
    if name not in pub["tables"]:
        raise SystemExit(f"unknown table {name!r}; valid: {', '.join(pub['tables'])}")
    spec = pub["tables"][name]
    scope = datasets if datasets else spec.get("datasets")
    runs = query.select_latest(query.load_runs(experiment, datasets=scope, filter_string=filter_string,
                                               run_ids=run_ids, uri=uri))
    agg = query.aggregate(runs)

    # One section per protocol that measured a paper row of this table (or, for tables that list every
    # variant, any variant).
    sections = []
    for proto in query.protocols(runs):
        g = agg[agg["protocol"].map(lambda p: p.key() == proto.key())]
        shown = [r for r in _assign_rows(spec, g) if r.status == "ok"]
        if any(r.spec is not None for r in shown) or (shown and spec.get("extra") == "all"):
            in_proto = runs["protocol"].map(lambda p: p.key() == proto.key())
            n = int((in_proto & runs["variant"].isin([r.variant for r in shown])).sum())
            sections.append(_section(name, spec, pub, g, proto, n, measured_only, wide, metrics))
    if not sections:
        empty = _section(name, spec, pub, None, None, 0, measured_only, wide, metrics)
        where = f"data sets {', '.join(scope)}" if scope else "any data set"
        fills = [_fill_text(spec, d, name_dataset=d is not None) for d in fill_commands(spec)
                 if d is None or not scope or d in scope]
        empty.lines = [f"No FINISHED runs for this table in {query.scope_label(experiment)} ({where})"
                       + ("." if measured_only else f": measured cells are '{MISSING}'."),
                       f"Fill the measured columns with: {' or '.join(fills)}"]
        sections = [empty]

    wide_note = ("Paper-width view: `--wide` shows every column (precision, KID, GFLOPs, parameter counts, training "
                 "wall-clock, reference counts, the published speed-up, runs); `--format csv` carries every number.")
    dinov2_note = ("DINOv2 columns (--metrics dinov2): measured only, the papers publish no DINOv2 numbers; each "
                   "header names the DINOv2 model of its features; precision, recall and coverage lie in [0, 1], "
                   "density may exceed 1; lower FD-DINOv2 is better, higher is better for the other four.")
    if measured_only:
        header = [f"Measured values only: every number below comes from FINISHED MLflow runs of this suite in "
                  f"{query.scope_label(experiment)}; the published numbers of this table: "
                  f"`python -m reports.table --table {name}`."]
        notes = [f"Cells: '{NOT_LOGGED}' = the run did not log this metric."]
        if spec.get("baseline"):
            notes.append(f"Speed-ups are measured against {_baseline_name(spec)} ({spec['baseline']}) within a "
                         "protocol.")
        if not wide:
            notes.append(wide_note)
        if metrics == "dinov2":
            notes.append(dinov2_note)
        return Report(name, f"{spec['title']}: measured runs only", header, sections, notes, experiment, datasets,
                      measured_only=True, wide=wide, metrics=metrics)
    header = _published_header(spec, pub)
    notes = list(spec.get("notes") or [])
    notes += [f"{r['model']}: {r['note']}" for r in spec["rows"] if r.get("note")]
    notes += [f"{r['model']}: published in {pub['sources'][r['source']]['paper']} "
              f"({pub['sources'][r['source']]['where']}); protocol {r.get('protocol', spec.get('protocol'))}."
              for r in spec["rows"] if r.get("source")]
    notes.append(f"Cells: '{MISSING}' = a variant reproduces the row but has no FINISHED run; '{NOT_REPRODUCED}' = no "
                 f"variant reproduces it; '{NO_VALUE}' = no value in the source; rows after the paper's rows have no "
                 "published counterpart.")
    if not wide:
        notes.append(wide_note)
    if metrics == "dinov2":
        notes.append(dinov2_note)
    return Report(name, spec["title"], header, sections, notes, experiment, datasets, wide=wide, metrics=metrics)


def _published_header(spec: dict, pub: dict) -> list[str]:
    src = pub["sources"][spec["source"]]
    p = pub["protocols"][spec["protocol"]]
    lines = [f"Published: {src['paper']}; {src['where']}."]
    if spec.get("published"):
        parts = [f"{p['samples']} generated samples" if p.get("samples") else None,
                 f"FID {p['fid_backbone']}" if p.get("fid_backbone") else None,
                 f"recall {p['recall_backbone']}" if p.get("recall_backbone") else None,
                 f"time: {p['timing']}, {p['device']}, batch {p['batch_size']}" if p.get("batch_size") else
                 f"time: {p.get('timing', 'none published')}"]
        lines.append("Published protocol: " + "; ".join(x for x in parts if x) + "."
                     + (f" ({p['note']})" if p.get("note") else ""))
    else:
        lines.append("Published values: none could be verified for this table (UNVERIFIED / absent); only measured "
                     "values and reference counts are shown.")
    if spec.get("reference"):
        c = pub["sources"]["public-code"]
        lines.append(f"Reference columns: {c['where']} ({c['paper']}); for the data set's paper configuration.")
    return lines


# ============================================================================================== rendering

def _md_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in r] for r in df.itertuples(index=False)]
    cells = [[c.replace("|", "\\|") for c in r] for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt(r) for r in cells[1:]])


def render_markdown(rep: Report) -> str:
    out = [f"## {rep.title}", ""]
    out += [f"- {h}" for h in rep.header] + [""]
    for s in rep.sections:
        out += [f"### {s.heading}", "", _md_table(s.frame), ""]
        out += [f"- {line}" for line in s.lines] + [""]
    out += ["Notes:", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(out)


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    s = "".join(_LATEX.get(ch, ch) for ch in str(s))
    return s.replace("±", r"$\pm$").replace("->", r"$\rightarrow$")


def render_latex(rep: Report) -> str:
    out = [f"% {rep.title}"] + [f"% {h}" for h in rep.header]
    for s in rep.sections:
        df = s.frame.map(_tex)
        df.columns = [_tex(c) for c in df.columns]
        out += ["\\begin{table}[t]", "\\centering", f"\\caption{{{_tex(rep.title)}. {_tex(s.heading)}.}}",
                "\\resizebox{\\linewidth}{!}{%",
                df.to_latex(index=False, escape=False, column_format="l" * len(df.columns)).strip(), "}",
                "\\end{table}"]
        out += [f"% {line}" for line in s.lines]
    out += [f"% Note: {n}" for n in rep.notes]
    return "\n".join(out) + "\n"


def render_html(rep: Report) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(rep.title)}</title>",
           "<style>body{font-family:sans-serif} table{border-collapse:collapse;font-size:13px}"
           " td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} th{background:#eee}</style>",
           "</head><body>", f"<h2>{e(rep.title)}</h2>", "<ul>"] + [f"<li>{e(h)}</li>" for h in rep.header]
    out.append("</ul>")
    for s in rep.sections:
        out += [f"<h3>{e(s.heading)}</h3>", s.frame.to_html(index=False, escape=True, border=0), "<ul>"]
        out += [f"<li>{e(line)}</li>" for line in s.lines] + ["</ul>"]
    out += ["<h4>Notes</h4>", "<ul>"] + [f"<li>{e(n)}</li>" for n in rep.notes] + ["</ul>", "</body></html>"]
    return "\n".join(out) + "\n"


def render_csv(rep: Report) -> str:
    return pd.concat([s.data for s in rep.sections], ignore_index=True).to_csv(index=False)


def render(rep: Report, fmt: str = "md") -> str:
    return {"md": render_markdown, "latex": render_latex, "html": render_html, "csv": render_csv}[fmt](rep)


def write_report(rep: Report, fmt: str = "md", out_dir: str | Path = OUT_DIR) -> list[Path]:
    """Writes the Markdown rendering and, if different, ``fmt``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = (f"table-{rep.name}" + (f"-{'-'.join(rep.datasets)}" if rep.datasets else "")
            + ("-dinov2" if rep.metrics == "dinov2" else "") + ("-measured" if rep.measured_only else "")
            + ("-wide" if rep.wide else ""))
    paths = []
    for f in dict.fromkeys(["md", fmt]):
        p = out / f"{stem}.{FORMATS[f]}"
        p.write_text(render(rep, f))
        paths.append(p)
    return paths


# ============================================================================================== command line

def main(argv: list[str] | None = None) -> int:
    pub = load_published()
    ap = argparse.ArgumentParser(prog="python -m reports.table", description=__doc__.split("\n")[0])
    ap.add_argument("--table", choices=table_names(pub) + ["all"], default=None,
                    help="which table (default: the --dataset's main table, else cifar10)")
    ap.add_argument("--dataset", default=None, help="only runs on this data set (default: the table's data sets)")
    ap.add_argument("--format", choices=list(FORMATS), default="md", help="printed and written format")
    ap.add_argument("--experiment", default=None,
                    help="only this MLflow experiment (default: every experiment of the store but perf)")
    ap.add_argument("--out", default=str(OUT_DIR), help="directory the tables are written to")
    ap.add_argument("--filter", default=None, help="extra MLflow filter, e.g. \"tags.grid = 'cifar10'\"")
    ap.add_argument("--measured-only", action="store_true",
                    help="only the measured rows and columns (no published or reference values)")
    ap.add_argument("--wide", action="store_true",
                    help="every column (precision, KID, GFLOPs, parameters, training time, reference counts, runs), "
                         "not only the paper-width ones")
    ap.add_argument("--metrics", choices=METRIC_VIEWS, default="paper",
                    help="paper: the papers' metrics only; dinov2: also FD-DINOv2 and precision/recall/density/"
                         "coverage in DINOv2 features, measured (files named ...-dinov2)")
    ap.add_argument("--log", action="store_true", help="also log the files to the experiment's 'report' run")
    args = ap.parse_args(argv)

    name = args.table or table_for_dataset(args.dataset, pub)
    names = table_names(pub) if name == "all" else [name]
    datasets = [args.dataset] if args.dataset else None
    written = []
    for n in names:
        rep = build_report(n, args.experiment, datasets, args.filter, published=pub, measured_only=args.measured_only,
                           wide=args.wide, metrics=args.metrics)
        print(render(rep, args.format))
        written += write_report(rep, args.format, args.out)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.log:
        run_id = query.log_report_artifacts(written, args.experiment)
        print(f"logged to run {run_id} ('report') in experiment "
              f"'{args.experiment or query.DEFAULT_REPORT_EXPERIMENT}'", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
