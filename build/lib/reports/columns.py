"""The columns of the comparison tables: what each measure is and how its numbers print, which columns a table
shows (the column plan), and one cell function per column kind.

A column is ``(kind, key)``: ``key`` names a :data:`MEASURES` entry, ``kind`` says where the number comes from.
Every kind has one cell function in :data:`CELLS`, all with the signature
``cell(ctx, row, a, key) -> (text, fields)``: the displayed text and the numbers it adds to the row's CSV record,
from the :class:`CellContext` a section shares, the table row, and that row's aggregated runs (``a``, None when
it has none). The DINOv2 columns (``--metrics dinov2``) are one group per DINOv2 model: :func:`dinov2_cells`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from bench.schema import paper_preset
from reports import query

__all__ = ["MISSING", "NOT_REPRODUCED", "NOT_LOGGED", "NO_VALUE", "Measure", "MEASURES", "DINOV2_MEASURES",
           "INFO_LABELS", "DEFAULT_COLUMNS", "MEASURED_KINDS", "Row", "CellContext", "CELLS", "column_plan",
           "column_header", "baseline_name", "measured_value", "measured_text", "published_value", "config_text",
           "ratio_text", "dinov2_label", "dinov2_models", "dinov2_cells"]

MISSING = "missing"        # a variant reproduces this row, but it has no FINISHED run in this protocol
NOT_REPRODUCED = "n/a"     # no variant of the suite reproduces this row
NOT_LOGGED = "not logged"  # the run exists but did not log this metric
NO_VALUE = "-"             # the source gives no value


# ============================================================================================== number formats

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


def _fd(v: float) -> str:
    """FD-DINOv2: two decimals (dgm-eval and EDM2 print e.g. 52.25), one from 1000 on."""
    return f"{v:.1f}" if abs(v) >= 1000 else f"{v:.2f}"


def ratio_text(ratio: float, name: str | None) -> str:
    """2.86 -> "2.9x faster than DDGAN"; 0.5 -> "2.0x slower than DDGAN"; without a name: "2.9x faster"."""
    if not math.isfinite(ratio) or ratio <= 0:
        return NO_VALUE
    word = "faster" if ratio >= 1 else "slower"
    r = ratio if ratio >= 1 else 1 / ratio
    text = f"{r:.0f}x {word}" if r >= 10 else f"{r:.1f}x {word}"
    return f"{text} than {name}" if name else text


# ============================================================================================== measures

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

# --metrics dinov2: measured-only columns, keyed by MLflow metric (query.DINOV2_METRICS). Density may exceed 1.
DINOV2_MEASURES: dict[str, Measure] = {
    "fd_dinov2": Measure("FD-DINOv2", ("fd_dinov2",), _fd),
    "precision_dinov2": Measure("Precision", ("precision_dinov2",), _fixed(2)),
    "recall_dinov2": Measure("Recall", ("recall_dinov2",), _fixed(2)),
    "density_dinov2": Measure("Density", ("density_dinov2",), _fixed(2)),
    "coverage_dinov2": Measure("Coverage", ("coverage_dinov2",), _fixed(2)),
}
INFO_LABELS = {"level": "Level", "backbone": "Backbone", "turning_points": "Turning points", "steps": "Steps S"}
# The paper-width view's measures when a table names no ``columns``.
DEFAULT_COLUMNS = ("fid", "recall", "nfe", "time_s")
# The kinds --measured-only keeps.
MEASURED_KINDS = ("measured", "speedup_measured", "train_speedup")


# ============================================================================================== column plan

def column_plan(spec: dict, wide: bool = True) -> list[tuple[str, str]]:
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


def column_header(kind: str, key: str, base_name: str = "", wide: bool = True) -> str:
    label = MEASURES[key].label if wide else (MEASURES[key].short or MEASURES[key].label)
    if not wide and kind in ("speedup_measured", "train_speedup"):
        what = "Speed-up" if kind == "speedup_measured" else "Training speed-up"
        return f"{what} vs {base_name} (measured)"
    return {"published": f"{label} (published)", "measured": f"{label} (measured)",
            "reference": f"{label} (reference)", "speedup_published": "Sampling speed-up (published)",
            "speedup_measured": "Sampling speed-up (measured)",
            "train_speedup": "Training speed-up (measured)"}[kind]


def baseline_name(spec: dict) -> str:
    if spec.get("baseline_name"):
        return spec["baseline_name"]
    for r in spec["rows"]:
        if spec.get("baseline") in (r.get("variants") or []):
            return r["model"]
    return str(spec.get("baseline"))


# ============================================================================================== values

@dataclass
class Row:
    model: str
    spec: dict | None              # the published row (None for measured-only rows)
    variant: str | None            # the measured variant (or the expected one when missing)
    expected: list[str]            # the variants that reproduce this row
    status: str                    # ok | missing | n/a
    origin: str = "trained"        # trained (this suite's training) | public (the papers' weights, measured here)


def measured_value(a: pd.Series | dict | None, m: Measure) -> tuple[float, float, int]:
    """(mean, std, n) of the first metric of ``m`` that the aggregated runs logged, scaled."""
    if a is None:
        return np.nan, np.nan, 0
    for k in m.metrics:
        mean = a.get(f"{k}_mean", np.nan)
        if mean is not None and np.isfinite(mean):
            std = a.get(f"{k}_std", np.nan)
            return mean * m.scale, (std * m.scale if np.isfinite(std) else np.nan), int(a.get(f"{k}_n", 1))
    return np.nan, np.nan, 0


def measured_text(row: Row, a: pd.Series | dict | None, m: Measure) -> str:
    if row.status != "ok" or a is None:
        return row.status if row.status != "ok" else MISSING
    mean, std, n = measured_value(a, m)
    if not np.isfinite(mean):
        return NOT_LOGGED
    # Several seeds: mean ± std; values every seed shares (parameter counts, NFE) stay plain.
    return f"{m.fmt(mean)} ± {m.fmt(std)}" if n > 1 and np.isfinite(std) and std > 0 else m.fmt(mean)


def published_value(row: Row, key: str) -> float:
    v = None if row.spec is None else row.spec.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan


def _reference(pub: dict, dataset: str, variant: str | None, key: str) -> float:
    costs = (pub.get("reference_costs") or {}).get(paper_preset(dataset), {}).get(variant or "", {})
    if key == "gflops":
        nfe, fwd = costs.get("nfe"), costs.get("gflops_forward")
        return float(nfe) * float(fwd) if nfe is not None and fwd is not None else np.nan
    v = costs.get(key)
    return float(v) * 1e-6 if v is not None else np.nan


def config_text(a: pd.Series | None, key: str) -> str:
    if a is None:
        return ""
    params = a["params"] or {}
    if key in params:
        return str(params[key])
    hits = [f"{k}={v}" for k, v in sorted(params.items()) if key in k]
    return "; ".join(hits)


# ============================================================================================== cells

@dataclass(frozen=True)
class CellContext:
    """What the cells of one section share."""
    pub: dict                      # published.yaml (reference costs)
    dataset: str                   # the section's data set (the reference costs of its paper preset)
    baseline: str | None           # the table's baseline variant
    base_name: str                 # how the table names the baseline row
    base_agg: pd.Series | None     # the baseline's aggregated runs in this section (None: no baseline run)
    base_pub: float                # the baseline row's published time (nan: none)
    wide: bool                     # every column (the speed-up cells name the baseline) or the paper-width view


Cell = Callable[[CellContext, Row, pd.Series | None, str], tuple[str, dict]]


def published_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """The published value of the row (``NO_VALUE`` when the paper gives none)."""
    v = published_value(row, key)
    return (MEASURES[key].pub_fmt(v) if np.isfinite(v) else NO_VALUE), {f"{key}_published": v}


def measured_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """The measured value: mean ± std over seeds, or the row's status when it has no run."""
    m = MEASURES[key]
    mean, std, _ = measured_value(a, m)
    return measured_text(row, a, m), {f"{key}_mean": mean, f"{key}_std": std}


def reference_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """The count from the public code for the variant's paper configuration on the section's data set."""
    v = _reference(ctx.pub, ctx.dataset, row.variant, key)
    return (MEASURES[key].pub_fmt(v) if np.isfinite(v) else NO_VALUE), {f"{key}_reference": v}


def speedup_published_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """The published sampling time of the baseline row over this row's."""
    v = published_value(row, "time_s")
    ratio = ctx.base_pub / v if np.isfinite(v) and np.isfinite(ctx.base_pub) else np.nan
    is_base = row.spec is not None and ctx.baseline in row.expected
    text = "baseline" if is_base and np.isfinite(v) else ratio_text(ratio, ctx.base_name)
    return text, {"speedup_published": ratio}


def _measured_speedup(ctx: CellContext, row: Row, a: pd.Series | None, key: str,
                      higher_is_better: bool) -> tuple[str, float]:
    """(text, ratio) of a row's measured ``MEASURES[key]`` against the baseline variant's, in the same protocol;
    ratio > 1 means better than the baseline. The paper-width header names the baseline, its cells do not."""
    if row.status != "ok":
        return row.status, np.nan
    if ctx.base_agg is None:
        return f"no {ctx.baseline} run", np.nan
    if row.variant == ctx.baseline:
        return "baseline", 1.0
    ours, base = measured_value(a, MEASURES[key])[0], measured_value(ctx.base_agg, MEASURES[key])[0]
    ratio = ours / base if higher_is_better else base / ours
    return ratio_text(ratio, ctx.base_name if ctx.wide else None), ratio


def speedup_measured_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """Sampling speed-up against the baseline's runs in this section: lower time is better."""
    text, ratio = _measured_speedup(ctx, row, a, "time_s", higher_is_better=False)
    return text, {"speedup_measured": ratio}


def train_speedup_cell(ctx: CellContext, row: Row, a: pd.Series | None, key: str) -> tuple[str, dict]:
    """Training speed-up against the baseline's runs in this section: higher throughput is better."""
    text, ratio = _measured_speedup(ctx, row, a, "train_ips", higher_is_better=True)
    return text, {"train_speedup": ratio}


CELLS: dict[str, Cell] = {
    "published": published_cell,
    "measured": measured_cell,
    "reference": reference_cell,
    "speedup_published": speedup_published_cell,
    "speedup_measured": speedup_measured_cell,
    "train_speedup": train_speedup_cell,
}


# ============================================================================================== DINOv2 columns

def dinov2_label(model: str | None) -> str:
    """How a header or footer names the DINOv2 model of a column group."""
    if model is None:
        return "DINOv2"
    if model == query.DINOV2_NOT_RECORDED:
        return "DINOv2, backbone not recorded"
    return model if "dinov2" in model.lower() else f"DINOv2 {model}"


def _dinov2_header(m: Measure, model: str | None) -> str:
    """"FD-DINOv2 (measured; dinov2-vit-l-14)": every DINOv2 column names the model of its features."""
    return f"{m.label} (measured; {dinov2_label(model)})"


def dinov2_models(rows: list[Row], present: dict) -> list[str | None]:
    """The DINOv2 models the rows' runs used (one column group each); [None] when no run logged the set."""
    found = {m for r in rows if r.status == "ok" and r.variant in present for m in present[r.variant]["dinov2"]}
    return sorted(found) or [None]


def dinov2_cells(row: Row, a: pd.Series | None, model: str | None, suffix: str) -> tuple[dict, dict]:
    """(header -> text, fields) of one DINOv2 model's group of five columns; ``suffix`` tells the CSV fields of
    several models apart."""
    # This model's runs of the variant only; {}: the row's runs did not log the set with it.
    s = (a["dinov2"].get(model, {}) if model else {}) if a is not None else None
    texts, fields = {}, {}
    for key, m in DINOV2_MEASURES.items():
        texts[_dinov2_header(m, model)] = measured_text(row, s, m)
        mean, std, n = measured_value(s, m)
        fields.update({f"{key}_mean{suffix}": mean, f"{key}_std{suffix}": std, f"{key}_n{suffix}": n})
    fields[f"dinov2_model{suffix}"] = model or ""
    return texts, fields
