"""``make demo``: run experiments/demo.yaml through the runner (local executor), then print and write the table.

Writes ``reports/out/demo.md`` and one sample grid per variant (``reports/out/samples-<variant>.png``), taken
from the MLflow runs. Re-running skips the jobs that already FINISHED and prints their table again
(``python -m bench.demo --force`` retrains).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench.run import load_grid, resolve_executor, run_grid, validate
from bench.tracking import REPO_ROOT, tracking_uri

OUT = REPO_ROOT / "reports" / "out"


def render(results: list[dict], client) -> tuple[str, list[str]]:
    """Markdown table of the demo runs plus the protocol lines, from what the runs logged."""
    head = ("| variant | FID | precision | recall | NFE | s / batch of 100 | GFLOPs / sample | G params | "
            "train wall-clock (s) | train steps |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    protocols = set()
    for r in results:
        m = r.get("metrics") or {}
        if r["status"] == "FAILED" or not m:
            lines.append(f"| {r['variant']} | failed: {r.get('reason', '')} | | | | | | | | |")
            continue
        run = client.get_run(r["run_id"])
        tags, params = run.data.tags, run.data.params
        m = {**run.data.metrics, **m}
        protocols.add(
            f"quality: {params.get('eval.metrics.num_samples')} generated samples vs the digits train split, "
            f"backbone {tags.get('metric_backbone_fid', '?')}, {tags.get('metric_implementation', '?')}; "
            f"timing: batch {params.get('eval.timing.batch_size')}, {params.get('eval.timing.warmup')} warm-up + "
            f"{params.get('eval.timing.repeats')} timed runs, median shown, device {tags.get('timing_device', '?')} "
            f"with {tags.get('timing_threads', '?')} threads; scale {tags.get('scale')}")
        lines.append(
            f"| {r['variant']} | {m['fid']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {int(m['nfe'])} | "
            f"{m['time_median_s']:.3f} | {m['gflops_per_sample']:.3f} | {m['params_generator'] / 1e6:.2f}M | "
            f"{m['train_wall_clock_s']:.0f} | {int(m['train_steps'])} |")
    return "\n".join(lines), sorted(protocols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="demo")
    ap.add_argument("--force", action="store_true", help="retrain even if the demo runs already exist")
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    grid = load_grid(args.grid)
    configs = validate(grid)
    executor = resolve_executor(grid.executor.get("name", "local"))
    print(f"wavebench demo: {len(configs)} jobs ({', '.join(c.variant for c in configs)}) on {configs[0].dataset}, "
          f"executor {executor}; MLflow store {tracking_uri()}", flush=True)
    results, parent = run_grid(grid, configs, executor=executor, max_parallel=int(grid.executor.get("max_parallel", 1)),
                               cluster={}, force=args.force)
    client = MlflowClient(tracking_uri())
    table, protocols = render(results, client)
    OUT.mkdir(parents=True, exist_ok=True)
    grids = []
    for r in results:
        if r.get("run_id") and r["status"] != "FAILED":
            with tempfile.TemporaryDirectory() as d:
                p = client.download_artifacts(r["run_id"], "samples.png", d)
                dst = OUT / f"samples-{r['variant']}.png"
                shutil.copy(p, dst)
                grids.append(str(dst.relative_to(REPO_ROOT)))
    text = "\n".join([
        "# wavebench demo: measured on this machine", "", table, "",
        *[f"- {p}" for p in protocols],
        "- every number above was measured by this run; published numbers are in `make table-cifar10`",
        f"- sample grids: {', '.join(grids)}; MLflow parent run {parent} (experiment {grid.experiment!r}, `make ui`)",
    ])
    (OUT / "demo.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nwritten: {OUT / 'demo.md'}")
    return 1 if any(r["status"] == "FAILED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
