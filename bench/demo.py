"""``make demo``: run experiments/demo.yaml through the runner (local executor), then print and write the table.

The table is ``reports.table``'s per-data-set table (digits -> the cifar10 table) restricted to the demo's runs,
measured rows and columns only: the same code as ``python -m reports.table --dataset digits --experiment demo
--measured-only``. Writes ``reports/out/demo.md`` and one sample grid per variant
(``reports/out/samples-<variant>.png``), taken from the MLflow runs. Re-running skips the jobs that already
FINISHED and prints their table again (``python -m bench.demo --force`` retrains).
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


def demo_table(results: list[dict], experiment: str, dataset: str) -> str:
    """Markdown of the measured-only table of ``dataset``'s main table over the runs in ``results``."""
    from reports import table

    run_ids = [r["run_id"] for r in results if r.get("run_id") and r["status"] != "FAILED"]
    rep = table.build_report(table.table_for_dataset(dataset), experiment, datasets=[dataset], run_ids=run_ids,
                             measured_only=True)
    return table.render(rep, "md").rstrip()


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default="demo", help="grid YAML (a path, or a name in experiments/)")
    ap.add_argument("--force", action="store_true", help="retrain even if the demo runs already exist")
    ap.add_argument("--out", default=str(OUT), help="directory demo.md and the sample grids are written to")
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    grid = load_grid(args.grid)
    configs = validate(grid)
    executor = resolve_executor(grid.executor.get("name", "local"))
    dataset = configs[0].dataset
    print(f"wavebench demo: {len(configs)} jobs ({', '.join(c.variant for c in configs)}) on {dataset}, "
          f"executor {executor}; MLflow store {tracking_uri()}", flush=True)
    results, parent = run_grid(grid, configs, executor=executor, max_parallel=int(grid.executor.get("max_parallel", 1)),
                               cluster={}, force=args.force)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri())
    grids = []
    for r in results:
        if r.get("run_id") and r["status"] != "FAILED":
            with tempfile.TemporaryDirectory() as d:
                p = client.download_artifacts(r["run_id"], "samples.png", d)
                dst = out / f"samples-{r['variant']}.png"
                shutil.copy(p, dst)
                grids.append(_shown(dst))
    failed = [f"- {r['variant']} (seed {r['seed']}) FAILED: {r.get('reason', '')}" for r in results
              if r["status"] == "FAILED"]
    text = "\n".join([
        "# wavebench demo: measured on this machine", "",
        demo_table(results, grid.experiment, dataset), "",
        "- every number above was measured by this demo's runs on this machine (a re-run reuses FINISHED ones; "
        "--force retrains); published numbers are in `make table-cifar10`",
        f"- the same table again: `python -m reports.table --dataset {dataset} --experiment {grid.experiment} "
        f"--measured-only --filter \"tags.grid = '{grid.name}'\"`",
        f"- sample grids: {', '.join(grids) or 'none'}; MLflow parent run {parent} (experiment {grid.experiment!r}, "
        "`make ui`)",
        *failed,
    ])
    (out / "demo.md").write_text(text + "\n")
    print()
    print(text)
    print(f"\nwritten: {out / 'demo.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
