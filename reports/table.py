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

This module holds the published data, the rows and sections of a table and the command line; the columns (measures,
number formats, one cell function per column kind) are in ``reports/columns.py``, the renderings and the files
written in ``reports/render.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.schema import PAPER_PRESET, paper_preset
from reports import query
from reports.columns import (CELLS, DINOV2_MEASURES, INFO_LABELS, MEASURED_KINDS, MEASURES, MISSING, NO_VALUE,
                             NOT_LOGGED, NOT_REPRODUCED, CellContext, Measure, Row, baseline_name, column_header,
                             column_plan, config_text, dinov2_cells, dinov2_label, dinov2_models, published_value)
from reports.query import Protocol
from reports.render import FORMATS, OUT_DIR, Report, Section, render, write_report

__all__ = ["PUBLISHED_YAML", "OUT_DIR", "FORMATS", "Measure", "MEASURES", "DINOV2_MEASURES", "METRIC_VIEWS", "Section",
           "Report", "MISSING", "NOT_REPRODUCED", "NOT_LOGGED", "NO_VALUE", "load_published", "table_names",
           "table_for_dataset", "fill_commands", "build_report", "render", "write_report", "main"]

PUBLISHED_YAML = Path(__file__).with_name("published.yaml")
METRIC_VIEWS = ("paper", "dinov2")   # --metrics: the papers' columns only, or those and the dinov2 set's


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


PUBLIC_ROW = "public weights, measured here"


def _assign_rows(spec: dict, agg: pd.DataFrame | None) -> list[Row]:
    """The paper's rows in order (each with its measured variant, if any; after it, a row per public checkpoint of
    that model measured here), then measured-only rows."""
    present = {} if agg is None else {r["variant"]: r for _, r in agg.iterrows()}
    public = {v: a for v, a in present.items() if a.get("origin") == "public"}
    listed = {v for r in spec["rows"] for v in r.get("variants") or []}
    used: set[str] = set(public)
    rows = []
    for r in spec["rows"]:
        cands = list(r.get("variants") or [])
        cands += sorted((v for v, a in present.items() if v not in listed and v not in cands and v not in public
                         and a["published_row"] == r["model"]), key=query.natural_key)
        hit = next((v for v in cands if v in present and v not in used), None)
        if hit:
            used.add(hit)
        status = "ok" if hit else (MISSING if cands else NOT_REPRODUCED)
        rows.append(Row(r["model"], r, hit or (cands[0] if cands else None), cands, status))
        mine = [v for v, a in public.items() if a["base_variant"] in cands or a["published_row"] == r["model"]]
        for v in sorted(mine, key=query.natural_key):
            rows.append(Row(f"{r['model']} ({PUBLIC_ROW}: {public[v]['weights_source']})", None, v, [v], "ok",
                            origin="public"))
            public.pop(v)
    extra = spec.get("extra", [])
    for v in sorted(set(present) - used, key=query.natural_key):
        if extra == "all" or v in (extra or []):
            rows.append(Row(present[v]["published_row"] or v, None, v, [v], "ok"))
    for v, a in sorted(public.items()):  # public weights of a model this table has no paper row for
        if extra == "all" or a["base_variant"] in (extra or []):
            rows.append(Row(f"{a['published_row'] or a['base_variant']} ({PUBLIC_ROW}: {a['weights_source']})",
                            None, v, [v], "ok", origin="public"))
    return rows


def _row_start(name: str, protocol: Protocol | None, dataset: str, row: Row, info: list[str]) -> tuple[dict, dict]:
    """A row's leading columns (model, variant, the table's ``info`` keys) and its CSV record's leading fields (the
    table, the protocol, the row)."""
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
    return t, d


def _section(name: str, spec: dict, pub: dict, agg: pd.DataFrame | None, protocol: Protocol | None,
             n_runs: int, measured_only: bool = False, wide: bool = False, metrics: str = "paper") -> Section:
    rows = _assign_rows(spec, agg)
    present = {} if agg is None else {r["variant"]: r for _, r in agg.iterrows()}
    plan, shown = column_plan(spec), column_plan(spec, wide)   # every number (CSV); the displayed columns
    baseline = spec.get("baseline")
    base_pub = next((published_value(r, "time_s") for r in rows if r.spec and baseline in r.expected), np.nan)
    if measured_only:
        rows = [r for r in rows if r.status == "ok"]
        plan = [(kind, key) for kind, key in plan if kind in MEASURED_KINDS]
        shown = [(kind, key) for kind, key in shown if kind in MEASURED_KINDS]
    dino_models = dinov2_models(rows, present) if metrics == "dinov2" else []
    info = list(spec.get("info") or [])
    config_cols = dict(spec.get("config_columns") or {})
    base_name = baseline_name(spec)
    dataset = protocol.dataset if protocol else (spec.get("published_dataset") or (spec.get("datasets") or ["?"])[0])
    ctx = CellContext(pub, dataset, baseline, base_name, present.get(baseline), base_pub, wide)

    text_rows, data_rows = [], []
    for row in rows:
        a = present.get(row.variant) if row.status == "ok" else None
        t, d = _row_start(name, protocol, dataset, row, info)
        cells = {}   # (kind, key) -> text; every column's numbers go to the CSV, the shown ones' text to the table
        for kind, key in plan:
            cells[kind, key], fields = CELLS[kind](ctx, row, a, key)
            d.update(fields)
        for kind, key in shown:
            t[column_header(kind, key, base_name, wide)] = cells[kind, key]
        for model in dino_models:
            texts, fields = dinov2_cells(row, a, model, "" if len(dino_models) == 1 else f"[{model}]")
            t.update(texts)
            d.update(fields)
        for label, key in config_cols.items():
            t[label] = config_text(a, key)
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


def _dinov2_footer(agg: pd.DataFrame, protocol: Protocol, rows: list[Row], models: list[str | None]) -> list[str]:
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
        lines.append(f"DINOv2 protocol ({dinov2_label(model)}): FD-DINOv2 (Frechet distance) and precision, recall, "
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
            rows: list[Row], measured_only: bool = False, wide: bool = False) -> list[str]:
    lines = []
    if protocol is None:
        return lines
    uniq = lambda col: ", ".join(sorted({str(v) for v in agg[col] if str(v)})) or "?"  # noqa: E731
    # Precision/recall in another backbone than FID (VGG16 beside Inception), or not measured: said separately.
    prc = uniq("backbone_prc") if "backbone_prc" in agg else "?"
    same = prc in ("?", uniq("backbone_fid"))
    lines.append(f"Measured protocol: data set {protocol.dataset}, scale {protocol.scale}; "
                 f"{'FID/KID/precision/recall' if same else 'FID/KID'} with {uniq('backbone_fid')} "
                 f"({uniq('implementation')}) on {protocol.samples} generated samples; "
                 + ("" if same else f"precision/recall: {prc}; ") +
                 f"sampling time = mean seconds per batch of {protocol.timing_batch}, {uniq('timing_repeats')} "
                 f"timed runs after {uniq('timing_warmup')} warm-up runs, on {protocol.timing_device}.")
    lines += _sample_and_reference_lines(agg, protocol)
    lines += _public_lines(agg, rows)
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


def _sample_and_reference_lines(agg: pd.DataFrame, protocol: Protocol) -> list[str]:
    """How the generated samples reached the feature extractor, and the reference set when it is not the papers'."""
    lines = []
    if protocol.sample_format == "jpeg":
        lines.append("Samples: each generated sample through a JPEG round trip at PIL's default quality before feature "
                     "extraction (eval.metrics.sample_format: jpeg), as the papers' published FIDs were computed.")
    splits = sorted({str((p or {}).get("eval.metrics.reference_split", "train")) for p in agg["params"]})
    if splits != ["train"]:
        lines.append(f"Reference statistics: the {', '.join(splits)} split of {protocol.dataset}; the papers' FIDs "
                     "used training-set statistics, so compare with the published numbers with care.")
    return lines


def _public_lines(agg: pd.DataFrame, rows: list[Row]) -> list[str]:
    """Where each '{PUBLIC_ROW}' row's weights come from."""
    present = {r["variant"]: r for _, r in agg.iterrows()}
    lines = []
    for r in rows:
        a = present.get(r.variant) if r.origin == "public" else None
        if a is None:
            continue
        trained = a.get("train_steps_n", 0) and a.get("train_steps_mean", 0) > 0
        lines.append(f"{r.model}: the paper's own checkpoint {a['weights_file'] or '?'} (sha256 "
                     f"{(a['weights_sha256'] or '?')[:16]}..., published at {a['weights_where'] or '?'}), converted "
                     "by `python -m bench.weights convert` and "
                     + ("trained further here" if trained else "evaluated by this suite with zero training steps")
                     + " under the protocol above; its published number is the paper's row above it.")
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
        if any(r.spec is not None or r.origin == "public" for r in shown) or (shown and spec.get("extra") == "all"):
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
            notes.append(f"Speed-ups are measured against {baseline_name(spec)} ({spec['baseline']}) within a "
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
        query.log_report_and_say(written, args.experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
