"""The runner: expand a grid, validate every job, submit through submitit (local or SLURM), one MLflow run per job.

    python -m bench.run --grid experiments/ablation.yaml [--executor local|slurm|auto] [--dry-run]
                        [--cluster slurm/profiles/<profile>.yaml] [--max-parallel N] [--force]
    python -m bench.run --grid experiments/ablation.yaml --status     # what MLflow holds of each job

Grid YAML::

    name: ablation                 # optional; default: the file name
    experiment: wavebench          # MLflow experiment (default wavebench)
    defaults: {dataset: digits, scale: tiny, train: {max_steps: 400}}   # partial config for every job
    axes: {variant: [wavediff-wg, wavediff-wg-no-residual], seed: [0, 1]}  # cartesian product
    jobs: [{variant: ddpm, eval: {sampler: ddim}}]   # explicit jobs (each is combined with the axes)
    executor: {name: auto, max_parallel: 2, timeout_min: 120}
    cluster: slurm/profiles/local.yaml   # or an inline mapping (partition, gpus_per_node, ...)

Every problem of the whole grid is reported at once (exit code 2) before anything is submitted or logged.
A job whose hash already has a FINISHED run is skipped (``--force`` retrains); an interrupted job resumes from
its checkpoint and continues its MLflow run. Exit code: 0 when every job finished, 100 + N when N jobs failed.

The runner writes the experiment and the grid's parent run before any job starts (no two jobs race to create
them), tags the parent with its host, pid and a heartbeat, and marks a parent that an earlier runner left RUNNING
(killed, or its machine restarted) KILLED with the reason when the grid runs again or ``--status`` looks at it.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ConfigError, RunConfig, unflatten
from bench.submit import (CLUSTER_KEYS, EXECUTORS, LocalGpus, Submitter, device_problems,
                          find_experiment_file, gpu_census, load_cluster, read_yaml, reconcile, resolve_executor,
                          visible_gpus)
from bench.tracking import Tracker, TrackingError, current_name, tracking_uri, ui_lines

__all__ = ["load_grid", "expand", "validate", "Grid", "main", "run_grid", "prepare_tracking", "orphaned_parents",
           "grid_status"]

GRID_KEYS = ("name", "experiment", "defaults", "axes", "jobs", "executor", "cluster")
EXECUTOR_KEYS = ("name", "max_parallel", "timeout_min")


@dataclass
class Grid:
    name: str
    path: Path
    experiment: str = "wavebench"
    jobs: list[dict] = field(default_factory=list)        # expanded, unresolved job mappings
    executor: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)


# ============================================================================================== grid files

def find_grid(name: str) -> Path:
    return find_experiment_file(name, "grid")


def _merge(a: dict, b: dict) -> dict:
    """Deep merge: b's values win; nested mappings merge."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_grid(name: str) -> Grid:
    path = find_grid(name)
    raw = read_yaml(path) or {}
    problems = []
    if not isinstance(raw, dict):
        raise ConfigError([f"a grid is a mapping with keys {', '.join(GRID_KEYS)}"], str(path))
    for k in raw:
        if k not in GRID_KEYS:
            problems.append(f"unknown grid key {k!r}; valid: {', '.join(GRID_KEYS)}")
    defaults = raw.get("defaults") or {}
    axes = raw.get("axes") or {}
    jobs = raw.get("jobs") or []
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a mapping (a partial job config)")
        defaults = {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        problems.append("axes: expected a mapping from key to a non-empty list of values")
        axes = {}
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        problems.append("jobs: expected a list of mappings")
        jobs = []
    if not axes and not jobs:
        problems.append("the grid has no jobs: give 'axes' and/or 'jobs'")
    executor = raw.get("executor") or {}
    if isinstance(executor, str):
        executor = {"name": executor}
    for k in executor:
        if k not in EXECUTOR_KEYS:
            problems.append(f"unknown executor key {k!r}; valid: {', '.join(EXECUTOR_KEYS)}")
    cluster = raw.get("cluster") or {}
    if problems:
        raise ConfigError(problems, str(path))
    grid = Grid(name=raw.get("name") or path.stem, path=path, experiment=raw.get("experiment") or "wavebench",
                executor=executor, cluster=cluster)
    grid.jobs = expand(defaults, axes, jobs)
    return grid


def expand(defaults: dict, axes: dict, jobs: list[dict]) -> list[dict]:
    """defaults <- each explicit job (or one empty job) <- each combination of the axes."""
    keys = list(axes)
    combos = [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))] or [{}]
    out = []
    for base in jobs or [{}]:
        for combo in combos:
            out.append(_merge(_merge(unflatten(defaults), unflatten(base)), unflatten(combo)))
    return out


def _job_label(i: int, job: dict) -> str:
    bits = [str(job.get("variant", "?"))]
    for k in ("dataset", "seed"):
        if k in job:
            bits.append(f"{k}={job[k]}")
    return f"job {i} ({', '.join(bits)})"


def validate(grid: Grid) -> list[RunConfig]:
    """Resolve every job; raise one ConfigError naming every problem of every job."""
    from bench import registry

    configs, problems = [], []
    seen: dict[str, int] = {}
    for i, job in enumerate(grid.jobs):
        try:
            cfg = registry.resolve(job)
        except ConfigError as e:
            problems += [f"{_job_label(i, job)}: {p}" for p in e.problems]
            continue
        h = registry.job_hash(cfg)
        if h in seen:
            problems.append(f"{_job_label(i, job)}: identical to job {seen[h]} (same resolved config)")
            continue
        seen[h] = i
        configs.append(cfg)
    ex = grid.executor.get("name", "auto")
    if ex not in EXECUTORS:
        problems.append(f"executor.name={ex!r}; valid: {', '.join(EXECUTORS)}")
    for k in grid.cluster:
        if k not in CLUSTER_KEYS:
            problems.append(f"unknown cluster key {k!r}; valid: {', '.join(CLUSTER_KEYS)}")
    if problems:
        raise ConfigError(problems, f"grid {grid.path}")
    return configs


def chains(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Jobs sharing a training hash run in one task, in order (they share one checkpoint directory)."""
    from bench import registry

    groups: dict[str, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(registry.train_hash(c), []).append(c)
    return list(groups.values())


HEARTBEAT_S = 60.0       # how often a running runner says so on its parent run (tag runner_heartbeat)
ORPHAN_AFTER_S = 900.0   # a parent run of another host whose heartbeat is older than this has lost its runner


def _runner_identity() -> dict:
    """Who runs this grid: host, pid and the process's start time (a pid is reused; the pair is not)."""
    import psutil

    return {"runner_host": socket.gethostname(), "runner_pid": str(os.getpid()),
            "runner_process_start": f"{psutil.Process().create_time():.2f}", "runner_heartbeat": f"{time.time():.0f}"}


def prepare_tracking(experiment: str, grid_name: str, run_name: str, executor: str, tags: dict | None = None
                     ) -> Tracker:
    """What the runner writes to the store before any job starts, so that no two jobs race to create it: the
    store's schema (a new SQLite file), the experiment, and the grid's parent run, tagged with the runner's
    identity (:func:`orphaned_parents` reads it). Returns the parent run."""
    return Tracker.start(experiment, run_name=run_name,
                         tags={"grid": grid_name, "executor": executor, "kind": "grid", **_runner_identity(),
                               **(tags or {})})


def _runner_gone(tags: dict, now: float) -> str | None:
    """Why the runner of a RUNNING parent run is gone (None while it may be alive): on this host, its process
    no longer exists (or the pid is another process now); elsewhere, its heartbeat stopped."""
    import psutil

    host, pid = tags.get("runner_host"), tags.get("runner_pid")
    if not host or not pid:
        return None  # a parent from before runner identities: nothing to judge by
    if host == socket.gethostname():
        try:
            started = psutil.Process(int(pid)).create_time()
            if abs(started - float(tags.get("runner_process_start", started))) < 1.0:
                return None
        except (psutil.NoSuchProcess, ValueError):
            pass
        return f"its runner (pid {pid} on {host}) ended without closing it (killed, or its machine restarted)"
    beat = float(tags.get("runner_heartbeat") or 0)
    if now - beat > ORPHAN_AFTER_S:
        return (f"its runner (pid {pid} on {host}) has not reported for {(now - beat) / 60:.0f} min "
                f"(it reports every {HEARTBEAT_S:.0f} s)")
    return None


def orphaned_parents(experiment: str, grid_name: str, close: bool = True) -> list[tuple[str, str]]:
    """The grid's parent runs still RUNNING whose runner is gone, as (run id, reason); with ``close`` each is
    marked KILLED with the reason (tag failure_reason), as a job run whose process died is marked FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], f"tags.kind = 'grid' and tags.grid = '{grid_name}' and "
                              "attributes.status = 'RUNNING'")
    found = []
    for run in runs:
        why = _runner_gone(run.data.tags, time.time())
        if why is None:
            continue
        found.append((run.info.run_id, why))
        if close:
            t = Tracker(run.info.run_id)
            t.set_tags({"failure_reason": f"orphaned: {why}"})
            t.end("KILLED")
    return found


def grid_status(grid: Grid, configs: list[RunConfig], out=None) -> int:
    """``--status``: each job's latest MLflow run (status, step, FID) and the grid's parent runs; parents left
    RUNNING by a runner that is gone are marked KILLED first. Returns the number of jobs without a FINISHED run."""
    from mlflow.tracking import MlflowClient

    from bench import registry

    out = out or sys.stdout
    for run_id, why in orphaned_parents(grid.experiment, grid.name):
        print(f"[orphan] parent run {run_id} marked KILLED: {why}", file=out)
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(grid.experiment)
    rows, missing = [], 0
    for c in configs:
        h = registry.job_hash(c)
        runs = client.search_runs([exp.experiment_id], f"tags.job_hash = '{h}'", max_results=1,
                                  order_by=["attributes.start_time DESC"]) if exp else []
        r = runs[0] if runs else None
        missing += r is None or r.info.status != "FINISHED"
        rows.append({"variant": c.variant, "dataset": c.dataset, "seed": c.seed, "job_hash": h,
                     "status": r.info.status if r else "NOT RUN", "run_id": r.info.run_id if r else None,
                     "metrics": {k: v for k, v in (r.data.metrics if r else {}).items()},
                     "reason": (r.data.tags.get("failure_reason", "") if r else "")})
    print(f"grid {grid.name}: {len(configs)} jobs in experiment {grid.experiment!r}, {tracking_uri()}", file=out)
    print(summary_table(rows), file=out)
    parents = client.search_runs([exp.experiment_id], f"tags.kind = 'grid' and tags.grid = '{grid.name}'",
                                 max_results=5, order_by=["attributes.start_time DESC"]) if exp else []
    for p in parents:
        started = dt.datetime.fromtimestamp(p.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        reason = p.data.tags.get("failure_reason", "")
        print(f"parent run {p.info.run_id} (started {started}): {p.info.status}" + (f" ({reason})" if reason else ""),
              file=out)
    return missing


def run_grid(grid: Grid, configs: list[RunConfig], *, executor: str, max_parallel: int, cluster: dict,
             force: bool = False, poll_s: float = 2.0, out=None) -> tuple[list[dict], str]:
    """Submit every job (skipping FINISHED ones), follow their state, return (results, parent run id)."""
    out = out or sys.stdout
    from bench import registry
    from bench.job import find_finished_run, runs_root

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    for run_id, why in orphaned_parents(grid.experiment, grid.name):
        say(f"[orphan] parent run {run_id} of an earlier attempt marked KILLED: {why}")
    started_ms = int(time.time() * 1000)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = runs_root() / "submitit" / f"{grid.name}-{stamp}"
    timeout = float(grid.executor.get("timeout_min", cluster.get("timeout_min", 240)))
    sub = Submitter(executor, folder, cluster, timeout)
    parent = prepare_tracking(grid.experiment, grid.name, f"grid-{grid.name}-{stamp}", executor,
                              {"grid_path": str(grid.path)})
    parent.log_params({"grid": grid.name, "num_jobs": len(configs), "executor": executor,
                       "max_parallel": max_parallel})
    results: dict[str, dict] = {}
    todo = []
    for chain in chains(configs):
        pending = []
        for c in chain:
            h = registry.job_hash(c)
            done = None if force else find_finished_run(grid.experiment, h)
            if done:
                results[h] = {"job_hash": h, "status": "SKIPPED", "run_id": done["run_id"], "metrics": done["metrics"],
                              "reason": "already FINISHED"}
                say(f"[skip] {c.variant} ({h[:8]}): FINISHED run {done['run_id']} exists")
            else:
                pending.append(c)
        if pending:
            todo.append(pending)

    tags = {"grid": grid.name, "executor": executor}
    tasks = [sub.task(chain, grid.experiment, parent.run_id, tags, force) for chain in todo]
    names = [" + ".join(f"{c.variant}/{c.dataset}/s{c.seed}" for c in chain) for chain in todo]
    jobs: list = []
    states: dict[int, str] = {}
    if executor == "slurm":
        jobs = sub.submit_array(tasks, [chain[0] for chain in todo], max_parallel)
        for i, j in enumerate(jobs):
            say(f"[pending] {names[i]}  (SLURM job {j.job_id})")
            states[i] = "pending"
    queue = list(range(len(tasks)))
    beat = time.monotonic()
    running: dict[int, Any] = {}
    finished: dict[int, Any] = {}
    while len(finished) < len(tasks):
        if executor != "slurm":  # throttle local jobs ourselves (submitit's local executor starts all at once)
            while queue and len(running) < max(1, max_parallel):
                i = queue[0]
                job = sub.submit(i, tasks[i], todo[i][0])
                if job is None:
                    break  # its GPUs are busy: wait for a running job to end
                queue.pop(0)
                running[i] = job
                gpu_note = f" on GPU {tasks[i].env['CUDA_VISIBLE_DEVICES']}" if sub.pool.held.get(i) else ""
                say(f"[running] {names[i]}{gpu_note}")
                states[i] = "running"
        else:
            running = {i: j for i, j in enumerate(jobs) if i not in finished}
        for i, j in list(running.items()):
            done = sub.done(j)
            if not done and executor == "slurm":
                new = "running" if sub.state(j) in ("RUNNING", "COMPLETING") else states.get(i, "pending")
                if new != states.get(i):
                    say(f"[{new}] {names[i]}")
                    states[i] = new
            if done:
                finished[i] = j
                running.pop(i, None)
                sub.release(i)
                sub.collect(j, todo[i], names[i], results, say)
        if len(finished) < len(tasks):
            time.sleep(poll_s)
        if time.monotonic() - beat >= HEARTBEAT_S:  # a runner on another host judges this grid alive by it
            beat = time.monotonic()
            try:
                parent.set_tags({"runner_heartbeat": f"{time.time():.0f}"})
            except TrackingError as e:  # the jobs go on; their runs are theirs
                say(f"[warning] {e}")

    ordered = []
    for c in configs:
        h = registry.job_hash(c)
        r = results.get(h) or {"job_hash": h, "status": "FAILED", "run_id": None, "metrics": {},
                               "reason": "its task ended without reporting this job"}
        ordered.append({"variant": c.variant, "dataset": c.dataset, "seed": c.seed, **r})
    reconcile(grid.experiment, ordered, say, since_ms=started_ms)
    for c, r in zip(configs, ordered):
        why = cpu_fallback(c, r, sub.gpus, executor, cluster, sub.pool)
        if why:
            say(f"[warning] {c.variant}/{c.dataset}/s{c.seed} ran on the CPU (device auto) although this machine "
                f"shows {len(sub.gpus)} GPU(s): {why}")
    n_failed = sum(r["status"] == "FAILED" for r in ordered)
    parent.log_metrics({"jobs_failed": n_failed, "jobs_finished": sum(r["status"] == "FINISHED" for r in ordered),
                        "jobs_skipped": sum(r["status"] == "SKIPPED" for r in ordered)})
    parent.log_dict({"results": ordered}, "grid_results.json")
    parent.end("FAILED" if n_failed else "FINISHED")
    return ordered, parent.run_id


def cpu_fallback(cfg: RunConfig, result: dict, gpus: list[str], executor: str, cluster: dict,
                 pool: LocalGpus) -> str | None:
    """Why a ``device: auto`` job trained on the CPU while this process sees GPUs (None when it did not)."""
    if cfg.device != "auto" or not gpus or result.get("device") != "cpu":
        return None
    if executor == "slurm":
        return ("the cluster profile gives jobs no GPU (set gpus_per_node)" if not cluster.get("gpus_per_node")
                else "the job's node showed no GPU to torch")
    return pool.fallback_reason(cfg) or "the job's process showed no GPU to torch"


def prerequisite_problems(configs: list[RunConfig], allow_download: bool = True) -> list[str]:
    """Jobs that could not be evaluated (missing metric weights or data set), found before anything is submitted:
    :func:`bench.registry.evaluation_prerequisites`, one look-up per distinct metrics configuration."""
    from bench import registry

    jobs: dict[str, list[str]] = {}  # one line per problem, naming every job it stops
    for i, c in enumerate(configs):
        for p in registry.evaluation_prerequisites(c, allow_download=allow_download):
            jobs.setdefault(p, []).append(f"{i} ({c.variant}, dataset={c.dataset})")
    return [f"job{'s' if len(js) > 1 else ''} {', '.join(js)}: {p}" for p, js in jobs.items()]


def summary_table(results: list[dict]) -> str:
    head = (f"{'variant':26s} {'data':8s} {'seed':>4s} {'status':9s} {'device':6s} {'FID':>8s} {'s/batch':>8s} "
            f"{'train s':>8s}  run id")
    lines = [head, "-" * len(head)]
    for r in results:
        m = {current_name(k): v for k, v in (r.get("metrics") or {}).items()}  # runs logged before the renames

        def f(k, fmt):
            return format(m[k], fmt) if k in m else format("-", ">" + fmt.split(".")[0])  # aligned either way

        lines.append(f"{r['variant']:26s} {r['dataset']:8s} {r['seed']:>4d} {r['status']:9s} "
                     f"{r.get('device') or '-':6s} {f('fid', '8.3f')} "
                     f"{f('sampling_s_per_batch_mean', '8.3f')} {f('train_wall_clock_s', '8.1f')}  "
                     f"{r.get('run_id') or '-'}")
        if r["status"] == "FAILED" and r.get("reason"):
            lines.append(f"    reason: {r['reason']}")
    return "\n".join(lines)


def dry_run_table(configs: list[RunConfig]) -> str:
    from bench import registry

    head = f"{'#':>3s} {'variant':26s} {'dataset':12s} {'scale':6s} {'seed':>4s} {'budget':18s} {'job hash':16s} train hash"
    lines = [head, "-" * len(head)]
    for i, c in enumerate(configs):
        t = c.train
        budget = ", ".join(f"{k}={getattr(t, k)}" for k in ("max_steps", "max_epochs", "max_minutes")
                           if getattr(t, k) is not None)
        lines.append(f"{i:>3d} {c.variant:26s} {c.dataset:12s} {c.scale:6s} {c.seed:>4d} {budget:18s} "
                     f"{registry.job_hash(c):16s} {registry.train_hash(c)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="Run a grid of wavebench jobs.")
    ap.add_argument("--grid", required=True, help="grid YAML (a path, or a name in experiments/)")
    ap.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the grid's, else auto")
    ap.add_argument("--cluster", default=None, help="SLURM profile YAML (e.g. slurm/profiles/local.yaml)")
    ap.add_argument("--max-parallel", type=int, default=None, help="jobs running at once")
    ap.add_argument("--dry-run", action="store_true", help="print the expanded jobs and exit")
    ap.add_argument("--force", action="store_true", help="retrain jobs that already have a FINISHED run")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--status", action="store_true", help="print each job's MLflow status and the grid's parent runs "
                    "(marking parents whose runner is gone KILLED), submit nothing; exit 0 when every job FINISHED")
    args = ap.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        configs = validate(grid)
        cluster = load_cluster(args.cluster if args.cluster else grid.cluster or None)
        executor = args.executor or grid.executor.get("name", "auto")
        if args.status:
            return 1 if grid_status(grid, configs) else 0
        if args.dry_run:
            print(f"grid {grid.name} ({grid.path}): {len(configs)} jobs, experiment {grid.experiment}")
            print(dry_run_table(configs))
            missing = prerequisite_problems(configs, allow_download=False)
            if missing:  # a real run first tries the downloads, then stops with exit 2 if a file is still missing
                print("\nnot on this machine yet (a real run tries to download them, and stops before training if "
                      "it cannot):\n  - " + "\n  - ".join(missing))
            return 0
        executor = resolve_executor(executor)
        problems = device_problems(configs, executor, cluster, visible_gpus())
        problems += prerequisite_problems(configs)
        if problems:
            raise ConfigError(problems, f"grid {grid.path}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    max_parallel = args.max_parallel or int(grid.executor.get("max_parallel", 1))
    where = f", this machine shows {gpu_census(visible_gpus())}" if executor == "local" else ""
    print(f"grid {grid.name}: {len(configs)} jobs, executor {executor}, max parallel {max_parallel}, "
          f"tracking {tracking_uri()}{where}", flush=True)
    results, parent_id = run_grid(grid, configs, executor=executor, max_parallel=max_parallel, cluster=cluster,
                                  force=args.force)
    print()
    print(summary_table(results))
    print("FID: the paper set's, in the metric backbone each run names (tag metric_backbone_fid); s/batch: mean "
          "seconds per sampler call on eval.timing.batch_size images (sampling_s_per_batch_mean); train s: training "
          "time (train_wall_clock_s)")
    print(f"\nparent run {parent_id} in experiment {grid.experiment!r}")
    for line in ui_lines(grid.experiment, parent_id):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    n_failed = sum(r["status"] == "FAILED" for r in results)
    return 100 + min(n_failed, 99) if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
