"""The runner: expand a grid, validate every job, submit through submitit (local or SLURM), one MLflow run per job.

    python -m bench.run --grid experiments/ablation.yaml [--executor local|slurm|auto] [--dry-run]
                        [--cluster slurm/profiles/<profile>.yaml] [--max-parallel N] [--force]

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
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import yaml

from bench.config import ConfigError, RunConfig, to_dict
from bench.tracking import REPO_ROOT, Tracker, current_name, tracking_uri, ui_lines

__all__ = ["load_grid", "expand", "validate", "Grid", "JobTask", "main", "run_grid", "EXECUTORS"]

EXECUTORS = ("local", "slurm", "auto")
GRID_KEYS = ("name", "experiment", "defaults", "axes", "jobs", "executor", "cluster")
EXECUTOR_KEYS = ("name", "max_parallel", "timeout_min")
# Cluster profile key -> submitit parameter (slurm/profiles/*.yaml).
PROFILE_TO_SUBMITIT = {"partition": "slurm_partition", "gpus_per_node": "gpus_per_node",
                       "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "timeout_min": "timeout_min",
                       "array_parallelism": "slurm_array_parallelism",
                       "additional_parameters": "slurm_additional_parameters", "signal_delay_s": "slurm_signal_delay_s"}
CLUSTER_KEYS = tuple(PROFILE_TO_SUBMITIT)


@dataclass
class Grid:
    name: str
    path: Path
    experiment: str = "wavebench"
    jobs: list[dict] = field(default_factory=list)        # expanded, unresolved job mappings
    executor: dict = field(default_factory=dict)
    cluster: dict = field(default_factory=dict)


# ============================================================================================== grid files

def find_experiment_file(name: str, what: str = "grid", pattern: str = "*.yaml") -> Path:
    """``ablation``, ``ablation.yaml`` or a path: bare names look in experiments/ (grids, tuning configs)."""
    p = Path(name)
    candidates = [p, REPO_ROOT / "experiments" / p, REPO_ROOT / "experiments" / f"{name}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted(q.stem for q in (REPO_ROOT / "experiments").glob(pattern))
    raise ConfigError([f"{what} {name!r} not found (looked at {', '.join(str(c) for c in candidates)}); "
                       f"{what}s in experiments/: {', '.join(available) or 'none'}"])


def find_grid(name: str) -> Path:
    return find_experiment_file(name, "grid")


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"malformed YAML at{where}: {getattr(e, 'problem', None) or e}"], str(path)) from None


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
    raw = _read_yaml(path) or {}
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
            from bench.config import unflatten

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


def load_cluster(spec: str | dict | None) -> dict:
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return spec
    path = Path(spec)
    if not path.is_file() and (REPO_ROOT / spec).is_file():
        path = REPO_ROOT / spec
    if not path.is_file():
        profiles = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "slurm").rglob("*.yaml"))
        raise ConfigError([f"cluster profile {spec!r} not found; profiles: {', '.join(profiles)}"])
    data = _read_yaml(path) or {}
    bad = [k for k in data if k not in CLUSTER_KEYS]
    if bad:
        raise ConfigError([f"unknown cluster key {k!r}; valid: {', '.join(CLUSTER_KEYS)}" for k in bad], str(path))
    return data


# ============================================================================================== the job callable

class JobTask(submitit.helpers.Checkpointable):
    """What an executor runs: one chain of jobs that share a training hash, in order.

    On SLURM the task is checkpointable: SIGUSR2 (time-out or preemption) makes the training loop save a
    checkpoint at the next step boundary, then submitit requeues the task, which resumes from that checkpoint
    and continues the same MLflow run.
    """

    def __init__(self, configs: list[dict], experiment: str, parent_run_id: str | None, tags: dict,
                 force: bool = False, env: dict | None = None, hashes: list[str] | None = None):
        self.configs, self.experiment, self.parent_run_id = configs, experiment, parent_run_id
        self.tags, self.force, self.env = tags, force, dict(env or {})
        self.hashes = hashes  # the job hashes the runner knows these configs by (checked on arrival)

    def __call__(self) -> list[dict]:
        from bench import registry
        from bench.distributed import process_group
        from bench.evaluate import resolve_device
        from bench.job import run_job

        os.environ.update(self.env)
        stop = threading.Event()
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        in_slurm = "SLURM_JOB_ID" in os.environ
        if in_slurm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR2, lambda signum, frame: stop.set())
        tags = dict(self.tags)
        if in_slurm:
            tags["slurm_job_id"] = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"]) + (
                f"_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in os.environ else "")
        results = []
        force = self.force
        cfgs = [registry.from_dict(d) for d in self.configs]
        for cfg, expected in zip(cfgs, self.hashes or []):
            if registry.job_hash(cfg) != expected:  # the runner and MLflow would disagree on this job's identity
                raise RuntimeError(f"{cfg.variant}: the job's config hashes to {registry.job_hash(cfg)} in the job "
                                   f"but to {expected} in the runner (its JSON form does not round-trip)")
        first = cfgs[0]  # a chain shares its training, hence its process count
        with process_group(first.processes, resolve_device(first.device)) as dist:
            for cfg in cfgs:
                try:
                    r = run_job(cfg, experiment=self.experiment, parent_run_id=self.parent_run_id, tags=tags,
                                force=force, progress=False, should_stop=stop.is_set, dist=dist)
                except Exception as e:  # the run is already marked FAILED with the reason
                    results.append({"job_hash": registry.job_hash(cfg), "status": "FAILED", "run_id": None,
                                    "reason": f"{type(e).__name__}: {e}", "metrics": {}})
                    if dist.enabled:  # the other ranks cannot go on without this one
                        raise
                    continue
                finally:
                    force = False  # later jobs of the chain share the (re)trained checkpoint
                results.append({"job_hash": r.job_hash, "status": r.status, "run_id": r.run_id,
                                "metrics": r.metrics, "reason": r.reason, "device": r.device})
                if r.status == "INTERRUPTED":
                    if callable(submitit_handler):  # rank 0: submitit's checkpoint() -> requeue -> exit
                        submitit_handler(signal.SIGUSR2, None)
                    break  # the rest of the chain runs after the requeue
        return results

    def checkpoint(self, *args, **kwargs):
        """Requeue the same task: it resumes from the checkpoint the loop just wrote."""
        return submitit.helpers.DelayedSubmission(JobTask(self.configs, self.experiment, self.parent_run_id,
                                                          self.tags, False, self.env, self.hashes))


# ============================================================================================== submission

def _sbatch_available() -> bool:
    return shutil.which("sbatch") is not None


def cluster_parameters(cluster: dict, timeout_min: float) -> dict[str, Any]:
    """A cluster profile as submitit's SLURM parameters (one node per job; SIGUSR2 90 s before the limit
    unless the profile says otherwise; unset or zero sizes left to SLURM's defaults)."""
    params: dict[str, Any] = {"timeout_min": int(timeout_min), "slurm_signal_delay_s": 90, "nodes": 1}
    for key, value in cluster.items():
        if value or key == "timeout_min":
            params[PROFILE_TO_SUBMITIT[key]] = dict(value) if isinstance(value, dict) else value
    params["timeout_min"] = int(params["timeout_min"])
    return params


def make_executor(kind: str, folder: Path, cluster: dict, timeout_min: float):
    if kind == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(**cluster_parameters(cluster, timeout_min))
        return ex
    ex = submitit.AutoExecutor(folder=folder, cluster="local")
    ex.update_parameters(timeout_min=int(timeout_min))
    return ex


def set_processes(ex, cluster: dict, processes: int) -> None:
    """The next submissions run ``processes`` tasks on one node (the DDP ranks of a job). On SLURM each task gets
    one GPU when the cluster profile asks for GPUs; local jobs get theirs from :class:`LocalGpus` instead."""
    params: dict[str, Any] = {"tasks_per_node": processes}
    if cluster.get("gpus_per_node") and ex.cluster == "slurm":
        params["gpus_per_node"] = max(int(cluster["gpus_per_node"]), processes)
    ex.update_parameters(**params)


# ============================================================================================== devices

def visible_gpus() -> list[str]:
    """The GPUs this process may hand to local jobs: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA
    stops at the first invalid one), else every CUDA device torch counts."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for d in env.split(","):
            d = d.strip()
            if not d or d == "-1":
                break
            ids.append(d)
        return ids
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver: no GPU to hand out
        return []


def gpu_census(gpus: list[str]) -> str:
    """Where the GPU count of this machine comes from, for messages."""
    import torch

    if "CUDA_VISIBLE_DEVICES" in os.environ:
        src = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
    else:
        src = f"torch {torch.__version__} counts {torch.cuda.device_count()} CUDA device(s)"
        if torch.version.cuda is None:
            src += " (a CPU-only build of torch)"
    return f"{len(gpus)} GPU(s): {src}"


class LocalGpus:
    """The local executor's GPUs. A job on ``auto`` or ``cuda`` takes ``processes`` of them while it runs (rank r
    uses the r-th), so jobs running at once never share one; a ``cpu`` job sees none; a job pinned to ``cuda:K``
    sees all of them (K counts among them) and reserves none. submitit's local executor would otherwise set
    ``CUDA_VISIBLE_DEVICES`` to the empty string (it follows ``gpus_per_node``, unset without a cluster profile)."""

    def __init__(self, gpus: list[str]):
        self.gpus, self.free = list(gpus), list(gpus)
        self.held: dict[int, list[str]] = {}

    def wants(self, cfg: RunConfig) -> int:
        """GPUs the job takes from the pool; 0 when it runs on the CPU or is pinned."""
        if not self.gpus or cfg.device == "cpu" or cfg.device.startswith("cuda:"):
            return 0
        return cfg.processes if cfg.processes <= len(self.gpus) else 0

    def available(self, cfg: RunConfig) -> bool:
        """Whether the GPUs such a job needs are free now."""
        return self.wants(cfg) <= len(self.free)

    def assign(self, key: int, task: "JobTask", cfg: RunConfig, ex) -> bool:
        """Give the next local submission of ``ex`` (this task) its GPUs; False (nothing changed) while the GPUs
        it needs are busy. The shell that starts the job's processes exports them, before any CUDA call."""
        n = self.wants(cfg)
        if n > len(self.free):
            return False
        got, self.free = self.free[:n], self.free[n:]
        self.held[key] = got
        visible = ",".join(self.gpus if cfg.device.startswith("cuda:") else got)
        task.env["CUDA_VISIBLE_DEVICES"] = visible
        ex.update_parameters(local_setup=[f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}"] if visible else [])
        return True

    def release(self, key: int) -> None:
        back = set(self.free) | set(self.held.pop(key, []))
        self.free = [g for g in self.gpus if g in back]  # in the machine's order

    def fallback_reason(self, cfg: RunConfig) -> str | None:
        """Why an ``auto`` job will run on the CPU although this machine has GPUs (None if it will not)."""
        if self.gpus and cfg.device == "auto" and cfg.processes > len(self.gpus):
            return f"processes={cfg.processes} needs {cfg.processes} GPUs, this machine shows {len(self.gpus)}"
        return None


def device_problems(configs: list[RunConfig], executor: str, cluster: dict, gpus: list[str]) -> list[str]:
    """Jobs that ask for CUDA where they cannot get it: found before anything is submitted."""
    problems = []
    for i, c in enumerate(configs):
        if not c.device.startswith("cuda"):
            continue
        label = f"job {i} ({c.variant}, device={c.device})"
        if executor == "slurm":
            if not cluster.get("gpus_per_node"):
                problems.append(f"{label}: the cluster profile gives jobs no GPU; set gpus_per_node in it (or use "
                                "device: auto)")
            continue
        need = int(c.device.split(":")[1]) + 1 if ":" in c.device else c.processes
        if len(gpus) < need:
            problems.append(f"{label}: needs {need} GPU(s), this machine shows {gpu_census(gpus)}; use device: "
                            "auto or cpu")
    return problems


def task_result(job) -> list[dict]:
    """What a submitted :class:`JobTask` returned: rank 0's results (the only rank that evaluates)."""
    return job.results()[0]


def chains(configs: list[RunConfig]) -> list[list[RunConfig]]:
    """Jobs sharing a training hash run in one task, in order (they share one checkpoint directory)."""
    from bench import registry

    groups: dict[str, list[RunConfig]] = {}
    for c in configs:
        groups.setdefault(registry.train_hash(c), []).append(c)
    return list(groups.values())


def log_tail(job, n: int = 15) -> str:
    lines = []
    for getter in (job.stderr, job.stdout):
        try:
            text = getter() or ""
        except Exception:
            text = ""
        lines += text.strip().splitlines()[-n:]
    return "\n".join(lines[-n:])


def run_grid(grid: Grid, configs: list[RunConfig], *, executor: str, max_parallel: int, cluster: dict,
             force: bool = False, poll_s: float = 2.0, out=None) -> tuple[list[dict], str]:
    """Submit every job (skipping FINISHED ones), follow their state, return (results, parent run id)."""
    out = out or sys.stdout
    from bench import registry
    from bench.job import find_finished_run, runs_root

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    started_ms = int(time.time() * 1000)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = runs_root() / "submitit" / f"{grid.name}-{stamp}"
    timeout = float(grid.executor.get("timeout_min", cluster.get("timeout_min", 240)))
    ex = make_executor(executor, folder, cluster, timeout)
    parent = Tracker.start(grid.experiment, run_name=f"grid-{grid.name}-{stamp}",
                           tags={"grid": grid.name, "grid_path": str(grid.path), "executor": executor,
                                 "kind": "grid"})
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

    env = job_environment()
    tags = {"grid": grid.name, "executor": executor}
    tasks = [JobTask([to_dict(c) for c in chain], grid.experiment, parent.run_id, tags, force, env,
                     [registry.job_hash(c) for c in chain]) for chain in todo]
    names = [" + ".join(f"{c.variant}/{c.dataset}/s{c.seed}" for c in chain) for chain in todo]
    gpus = visible_gpus()
    pool = LocalGpus(gpus if executor == "local" else [])
    jobs: list = []
    states: dict[int, str] = {}
    if executor == "slurm":
        if max_parallel:
            ex.update_parameters(slurm_array_parallelism=max_parallel)
        jobs = [None] * len(tasks)
        for n in sorted({chain[0].processes for chain in todo}):  # one array per process count
            idx = [i for i, chain in enumerate(todo) if chain[0].processes == n]
            set_processes(ex, cluster, n)
            for i, j in zip(idx, ex.submit_array([tasks[i] for i in idx])):
                jobs[i] = j
        for i, j in enumerate(jobs):
            say(f"[pending] {names[i]}  (SLURM job {j.job_id})")
            states[i] = "pending"
    queue = list(range(len(tasks)))
    running: dict[int, Any] = {}
    finished: dict[int, Any] = {}
    while len(finished) < len(tasks):
        if executor != "slurm":  # throttle local jobs ourselves (submitit's local executor starts all at once)
            while queue and len(running) < max(1, max_parallel):
                i = queue[0]
                if not pool.assign(i, tasks[i], todo[i][0], ex):
                    break  # its GPUs are busy: wait for a running job to end
                queue.pop(0)
                set_processes(ex, cluster, todo[i][0].processes)
                running[i] = ex.submit(tasks[i])
                gpu_note = f" on GPU {tasks[i].env['CUDA_VISIBLE_DEVICES']}" if pool.held.get(i) else ""
                say(f"[running] {names[i]}{gpu_note}")
                states[i] = "running"
        else:
            running = {i: j for i, j in enumerate(jobs) if i not in finished}
        for i, j in list(running.items()):
            try:
                done = j.done()
            except Exception:
                done = False
            if not done and executor == "slurm":
                try:
                    st = j.state
                except Exception:
                    st = "UNKNOWN"
                new = "running" if st in ("RUNNING", "COMPLETING") else states.get(i, "pending")
                if new != states.get(i):
                    say(f"[{new}] {names[i]}")
                    states[i] = new
            if done:
                finished[i] = j
                running.pop(i, None)
                pool.release(i)
                _collect(j, todo[i], names[i], results, say)
        if len(finished) < len(tasks):
            time.sleep(poll_s)

    ordered = []
    for c in configs:
        h = registry.job_hash(c)
        r = results.get(h) or {"job_hash": h, "status": "FAILED", "run_id": None, "metrics": {},
                               "reason": "its task ended without reporting this job"}
        ordered.append({"variant": c.variant, "dataset": c.dataset, "seed": c.seed, **r})
    reconcile(grid.experiment, ordered, say, since_ms=started_ms)
    for c, r in zip(configs, ordered):
        why = cpu_fallback(c, r, gpus, executor, cluster, pool)
        if why:
            say(f"[warning] {c.variant}/{c.dataset}/s{c.seed} ran on the CPU (device auto) although this machine "
                f"shows {len(gpus)} GPU(s): {why}")
    n_failed = sum(r["status"] == "FAILED" for r in ordered)
    parent.log_metrics({"jobs_failed": n_failed, "jobs_finished": sum(r["status"] == "FINISHED" for r in ordered),
                        "jobs_skipped": sum(r["status"] == "SKIPPED" for r in ordered)})
    parent.log_dict({"results": ordered}, "grid_results.json")
    parent.end("FAILED" if n_failed else "FINISHED")
    return ordered, parent.run_id


def job_environment() -> dict[str, str]:
    """What a job's process must share with the submitting one: the MLflow store, the run, cache and artifact
    directories."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri()}
    for k in ("WAVEBENCH_RUNS", "WAVEBENCH_CACHE", "WAVEBENCH_ARTIFACT_ROOT", "WAVEBENCH_DATA"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _collect(job, chain: list[RunConfig], name: str, results: dict[str, dict], say) -> None:
    """Record what a finished task returned for each job of its chain (a job it did not report stays absent)."""
    from bench import registry

    try:
        res = task_result(job)
    except Exception as e:
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
        for c in chain:
            h = registry.job_hash(c)
            results.setdefault(h, {"job_hash": h, "status": "FAILED", "run_id": None, "metrics": {},
                                   "reason": reason})
        say(f"[failed] {name}: {reason}")
        say(indent(log_tail(job)))
        return
    expected = {registry.job_hash(c) for c in chain}
    for r in res:
        results[r["job_hash"]] = r
    failed = [r for r in res if r["status"] == "FAILED"]
    unknown = [r["job_hash"] for r in res if r["job_hash"] not in expected]
    if unknown:  # the job and the runner disagree on a job's identity: say so instead of losing its result
        failed.append({"reason": f"the task reported job hash(es) {', '.join(unknown)}, the runner expected "
                                 f"{', '.join(sorted(expected))}"})
    state = "failed" if failed else "done"
    say(f"[{state}] {name}" + (f": {failed[0]['reason']}" if failed else ""))
    if failed:
        say(indent(log_tail(job)))


def reconcile(experiment: str, results: list[dict], say, since_ms: int) -> None:
    """Make the runner's statuses and MLflow's agree, job by job.

    - A job's run that MLflow holds as FINISHED is FINISHED, even if its task's result was lost (the metrics are
      read back from MLflow).
    - A task that failed or died (killed, out of memory, timed out) may leave its run RUNNING or KILLED: the run is
      marked FAILED with the reason (it stays resumable: the next attempt continues it from its checkpoint).
    - A job whose task reported FINISHED but whose run is not FINISHED is FAILED, with MLflow's reason.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return
    for r in results:
        if r["status"] not in ("FINISHED", "FAILED"):
            continue
        if r.get("run_id"):
            runs = [client.get_run(r["run_id"])]
        else:  # a run this job left open, or one it started (and closed) during this grid
            runs = []
            for extra in ("attributes.status = 'RUNNING'", f"attributes.start_time >= {since_ms}"):
                runs = runs or client.search_runs([exp.experiment_id], f"tags.job_hash = '{r['job_hash']}' and "
                                                  f"{extra}", max_results=1, order_by=["attributes.start_time DESC"])
        if not runs:
            continue
        run = runs[0]
        r["run_id"], status = run.info.run_id, run.info.status
        if status == "FINISHED" and r["status"] != "FINISHED":
            say(f"[note] {r['job_hash'][:8]}: the task reported {r['status']} ({r.get('reason', '')}), but MLflow run "
                f"{run.info.run_id} FINISHED: reporting FINISHED")
            r.update(status="FINISHED", reason="", metrics=dict(run.data.metrics))
        elif status != "FINISHED" and r["status"] == "FINISHED":
            reason = run.data.tags.get("failure_reason") or f"its MLflow run ended {status}"
            say(f"[note] {r['job_hash'][:8]}: the task reported FINISHED, but MLflow run {run.info.run_id} is "
                f"{status}: reporting FAILED")
            r.update(status="FAILED", reason=reason)
        if r["status"] == "FAILED" and status != "FAILED":
            reason = r.get("reason") or "its process ended without closing the run"
            client.set_tag(run.info.run_id, "failure_reason", f"the job's process ended: {reason}"[:5000])
            client.set_terminated(run.info.run_id, status="FAILED")


def cpu_fallback(cfg: RunConfig, result: dict, gpus: list[str], executor: str, cluster: dict,
                 pool: LocalGpus) -> str | None:
    """Why a ``device: auto`` job trained on the CPU while this process sees GPUs (None when it did not)."""
    if cfg.device != "auto" or not gpus or result.get("device") != "cpu":
        return None
    if executor == "slurm":
        return ("the cluster profile gives jobs no GPU (set gpus_per_node)" if not cluster.get("gpus_per_node")
                else "the job's node showed no GPU to torch")
    return pool.fallback_reason(cfg) or "the job's process showed no GPU to torch"


def indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


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
            return format(m[k], fmt) if k in m else "-"

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


def resolve_executor(requested: str) -> str:
    if requested == "auto":
        return "slurm" if _sbatch_available() else "local"
    if requested == "slurm" and not _sbatch_available():
        raise ConfigError(["--executor slurm: sbatch is not on PATH (start a cluster with "
                           "`slurm/local-cluster.sh up`, or use --executor local)"])
    return requested


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="Run a grid of wavebench jobs.")
    ap.add_argument("--grid", required=True, help="grid YAML (a path, or a name in experiments/)")
    ap.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the grid's, else auto")
    ap.add_argument("--cluster", default=None, help="SLURM profile YAML (e.g. slurm/profiles/local.yaml)")
    ap.add_argument("--max-parallel", type=int, default=None, help="jobs running at once")
    ap.add_argument("--dry-run", action="store_true", help="print the expanded jobs and exit")
    ap.add_argument("--force", action="store_true", help="retrain jobs that already have a FINISHED run")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        configs = validate(grid)
        cluster = load_cluster(args.cluster if args.cluster else grid.cluster or None)
        executor = args.executor or grid.executor.get("name", "auto")
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
