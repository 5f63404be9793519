"""Submitting jobs through submitit, for the grid runner (bench.run) and the tuner (bench.tune).

What both need lives here once: the executors (local or SLURM) and the cluster profiles, the environment and the
GPUs a job gets, the job callable (:class:`JobTask`), following submitted jobs until they are over (one guarded
look at SLURM's queue), their results, and making those results agree with MLflow. Also the YAML reading both
use (grids, tuning configs, cluster profiles), which names the line of a syntax error::

    sub = Submitter("slurm", folder, load_cluster("slurm/profiles/local.yaml"), timeout_min=60)
    job = sub.submit(key, sub.task(configs, experiment, parent_run_id, tags), configs[0])
    while not sub.done(job): ...
    results = sub.result(job)    # one dict per job of the task; raises when the job died
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import yaml

from bench.config import ConfigError, RunConfig, to_dict
from bench.tracking import REPO_ROOT, store_write, tracking_uri

__all__ = ["EXECUTORS", "CLUSTER_KEYS", "find_experiment_file", "read_yaml", "load_cluster", "resolve_executor",
           "cluster_parameters", "make_executor", "set_processes", "job_environment", "visible_gpus", "gpu_census",
           "LocalGpus", "device_problems", "JobTask", "Submitter", "squeue_state", "stop_orphan", "task_result",
           "log_tail", "indent", "reconcile"]

EXECUTORS = ("local", "slurm", "auto")
# Cluster profile key -> submitit parameter (slurm/profiles/*.yaml).
PROFILE_TO_SUBMITIT = {"partition": "slurm_partition", "gpus_per_node": "gpus_per_node",
                       "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "timeout_min": "timeout_min",
                       "array_parallelism": "slurm_array_parallelism",
                       "additional_parameters": "slurm_additional_parameters", "signal_delay_s": "slurm_signal_delay_s"}
CLUSTER_KEYS = tuple(PROFILE_TO_SUBMITIT)
SQUEUE_EVERY_S = 15.0  # seconds between two squeue looks at one job
SLURM_GONE_S = 60.0    # a SLURM job that squeue no longer lists and that left no result for this long is over
CANCEL_GRACE_S = 30.0  # after asking a job to stop, wait this long for it to end


# ============================================================================================== experiment files

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


def read_yaml(path: Path) -> Any:
    """The file's YAML; a syntax error is a ConfigError naming the file, the line and the column."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"malformed YAML at{where}: {getattr(e, 'problem', None) or e}"], str(path)) from None


def load_cluster(spec: str | dict | None) -> dict:
    """A cluster profile: a path (or one relative to the repository), an inline mapping, or None (no profile)."""
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
    data = read_yaml(path) or {}
    bad = [k for k in data if k not in CLUSTER_KEYS]
    if bad:
        raise ConfigError([f"unknown cluster key {k!r}; valid: {', '.join(CLUSTER_KEYS)}" for k in bad], str(path))
    return data


# ============================================================================================== executors

def _sbatch_available() -> bool:
    return shutil.which("sbatch") is not None


def resolve_executor(requested: str) -> str:
    """``auto`` is slurm when sbatch is on PATH, else local; ``slurm`` without sbatch is a ConfigError."""
    if requested == "auto":
        return "slurm" if _sbatch_available() else "local"
    if requested == "slurm" and not _sbatch_available():
        raise ConfigError(["--executor slurm: sbatch is not on PATH (start a cluster with "
                           "`slurm/local-cluster.sh up`, or use --executor local)"])
    return requested


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


def job_environment() -> dict[str, str]:
    """What a job's process must share with the submitting one: the MLflow store, the run, cache and artifact
    directories."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri()}
    for k in ("WAVEBENCH_RUNS", "WAVEBENCH_CACHE", "WAVEBENCH_ARTIFACT_ROOT", "WAVEBENCH_DATA"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


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


# ============================================================================================== submitting and following

def squeue_state(job_id: str) -> str | None:
    """SLURM's state of a job as squeue lists it (PENDING, RUNNING, ...); "" when squeue no longer lists it;
    None when squeue did not answer."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return "" if "Invalid job id" in out.stderr else None
    return (out.stdout.strip().splitlines() or [""])[0]


@dataclass
class _Look:
    """The last squeue look at one SLURM job."""
    at: float = float("-inf")
    state: str | None = None          # squeue_state's answer
    gone_since: float | None = None   # when squeue stopped listing it


class Submitter:
    """One executor and what its jobs get: this process's environment (:func:`job_environment`) and, on the local
    executor, GPUs of their own (:class:`LocalGpus`). It follows the jobs it submitted until they are over."""

    def __init__(self, kind: str, folder: Path, cluster: dict, timeout_min: float):
        self.kind, self.cluster = kind, cluster
        self.executor = make_executor(kind, folder, cluster, timeout_min)
        self.env = job_environment()
        self.gpus = visible_gpus()
        self.pool = LocalGpus(self.gpus if kind == "local" else [])
        self._looks: dict[str, _Look] = {}

    def task(self, chain: list[RunConfig], experiment: str, parent_run_id: str | None, tags: dict,
             force: bool = False) -> JobTask:
        """The task running ``chain`` (jobs that share a training hash, in order)."""
        from bench import registry

        return JobTask([to_dict(c) for c in chain], experiment, parent_run_id, tags, force, self.env,
                       [registry.job_hash(c) for c in chain])

    def submit(self, key: int, task: JobTask, cfg: RunConfig):
        """Submit one task whose first job is ``cfg`` (its device and process count); None, with nothing
        submitted, while the local GPUs it needs are busy. ``key`` names its GPUs for :meth:`release`."""
        if self.kind == "local" and not self.pool.assign(key, task, cfg, self.executor):
            return None
        set_processes(self.executor, self.cluster, cfg.processes)
        return self.executor.submit(task)

    def submit_array(self, tasks: list[JobTask], firsts: list[RunConfig], max_parallel: int) -> list:
        """SLURM: every task at once, as one job array per process count, at most ``max_parallel`` running."""
        if max_parallel:
            self.executor.update_parameters(slurm_array_parallelism=max_parallel)
        jobs: list = [None] * len(tasks)
        for n in sorted({c.processes for c in firsts}):
            idx = [i for i, c in enumerate(firsts) if c.processes == n]
            set_processes(self.executor, self.cluster, n)
            for i, j in zip(idx, self.executor.submit_array([tasks[i] for i in idx])):
                jobs[i] = j
        return jobs

    def release(self, key: int) -> None:
        """The task submitted under ``key`` is over: its local GPUs are free again."""
        self.pool.release(key)

    def _look(self, job) -> _Look:
        look = self._looks.setdefault(str(job.job_id), _Look())
        now = time.monotonic()
        if now - look.at >= SQUEUE_EVERY_S:
            look.at, look.state = now, squeue_state(job.job_id)
            look.gone_since = (look.gone_since or now) if look.state == "" else None
        return look

    def done(self, job) -> bool:
        """Whether the job is over. submitit says so from the result file or SLURM's accounting; a cluster without
        accounting never tells it that a job died (no result file ever appears), so a SLURM job that squeue has
        not listed for a minute and that left no result is over too."""
        try:
            if job.done():
                return True
        except Exception:
            pass
        if self.kind != "slurm":
            return False
        look = self._look(job)
        return look.gone_since is not None and time.monotonic() - look.gone_since > SLURM_GONE_S

    def state(self, job) -> str:
        """A SLURM job's state: squeue's, else submitit's (accounting), else UNKNOWN."""
        st = self._look(job).state
        if st:
            return st
        try:
            return job.state
        except Exception:
            return "UNKNOWN"

    def result(self, job) -> list[dict]:
        """What the task of a job that is over returned (:func:`task_result`). A job that left no result died:
        that is raised at once. submitit would wait for it (for ever on SLURM without accounting, 15 s for a local
        job); a SLURM job's file gets 15 s to show up on a network file system."""
        deadline = time.monotonic() + (2.0 if self.kind == "local" else 15.0)
        while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not job.paths.result_pickle.exists():
            raise RuntimeError("its process ended without a result")
        return task_result(job)

    def collect(self, job, chain: list[RunConfig], name: str, results: dict[str, dict], say) -> None:
        """Record what a task that is over returned for each job of its chain (a job it did not report stays
        absent); say how it went, with the end of its log when a job failed."""
        from bench import registry

        try:
            res = self.result(job)
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

    def stop(self, job) -> None:
        """Ask a running job to stop as Ctrl-C would (SIGINT: it marks its run KILLED and exits)."""
        if self.kind == "slurm":  # scancel's default SIGTERM is ignored by submitit's job until KillWait ends
            subprocess.run(["scancel", "--signal=INT", str(job.job_id)], capture_output=True, timeout=30)
        else:
            job.cancel()  # SIGINT to submitit's controller, which interrupts, then kills, the task

    def stopped(self, job) -> bool:
        """After :meth:`stop`: whether the job has ended (a result, the local process gone, squeue not listing it)."""
        if job.paths.result_pickle.exists():
            return True
        if self.kind == "local":
            return job.done()
        return squeue_state(job.job_id) == ""

    def cancel(self, job) -> None:
        """Make sure a SLURM job is gone (scancel); errors are ignored."""
        if self.kind == "slurm":
            try:
                job.cancel(check=False)
            except Exception:
                pass


def stop_orphan(kind: str | None, job_id: str | None) -> bool:
    """Stop a job an earlier process submitted and left running (it was killed, not interrupted): SLURM jobs by id;
    local ones by their controller's pid, if that still is one. True when it was stopped."""
    if not job_id:
        return False
    if kind == "slurm":
        for extra in (["--signal=INT"], []):
            try:
                subprocess.run(["scancel", *extra, job_id], capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError):
                return False
            time.sleep(5.0)
        return True
    if kind == "local":
        cmdline = Path(f"/proc/{job_id}/cmdline")
        try:
            if b"submitit" not in cmdline.read_bytes():
                return False
            os.kill(int(job_id), signal.SIGINT)  # the controller interrupts, then kills, its task
        except (OSError, ValueError):
            return False
        deadline = time.monotonic() + CANCEL_GRACE_S
        while cmdline.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return True
    return False


# ============================================================================================== results

def task_result(job) -> list[dict]:
    """What a submitted :class:`JobTask` returned: rank 0's results (the only rank that evaluates)."""
    return job.results()[0]


def log_tail(job, n: int = 15) -> str:
    lines = []
    for getter in (job.stderr, job.stdout):
        try:
            text = getter() or ""
        except Exception:
            text = ""
        lines += text.strip().splitlines()[-n:]
    return "\n".join(lines[-n:])


def indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.splitlines())


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
            run_id = run.info.run_id
            store_write(f"marking run {run_id} FAILED", lambda: (
                client.set_tag(run_id, "failure_reason", f"the job's process ended: {reason}"[:5000]),
                client.set_terminated(run_id, status="FAILED")))
