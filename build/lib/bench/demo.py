"""``make demo``: run experiments/demo.yaml through the runner (local executor), then print and write the table.

The training budget is equal training FLOPs, which neither the machine's speed nor its load can shrink: the
variant with the cheapest optimisation step trains the grid's ``train.max_steps`` of its own job, every other
variant as many steps as cost the same FLOPs. Before anything trains, the demo counts each variant's FLOPs per
step (:func:`bench.evaluate.train_flops_per_step`), prints every job's training FLOPs and, when the grid's step counts do not
give equal budgets, says so and names the step counts that would (a test keeps experiments/demo.yaml equal).

The table is ``reports.table``'s per-data-set table (digits -> the cifar10 table) restricted to the demo's runs,
measured rows and columns only: the same code as ``python -m reports.table --dataset digits --experiment demo
--measured-only``. Writes ``reports/out/demo.md``, one sample grid per variant (``reports/out/samples-<variant>.png``)
and the convergence plot (``reports/out/convergence-demo.png``: FID during training against training time and
against steps, ``reports.plots.plot_convergence`` over the demo's runs), all taken from the MLflow runs. Re-running
skips the jobs that already FINISHED and prints their table again (``python -m bench.demo --force`` retrains).

The table's FID is the digit classifier's (fast, made for digits); the grid also runs the ``inception`` metric set
on the same final samples, and the demo prints each variant's FID in the TF Inception-v3 features of the papers
(:func:`inception_text`; weights from ``python -m bench.backbones fetch inception``, which ``make setup`` runs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.config import ConfigError, RunConfig
from bench.evaluate import train_flops_per_step
from bench.run import load_grid, run_grid, validate
from bench.submit import resolve_executor
from bench.tracking import REPO_ROOT, tracking_uri, ui_lines

OUT = REPO_ROOT / "reports" / "out"


def flops_budget(configs: list[RunConfig]) -> tuple[list[dict], list[str]]:
    """Each job's training FLOPs (steps x FLOPs per step) and what makes the budgets unequal: the job whose step
    costs least sets the budget; every other job must train the step count nearest to it."""
    rows = []
    for c in configs:
        per_step = train_flops_per_step(c)
        rows.append({"variant": c.variant, "steps": c.train.max_steps, "gflops_per_step": per_step / 1e9,
                     "tflops": (c.train.max_steps or 0) * per_step / 1e12})
    problems = [f"{r['variant']}: set train.max_steps (equal training FLOPs needs a step budget, not minutes or "
                "epochs)" for r, c in zip(rows, configs) if c.train.max_steps is None or c.train.max_minutes]
    if problems:
        return rows, problems
    ref = min(rows, key=lambda r: r["gflops_per_step"])
    for r in rows:
        want = round(ref["tflops"] * 1e3 / r["gflops_per_step"])
        if r["steps"] != want:
            problems.append(f"{r['variant']}: train.max_steps={r['steps']} costs {r['tflops']:.3f} TFLOPs; the budget "
                            f"is {ref['tflops']:.3f} TFLOPs ({ref['variant']}'s {ref['steps']} steps): set "
                            f"train.max_steps: {want}")
    return rows, problems


def budget_text(rows: list[dict], equal: bool = True) -> str:
    parts = [f"{r['variant']} {r['steps']} steps x {r['gflops_per_step']:.2f} GFLOPs = {r['tflops']:.3f} TFLOPs"
             for r in rows]
    return (f"training budget: {'equal training FLOPs' if equal else 'training FLOPs (NOT equal)'}, counted by "
            "this demo (forward + backward passes of every network, 2 x multiply-adds, per step at the job's batch "
            "size): " + "; ".join(parts))


def demo_table(results: list[dict], experiment: str, dataset: str) -> str:
    """Markdown of the measured-only table of ``dataset``'s main table over the runs in ``results``."""
    from reports import table

    run_ids = [r["run_id"] for r in results if r.get("run_id") and r["status"] != "FAILED"]
    rep = table.build_report(table.table_for_dataset(dataset), experiment, datasets=[dataset], run_ids=run_ids,
                             measured_only=True)
    return table.render(rep, "md").rstrip()


def convergence_text(conv) -> str:
    """The FID-during-training points as a Markdown table: one row per evaluation, per variant."""
    if conv.empty:
        return "no FID was measured during training (eval.every_steps is 0)"
    lines = ["| variant | step | training time (s) | FID | FID samples |", "|---|---|---|---|---|"]
    for _, r in conv.sort_values(["variant", "kind", "step"], ascending=[True, False, True]).iterrows():
        kind = "" if r["kind"] == "intermediate" else " (final)"
        lines.append(f"| {r['variant']} | {r['step']}{kind} | {r['train_wall_clock_s']:.1f} | {r['fid']:.2f} | "
                     f"{r['samples']} |")
    return "\n".join(lines)


def inception_text(client, results: list[dict]) -> str:
    """Each run's final FID (and KID, precision, recall) in Inception-v3 features (the ``inception`` metric set), as
    a Markdown table with its protocol: samples, references, the weights' origin and check (eval_summary.json)."""
    lines = ["| variant | FID (Inception-v3) | KID (Inception-v3) | precision / recall (Inception-v3) | samples vs "
             "reference |", "|---|---|---|---|---|"]
    backbones, missing = set(), []
    for r in results:
        if not r.get("run_id") or r["status"] == "FAILED":
            continue
        m = client.get_run(r["run_id"]).data.metrics
        if "fid_inception" not in m:
            missing.append(r["variant"])
            continue
        with tempfile.TemporaryDirectory() as d:
            p = json.loads(Path(client.download_artifacts(r["run_id"], "eval_summary.json", d)).read_text())["protocol"]
        backbones.add(p.get("metrics_backbone_inception", "backbone not recorded"))
        lines.append(f"| {r['variant']} | {m['fid_inception']:.2f} | {m['kid_inception_mean']:.4f} | "
                     f"{m['precision_inception']:.2f} / {m['recall_inception']:.2f} | "
                     f"{p.get('metrics_num_generated', '?')} vs {p.get('metrics_num_reference', '?')} |")
    if len(lines) == 2:
        return (f"not measured: the runs of {', '.join(missing) or 'this grid'} have no 'inception' metric set "
                "(eval.metrics.sets)")
    notes = [f"- features: {b}" for b in sorted(backbones)]
    notes += [f"- not measured for {v}: its run has no 'inception' metric set" for v in missing]
    return "\n".join(lines + [""] + notes)


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="demo", help="grid YAML (a path, or a name in experiments/)")
    ap.add_argument("--force", action="store_true", help="retrain even if the demo runs already exist")
    ap.add_argument("--out", default=str(OUT), help="directory demo.md, the sample grids and the plot go to")
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from bench.run import prerequisite_problems

    started = time.perf_counter()
    try:
        grid = load_grid(args.grid)
        configs = validate(grid)
        problems = prerequisite_problems(configs)
        if problems:
            raise ConfigError(problems, f"grid {grid.path}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows, unequal = flops_budget(configs)
    executor = resolve_executor(grid.executor.get("name", "local"))
    dataset = configs[0].dataset
    print(f"wavebench demo: {len(configs)} jobs ({', '.join(c.variant for c in configs)}) on {dataset}, "
          f"executor {executor}; MLflow store {tracking_uri()}", flush=True)
    print(budget_text(rows, not unequal), flush=True)
    for u in unequal:
        print(f"warning: not an equal-FLOPs budget: {u}", flush=True)
    results, parent = run_grid(grid, configs, executor=executor, max_parallel=int(grid.executor.get("max_parallel", 1)),
                               cluster={}, force=args.force)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri())
    ok = [r for r in results if r.get("run_id") and r["status"] != "FAILED"]
    grids = []
    for r in ok:
        with tempfile.TemporaryDirectory() as d:
            p = client.download_artifacts(r["run_id"], "samples.png", d)
            dst = out / f"samples-{r['variant']}.png"
            shutil.copy(p, dst)
            grids.append(_shown(dst))

    # FID during training, against training time and steps, from these runs' MLflow histories.
    from reports import plots, query

    conv = query.convergence(query.load_runs(grid.experiment, run_ids=[r["run_id"] for r in ok]))
    plot = plots.plot_convergence(conv, out / "convergence-demo.png")
    failed = [f"- {r['variant']} (seed {r['seed']}) FAILED: {r.get('reason', '')}" for r in results
              if r["status"] == "FAILED"]
    took = time.perf_counter() - started
    text = "\n".join([
        "# wavebench demo: measured on this machine", "",
        f"- {budget_text(rows, not unequal)}",
        *[f"- warning: not an equal-FLOPs budget: {u}" for u in unequal],
        f"- this invocation: {took / 60:.1f} min on {platform.machine()} ({dt.datetime.now():%Y-%m-%d %H:%M}), "
        "re-used FINISHED runs included", "",
        demo_table(results, grid.experiment, dataset), "",
        "## FID in Inception-v3 features (final samples)", "",
        "The papers' network (TF Inception-v3 2015-12-05, torch-fidelity's FID/KID) on the same final samples as the "
        "table above: another scale than the digit classifier's FID (digits are far from ImageNet photographs).", "",
        inception_text(client, results), "",
        "## FID during training", "",
        "Measured every `eval.every_steps` steps on `eval.every_num_samples` samples (fewer than the final FID's, "
        "another protocol); training time excludes these evaluations.", "",
        convergence_text(conv), "",
        "- every number above was measured by this demo's runs on this machine (a re-run reuses FINISHED ones; "
        "--force retrains); published numbers are in `make table-cifar10`",
        f"- the same table again: `python -m reports.table --dataset {dataset} --experiment {grid.experiment} "
        f"--measured-only --filter \"tags.grid = '{grid.name}'\"`",
        f"- sample grids: {', '.join(grids) or 'none'}; convergence plot: {_shown(plot) if plot else 'none'}",
        f"- MLflow parent run {parent} (experiment {grid.experiment!r})",
        *failed,
    ])
    (out / "demo.md").write_text(text + "\n")
    print()
    print(text)
    print()
    for line in ui_lines(grid.experiment, parent):
        print(line)
    print(f"\nwritten: {out / 'demo.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
