"""Tuning WaveDiff's reconstruction weight ``lambda_rec`` with Optuna, through the runner's executors.

    python -m bench.tune --config experiments/tune_lambda_rec.yaml [--executor local|slurm|auto]
                         [--cluster slurm/profiles/local.yaml] [--n-trials N] [--max-parallel N]
                         [--storage URL|PATH] [--dry-run]

Config YAML::

    study: lambda-rec-wavediff-digits   # Optuna study name (also tags the MLflow runs)
    experiment: tune-lambda-rec         # MLflow experiment of the study's parent run and its trial runs
    variant: wavediff                   # wavediff | wavediff-wg (or another wavediff-wg ablation)
    base: {dataset: digits, scale: tiny, train: {max_steps: 400}, eval: {every_steps: 100}}  # partial job
    lambda_rec: {low: 0.01, high: 10.0, include_zero: true}  # log-uniform; include_zero: one trial at 0 first
    objective: {metric: fid, direction: minimize}             # any final metric a job logs (OBJECTIVE_METRICS)
    n_trials: 20                        # finished trials (COMPLETE + PRUNED + FAIL) the study should hold
    sampler: {name: tpe, seed: 0, n_startup_trials: 5}        # tpe | random
    pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 100}   # median | threshold | none
    storage: null                       # default sqlite:///<repo>/optuna.db; an RDB URL; or a journal file path
    executor: {name: auto, max_parallel: 1, timeout_min: 240}
    cluster: slurm/profiles/local.yaml  # SLURM profile (or an inline mapping), as for bench.run

Only this driver opens the Optuna storage (ask-and-tell): it asks a trial, submits the trial's job as a
:class:`bench.run.JobTask`, reads the job's ``fid_intermediate`` history from MLflow while it trains, reports it
to the trial, cancels the job when the pruner says so, and tells the outcome (COMPLETE, PRUNED, or FAIL when the
job dies; the study goes on). Re-running the same command continues the study up to ``n_trials`` finished
trials. Every problem of the config is reported at once (exit code 2) before any storage or run is created.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import registry
from bench.config import ConfigError, apply_overrides, to_dict, unflatten
from bench.schema import INTERMEDIATE_METRICS, OBJECTIVE_METRICS, QUALITY_METRICS, RENAMED_METRICS, SCORE_KEYS
from bench.tracking import REPO_ROOT, Tracker, tracking_uri, ui_lines

__all__ = ["TuneConfig", "LambdaSpace", "Objective", "SamplerSpec", "PrunerSpec", "ExecutorSpec",
           "OBJECTIVE_METRICS", "TUNABLE_VARIANTS", "INTERMEDIATE_METRIC", "load_config", "validate",
           "open_study", "tune", "TuneResult", "main"]

INTERMEDIATE_METRIC = INTERMEDIATE_METRICS["paper"]  # what the pruner sees, logged every eval.every_steps (lower is better);
# fd_dinov2_intermediate instead when the jobs' eval.metrics.sets leave out the paper set (bench.job)
TUNABLE_VARIANTS = tuple(n for n in registry.VARIANTS if n.startswith("wavediff") and n != "wavediff-no-rec")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "threshold", "none")
EXECUTORS = ("local", "slurm", "auto")
DEFAULT_STORAGE = f"sqlite:///{REPO_ROOT / 'optuna.db'}"
ZERO_ATTR = "lambda_rec_zero"  # user attribute of the queued lambda_rec = 0 trial
CANCEL_GRACE_S = 30.0  # after cancelling a pruned job, wait this long for it to stop before marking its run


@dataclass
class LambdaSpace:
    low: float = 0.01                # log-uniform range [low, high] of train.lambda_rec; both > 0
    high: float = 10.0
    include_zero: bool = False       # also run one trial at exactly 0 (no reconstruction term), queued first


@dataclass
class Objective:
    metric: str = "fid"              # a final metric of the job (OBJECTIVE_METRICS)
    direction: str | None = None     # minimize | maximize; None = the metric's own (OBJECTIVE_METRICS)


@dataclass
class SamplerSpec:
    name: str = "tpe"                # tpe | random
    seed: int = 0                    # a resumed study re-seeds with seed + number of trials so far
    n_startup_trials: int = 5        # tpe: random trials before the density model takes over


@dataclass
class PrunerSpec:
    name: str = "median"             # median | threshold | none; all judge fid_intermediate
    n_startup_trials: int = 3        # median: finished trials before any pruning
    n_warmup_steps: int = 0          # no pruning before this training step
    interval_steps: int = 1          # judge every this many reported steps
    lower: float | None = None       # threshold: prune when fid_intermediate < lower ...
    upper: float | None = None       # ... or > upper


@dataclass
class ExecutorSpec:
    name: str = "auto"               # local | slurm | auto (slurm when sbatch is on PATH)
    max_parallel: int = 1            # trials in flight at once (local processes or SLURM jobs)
    timeout_min: float = 240.0       # wall-clock limit per trial job (a SLURM profile's timeout_min wins)


@dataclass
class TuneConfig:
    study: str = ""                  # Optuna study name; default: the config file's name
    experiment: str = "wavebench-tune"  # MLflow experiment
    variant: str = "wavediff"        # base variant (TUNABLE_VARIANTS)
    base: dict = field(default_factory=dict)  # partial job mapping (dataset, scale, train, eval, seed ...)
    lambda_rec: LambdaSpace = field(default_factory=LambdaSpace)
    objective: Objective = field(default_factory=Objective)
    n_trials: int = 20               # finished trials the study should hold
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    storage: str | None = None       # None = sqlite:///<repo>/optuna.db; "x://..." = RDB URL; else a journal file
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)
    cluster: Any = None              # SLURM profile path or mapping (bench.run.load_cluster)
    poll_s: float = 5.0              # seconds between looks at the jobs and their MLflow runs

    @property
    def direction(self) -> str:
        return self.objective.direction or OBJECTIVE_METRICS.get(self.objective.metric, "minimize")

    @property
    def storage_url(self) -> str:
        return self.storage or DEFAULT_STORAGE

    def definition(self) -> dict:
        """What makes two invocations the same study: the jobs, the search space and the objective."""
        return {"variant": self.variant, "base": unflatten(self.base), "lambda_rec": to_dict(self.lambda_rec),
                "objective": {"metric": self.objective.metric, "direction": self.direction}}


# ============================================================================================== config

_SHORTHAND = {"objective": "metric", "sampler": "name", "pruner": "name", "executor": "name"}


def find_config(name: str) -> Path:
    from bench.run import find_experiment_file

    return find_experiment_file(name, "tuning config", "tune*.yaml")


def load_config(name: str, overrides: dict | None = None) -> TuneConfig:
    """Read a tuning YAML (a path or a name in experiments/) and apply ``overrides`` (same keys). Only the
    structure and types are checked here; :func:`validate` checks the values."""
    path = find_config(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"malformed YAML: {e}"], str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(["a tuning config is a mapping; see `python -m bench.tune --help`"], str(path))
    raw = {**raw, **(overrides or {})}
    for k, sub in _SHORTHAND.items():  # `pruner: none`, `objective: recall`, `executor: local`
        if isinstance(raw.get(k), str):
            raw[k] = {sub: raw[k]}
    problems: list[str] = []
    if raw.get("base") is not None and not isinstance(raw["base"], dict):
        problems.append(f"base: expected a mapping (a partial job config), got {raw['base']!r}")
        raw.pop("base")
    raw = {k: v for k, v in raw.items() if v is not None or k in ("storage", "cluster")}
    tc = apply_overrides(TuneConfig(), raw, problems=problems)
    if problems:
        raise ConfigError(problems, str(path))
    old = tc.objective.metric
    if old in RENAMED_METRICS and RENAMED_METRICS[old] in OBJECTIVE_METRICS:  # a name from before the renames
        tc.objective.metric = RENAMED_METRICS[old]
        print(f"note: objective.metric {old!r} is now called {tc.objective.metric!r} (the same number; README, "
              "\"Metric names\"): using it", file=sys.stderr)
    if not tc.study:
        tc.study = path.stem
    return tc


def trial_job(tc: TuneConfig, lam: float) -> dict:
    """The job mapping of one trial: the base job, the variant and train.lambda_rec."""
    return unflatten({**tc.base, "variant": tc.variant, "train.lambda_rec": lam})


def _resolve_trial_job(tc: TuneConfig, lam: float):
    return registry.resolve(trial_job(tc, lam))


def _storage_problems(url: str) -> list[str]:
    if "://" in url:
        if url.startswith("sqlite:///"):
            parent = Path(url[len("sqlite:///"):]).parent
            if not parent.is_dir():
                return [f"storage {url!r}: directory {parent} does not exist"]
        return []
    parent = Path(url).expanduser().resolve().parent
    return [] if parent.is_dir() else [f"storage {url!r} (a journal file): directory {parent} does not exist"]


def validate(tc: TuneConfig) -> list[str]:
    """Every problem of the config, before anything is created. Empty when the study can run."""
    from bench.run import load_cluster

    p: list[str] = []
    if tc.variant not in TUNABLE_VARIANTS:
        p.append(f"variant {tc.variant!r} cannot be tuned here; valid: {', '.join(TUNABLE_VARIANTS)}")
    jobs_checkable = tc.variant in TUNABLE_VARIANTS
    try:
        base = unflatten(tc.base)
    except ConfigError as e:
        p += [f"base: {q}" for q in e.problems]
        base, jobs_checkable = {}, False
    if "variant" in base:
        p.append("base.variant: set the variant with the top-level key 'variant'")
        jobs_checkable = False
    if isinstance(base.get("train"), dict) and "lambda_rec" in base["train"]:
        p.append("base.train.lambda_rec is the tuned parameter: set its range under 'lambda_rec'")
        jobs_checkable = False
    s = tc.lambda_rec
    if s.low <= 0 or s.high <= 0:
        p.append(f"lambda_rec: a log-uniform range needs low > 0 and high > 0, got [{s.low}, {s.high}] "
                 "(to try 0, set include_zero: true)")
    elif s.low >= s.high:
        p.append(f"lambda_rec: empty range, low ({s.low}) must be < high ({s.high})")
    m = tc.objective.metric
    if m not in OBJECTIVE_METRICS:
        p.append(f"objective.metric {m!r} is not a metric the jobs log; valid: {', '.join(OBJECTIVE_METRICS)}")
    if tc.objective.direction not in (None, "minimize", "maximize"):
        p.append(f"objective.direction {tc.objective.direction!r}; valid: minimize, maximize")
    if tc.n_trials < 1:
        p.append(f"n_trials must be >= 1, got {tc.n_trials}")
    if tc.sampler.name not in SAMPLERS:
        p.append(f"sampler.name {tc.sampler.name!r}; valid: {', '.join(SAMPLERS)}")
    if tc.sampler.n_startup_trials < 0:
        p.append("sampler.n_startup_trials must be >= 0")
    pr = tc.pruner
    if pr.name not in PRUNERS:
        p.append(f"pruner.name {pr.name!r}; valid: {', '.join(PRUNERS)}")
    if pr.n_startup_trials < 0 or pr.n_warmup_steps < 0 or pr.interval_steps < 1:
        p.append("pruner: n_startup_trials and n_warmup_steps must be >= 0, interval_steps >= 1")
    if pr.name == "threshold" and pr.lower is None and pr.upper is None:
        p.append("pruner.name threshold needs pruner.lower and/or pruner.upper")
    if pr.name == "median" and tc.direction == "maximize":
        p.append(f"pruner.name median compares {INTERMEDIATE_METRIC} (lower is better) in the study's direction, "
                 "which is maximize here: use pruner threshold or none")
    if tc.executor.name not in EXECUTORS:
        p.append(f"executor.name {tc.executor.name!r}; valid: {', '.join(EXECUTORS)}")
    if tc.executor.max_parallel < 1:
        p.append("executor.max_parallel must be >= 1")
    if tc.poll_s <= 0:
        p.append("poll_s must be > 0")
    if not tc.study.strip():
        p.append("study: the study needs a name")
    p += _storage_problems(tc.storage_url)
    try:
        load_cluster(tc.cluster)
    except ConfigError as e:
        p += [f"cluster: {q}" for q in e.problems]

    # The jobs themselves: resolve the base job at both ends of the range through the registry.
    if jobs_checkable:
        lams = [v for v in (s.low, s.high) if v > 0] or [1.0]
        try:
            for lam in lams:
                cfg = _resolve_trial_job(tc, lam)
        except ConfigError as e:
            p += [f"base: {q}" for q in e.problems]
        else:
            if m in QUALITY_METRICS and not cfg.eval.quality:
                p.append(f"objective.metric {m!r} needs base eval.quality: true")

            sets = (cfg.eval.metrics.sets,) if isinstance(cfg.eval.metrics.sets, str) else tuple(cfg.eval.metrics.sets)
            for name, keys in SCORE_KEYS.items():
                if m in keys and name not in sets:
                    p.append(f"objective.metric {m!r} is a score of the {name!r} metric set: add {name!r} to base "
                             f"eval.metrics.sets (now {list(sets)})")
            if pr.name != "none" and not (cfg.eval.every_steps > 0 and cfg.eval.quality):
                p.append(f"pruner.name {pr.name!r} needs intermediate values: set base eval.every_steps > 0 "
                         "(and eval.quality: true), or pruner: none")
    return p


# ============================================================================================== Optuna

def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints its own progress
    return optuna


def make_storage(url: str):
    """An RDB storage for a URL (``sqlite:///...``, ``postgresql://...``), else a journal file (NFS-safe)."""
    optuna = _optuna()
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(url).expanduser().resolve())))


def make_sampler(spec: SamplerSpec, seed: int, parallel: bool):
    optuna = _optuna()
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials, constant_liar=parallel)


def make_pruner(spec: PrunerSpec):
    optuna = _optuna()
    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                           n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps)
    if spec.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.lower, upper=spec.upper, n_warmup_steps=spec.n_warmup_steps,
                                              interval_steps=spec.interval_steps)
    return optuna.pruners.NopPruner()


def open_study(tc: TuneConfig, max_parallel: int = 1):
    """Create or load the study. Raises ConfigError when an existing study of that name was created for another
    problem (other jobs, search space or objective)."""
    optuna = _optuna()
    storage = make_storage(tc.storage_url)
    try:
        n_before = storage.get_n_trials(storage.get_study_id_from_name(tc.study))
        exists = True
    except KeyError:
        n_before, exists = 0, False
    # Re-seed on resumption: the same seed would replay the first invocation's random proposals.
    sampler = make_sampler(tc.sampler, tc.sampler.seed + n_before, parallel=max_parallel > 1)
    study = optuna.create_study(storage=storage, study_name=tc.study, direction=tc.direction, sampler=sampler,
                                pruner=make_pruner(tc.pruner), load_if_exists=True)
    definition = json.loads(json.dumps(tc.definition()))
    if exists:
        old = study.user_attrs.get("definition")
        if old is not None and old != definition:
            diff = [k for k in definition if old.get(k) != definition[k]]
            raise ConfigError([f"study {tc.study!r} in {_safe_url(tc.storage_url)} was created with another "
                               f"{', '.join(diff)} ({json.dumps({k: old.get(k) for k in diff})}); use another "
                               "study name, or restore the original values"])
        if study.direction.name.lower() != tc.direction:
            raise ConfigError([f"study {tc.study!r} is {study.direction.name.lower()}, the config asks "
                               f"{tc.direction}"])
    if "uid" not in study.user_attrs:  # new (or made by other code): tag it; uid tells its MLflow runs apart
        study.set_user_attr("definition", definition)
        study.set_user_attr("uid", uuid.uuid4().hex)
        study.set_user_attr("metric", tc.objective.metric)
        if tc.lambda_rec.include_zero and n_before == 0:
            study.enqueue_trial({}, user_attrs={ZERO_ATTR: True})
    return study


def suggest_lambda(trial, space: LambdaSpace) -> float:
    """lambda_rec for a trial: 0 for the queued include_zero trial, else log-uniform in [low, high].

    Zero is one queued trial rather than a categorical choice the sampler draws: the jobs are deterministic, so
    a sampler that finds 0 good would otherwise spend trial after trial re-running the same job."""
    if trial.user_attrs.get(ZERO_ATTR):
        return 0.0
    return trial.suggest_float("lambda_rec", space.low, space.high, log=True)


def _safe_url(url: str) -> str:
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://..."


def _finished(trials, interrupted: set[int]) -> list:
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in done and t.number not in interrupted]


# ============================================================================================== the driver

@dataclass
class _InFlight:
    trial: Any                       # optuna.Trial
    lam: float
    job_hash: str
    job: Any                         # submitit job
    run_id: str | None = None
    last_step: int = -1              # last reported training step
    last_value: float = float("nan")  # fid_intermediate at that step
    gone_since: float | None = None  # SLURM: when squeue stopped listing the job (no result file yet)
    checked_at: float = 0.0          # SLURM: last squeue look
    stopping_since: float | None = None  # pruned: when the job was signalled to stop


@dataclass
class TuneResult:
    study: Any                       # the optuna Study
    parent_run_id: str
    best_trial: int | None
    best_lambda_rec: float | None
    best_value: float | None
    counts: dict                     # state name -> trials
    ran: int                         # trials this invocation finished
    interrupted: bool = False        # stopped by SIGINT/SIGTERM before the study was done


class _Driver:
    def __init__(self, tc: TuneConfig, study, executor_kind: str, cluster: dict, max_parallel: int,
                 out=None):
        from mlflow.tracking import MlflowClient

        from bench.job import runs_root
        from bench.run import LocalGpus, make_executor, visible_gpus

        self.tc, self.study, self.kind = tc, study, executor_kind
        self.max_parallel, self.out = max_parallel, out
        self.uid = study.user_attrs["uid"]
        self.client = MlflowClient(tracking_uri())
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.stamp = stamp
        folder = runs_root() / "submitit" / f"tune-{tc.study}-{stamp}"
        self.executor = make_executor(executor_kind, folder, cluster, float(tc.executor.timeout_min))
        self.cluster = cluster
        from bench.run import job_environment

        self.env = job_environment()
        self.gpus = LocalGpus(visible_gpus() if executor_kind == "local" else [])
        self.probe = _resolve_trial_job(tc, 1.0)  # every trial has this device, process count and metric sets
        from bench.job import intermediate_metric

        self.intermediate = intermediate_metric(self.probe)[1]  # fid_intermediate (paper set on) or fd_dinov2_...
        self.in_flight: dict[int, _InFlight] = {}
        self.waiting: list[tuple[Any, float, str, int]] = []  # (trial, lam, job hash, number of the same job)
        self.ran = 0

    def say(self, msg: str) -> None:
        print(msg, file=self.out or sys.stdout, flush=True)

    # ------------------------------------------------------------------ study bookkeeping
    def interrupted(self) -> set[int]:
        return set(self.study.user_attrs.get("interrupted_trials", []))

    def recover_stale(self) -> None:
        """RUNNING trials left by a driver that stopped: FAIL them, remember them as interrupted (not counted)
        and enqueue their parameters again (their jobs resume from their checkpoints)."""
        from optuna.trial import TrialState

        stale = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        for t in stale:
            self._stop_orphan(t)
            self._mark_interrupted(t.number, t.params, bool(t.user_attrs.get(ZERO_ATTR)))
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.say(f"[trial {t.number}] left RUNNING by an earlier driver: FAIL, parameters queued again")

    def _stop_orphan(self, t) -> None:
        """A stale trial's job may still run (its driver was killed, not interrupted): stop it before its retry
        trains in the same directory. SLURM jobs by id; local ones by their controller's pid, if it still is one."""
        kind, jid = t.user_attrs.get("executor"), t.user_attrs.get("job_id")
        if not jid:
            return
        if kind == "slurm":
            for extra in (["--signal=INT"], []):
                try:
                    subprocess.run(["scancel", *extra, jid], capture_output=True, timeout=30)
                except (OSError, subprocess.SubprocessError):
                    return
                time.sleep(5.0)
        elif kind == "local":
            cmdline = Path(f"/proc/{jid}/cmdline")
            try:
                if b"submitit" not in cmdline.read_bytes():
                    return
                os.kill(int(jid), signal.SIGINT)  # the controller interrupts, then kills, its task
            except (OSError, ValueError):
                return
            deadline = time.monotonic() + CANCEL_GRACE_S
            while cmdline.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.say(f"[trial {t.number}] stopped its job {jid}, still running from an earlier driver")

    def _mark_interrupted(self, number: int, params: dict, zero: bool) -> None:
        self.study.set_user_attr("interrupted_trials", sorted(self.interrupted() | {number}))
        self.study.enqueue_trial(params, user_attrs={"retry_of": number, **({ZERO_ATTR: True} if zero else {})})

    def remaining(self) -> int:
        return self.tc.n_trials - len(_finished(self.study.trials, self.interrupted()))

    def known_jobs(self) -> dict[str, Any]:
        """Job hash -> finished COMPLETE/PRUNED trial of this study that ran that exact job."""
        from optuna.trial import TrialState

        out = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            h = t.user_attrs.get("job_hash")
            if h and h not in out:
                out[h] = t
        return out

    # ------------------------------------------------------------------ one trial
    def ask(self) -> None:
        from bench.run import JobTask, set_processes

        trial = self.study.ask()
        lam = suggest_lambda(trial, self.tc.lambda_rec)
        cfg = _resolve_trial_job(self.tc, lam)
        h = registry.job_hash(cfg)
        trial.set_user_attr("lambda_rec", lam)
        trial.set_user_attr("job_hash", h)
        # The same job (e.g. lambda_rec = 0 again) is not trained twice: reuse the earlier trial's outcome.
        same = self.known_jobs().get(h)
        if same is not None:
            trial.set_user_attr("duplicate_of", same.number)
            self._tell_copy(trial, lam, same.state, same.value, same.user_attrs.get("run_id"), same.number)
            return
        running = [r for r in self.in_flight.values() if r.job_hash == h]
        if running:
            self.waiting.append((trial, lam, h, running[0].trial.number))
            self.say(f"[trial {trial.number}] lambda_rec={lam:.4g}: same job as trial {running[0].trial.number}, "
                     "waiting for it")
            return
        tags = {"study": self.tc.study, "study_uid": self.uid, "trial_number": trial.number, "kind": "trial",
                "executor": self.kind}
        task = JobTask([to_dict(cfg)], self.tc.experiment, self.parent.run_id, tags, False, self.env, [h])
        if self.kind == "local":
            self.gpus.assign(trial.number, task, cfg, self.executor)
        set_processes(self.executor, self.cluster, cfg.processes)
        job = self.executor.submit(task)
        trial.set_user_attr("executor", self.kind)
        trial.set_user_attr("job_id", str(job.job_id))
        self.in_flight[trial.number] = _InFlight(trial, lam, h, job)
        jid = f" (SLURM job {job.job_id})" if self.kind == "slurm" else ""
        self.say(f"[trial {trial.number}] lambda_rec={lam:.4g} submitted{jid}")

    def _tell_copy(self, trial, lam: float, state, value, run_id, source: int) -> None:
        from optuna.trial import TrialState

        if run_id:
            trial.set_user_attr("run_id", run_id)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=state)
        self.ran += 1
        self.say(f"[trial {trial.number}] lambda_rec={lam:.4g}: same job as trial {source}, "
                 f"{state.name}{f' {self.tc.objective.metric}={value:.4g}' if value is not None else ''}")
        self.log_summary()

    def find_run(self, r: _InFlight) -> str | None:
        if r.run_id is None:
            exp = self.client.get_experiment_by_name(self.tc.experiment)
            runs = self.client.search_runs([exp.experiment_id], f"tags.study_uid = '{self.uid}' and "
                                           f"tags.trial_number = '{r.trial.number}'", max_results=1,
                                           order_by=["attributes.start_time DESC"]) if exp else []
            if runs:
                r.run_id = runs[0].info.run_id
                r.trial.set_user_attr("run_id", r.run_id)
                if runs[0].data.tags.get("mlflow.parentRunId") != self.parent.run_id:  # a resumed run
                    self.client.set_tag(r.run_id, "mlflow.parentRunId", self.parent.run_id)
        return r.run_id

    def report_new(self, r: _InFlight) -> bool:
        """Report fid_intermediate values the job logged since the last look. True when there were any."""
        if self.find_run(r) is None:
            return False
        hist = sorted(self.client.get_metric_history(r.run_id, self.intermediate), key=lambda m: m.step)
        new = False
        for m in hist:
            if m.step > r.last_step:
                r.trial.report(m.value, m.step)
                r.last_step, r.last_value, new = m.step, m.value, True
        return new

    def _slurm_gone(self, r: _InFlight) -> bool:
        """SLURM without accounting cannot tell submitit that a job died (no result file ever appears): a job
        that squeue no longer lists and that left no result for 60 s is over."""
        now = time.monotonic()
        if now - r.checked_at < 15.0:
            return r.gone_since is not None and now - r.gone_since > 60.0
        r.checked_at = now
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(r.job.job_id), "-o", "%T"], capture_output=True,
                                 text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        listed = out.returncode == 0 and out.stdout.strip() != ""
        if listed or (out.returncode != 0 and "Invalid job id" not in out.stderr):
            r.gone_since = None
            return False
        r.gone_since = r.gone_since or now
        return now - r.gone_since > 60.0

    def poll(self, r: _InFlight) -> bool:
        """Look at one running trial; True when it is over (told)."""
        if r.stopping_since is not None:
            if self._over(r) or time.monotonic() - r.stopping_since > CANCEL_GRACE_S:
                self._pruned(r)
                return True
            return False
        try:
            done = r.job.done()
        except Exception:
            done = False
        if not done and self.kind == "slurm":
            done = self._slurm_gone(r)
        new = self.report_new(r)
        if done:
            self.finish(r)
            return True
        if new and r.trial.should_prune():
            self.prune(r)
        return False

    def _result(self, r: _InFlight) -> dict:
        """The job's result; a local process that ended without one died (submitit itself would wait 15 s
        for the result file, a delay meant for network file systems)."""
        if self.kind == "local":
            deadline = time.monotonic() + 2.0
            while not r.job.paths.result_pickle.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if not r.job.paths.result_pickle.exists():
                raise RuntimeError("its process ended without a result")
        from bench.run import task_result

        return task_result(r.job)[0]

    def finish(self, r: _InFlight) -> None:
        from optuna.trial import TrialState

        from bench.run import indent, log_tail

        metric = self.tc.objective.metric
        value, reason, tail = None, "", ""
        try:
            res = self._result(r)
        except Exception as e:
            lines = str(e).strip().splitlines()
            reason = f"the job died: {type(e).__name__}: {lines[0] if lines else ''}"
            tail = log_tail(r.job)
        else:
            if r.run_id is None and res.get("run_id"):
                r.run_id = res["run_id"]
                r.trial.set_user_attr("run_id", r.run_id)
            if res["status"] in ("FINISHED", "SKIPPED"):
                old = {v: k for k, v in RENAMED_METRICS.items()}.get(metric)  # a reused run logged before a rename
                v = res["metrics"].get(metric, res["metrics"].get(old) if old else None)
                if v is None or not math.isfinite(float(v)):
                    reason = f"the job logged no finite {metric!r} ({v!r})"
                else:
                    value = float(v)
                if res["status"] == "SKIPPED":
                    r.trial.set_user_attr("reused_run", True)
            else:
                reason = f"job {res['status']}: {res.get('reason', '')}"
        if value is not None:
            self.study.tell(r.trial, value)
            state = "COMPLETE"
            best = self.study.best_trial
            self.say(f"[trial {r.trial.number}] COMPLETE {metric}={value:.4g} (best: trial {best.number}, "
                     f"lambda_rec={best.user_attrs['lambda_rec']:.4g}, {metric}={best.value:.4g})")
        else:
            r.trial.set_user_attr("fail_reason", reason[:2000])
            self.study.tell(r.trial, state=TrialState.FAIL)
            state = "FAIL"
            self.say(f"[trial {r.trial.number}] FAIL: {reason}" + (f"\n{indent(tail)}" if tail else ""))
            self._close_run(r, "FAILED", {"failure_reason": reason[:5000]})
        self._tag_run(r, state)
        self._after(r)

    def prune(self, r: _InFlight) -> None:
        """The pruner said stop: signal the job (SIGINT: it marks its run KILLED and exits); the trial is told
        PRUNED once the job is over (see :meth:`poll`), keeping its slot until then."""
        self.say(f"[trial {r.trial.number}] PRUNED at step {r.last_step} ({self.intermediate}={r.last_value:.4g})")
        r.stopping_since = time.monotonic()
        try:
            if self.kind == "slurm":  # scancel's default SIGTERM is ignored by submitit's job until KillWait ends
                subprocess.run(["scancel", "--signal=INT", str(r.job.job_id)], capture_output=True, timeout=30)
            else:
                r.job.cancel()  # SIGINT to submitit's controller, which interrupts, then kills, the task
        except Exception as e:
            self.say(f"    stopping the job failed: {type(e).__name__}: {e}")

    def _pruned(self, r: _InFlight) -> None:
        from optuna.trial import TrialState

        from bench.run import task_result

        if self.kind == "slurm":
            try:
                r.job.cancel(check=False)  # make sure it is gone
            except Exception:
                pass
        if r.job.paths.result_pickle.exists():  # it finished before the signal arrived: keep the result
            try:
                finished = task_result(r.job)[0]["status"] == "FINISHED"
            except Exception:
                finished = False
            if finished:
                self.say(f"[trial {r.trial.number}] its job had already finished: using its result")
                self.finish(r)
                return
        self.find_run(r)
        self.study.tell(r.trial, state=TrialState.PRUNED)
        self._close_run(r, "KILLED", {"pruned": "true", "pruned_at_step": r.last_step})
        self._tag_run(r, "PRUNED")
        self._after(r)

    def _over(self, r: _InFlight) -> bool:
        if r.job.paths.result_pickle.exists():
            return True
        if self.kind == "local":
            return r.job.done()
        out = subprocess.run(["squeue", "-h", "-j", str(r.job.job_id), "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
        return out.stdout.strip() == ""

    def _close_run(self, r: _InFlight, status: str, tags: dict) -> None:
        """Tag the trial's run and end it with ``status`` unless the job already ended it."""
        if r.run_id is None or r.trial.user_attrs.get("reused_run"):
            return
        run = self.client.get_run(r.run_id)
        for k, v in tags.items():
            if k not in run.data.tags:  # keep the job's own failure_reason
                self.client.set_tag(r.run_id, k, str(v))
        if run.info.status in ("RUNNING", "SCHEDULED"):
            self.client.set_terminated(r.run_id, status=status)

    def _tag_run(self, r: _InFlight, state: str) -> None:
        if r.run_id is not None and not r.trial.user_attrs.get("reused_run"):
            self.client.set_tag(r.run_id, "trial_state", state)

    def _after(self, r: _InFlight) -> None:
        """A trial is over: release the trials waiting for the same job, update the parent run."""
        from optuna.trial import TrialState

        self.in_flight.pop(r.trial.number, None)
        self.gpus.release(r.trial.number)
        self.ran += 1
        frozen = self.study.trials[r.trial.number]
        for w in [w for w in self.waiting if w[3] == r.trial.number]:
            self.waiting.remove(w)
            trial, lam, h, src = w
            trial.set_user_attr("duplicate_of", src)
            if frozen.state == TrialState.FAIL:  # a later trial with the same job runs it again
                self.study.tell(trial, state=TrialState.FAIL)
                self.ran += 1
                self.say(f"[trial {trial.number}] FAIL: same job as trial {src}, which failed")
            else:
                self._tell_copy(trial, lam, frozen.state, frozen.value, frozen.user_attrs.get("run_id"), src)
        self.log_summary()

    # ------------------------------------------------------------------ the parent run
    def start_parent(self, executor_kind: str) -> None:
        tc = self.tc
        self.parent = Tracker.start(tc.experiment, run_name=f"study-{tc.study}-{self.stamp}",
                                    tags={"study": tc.study, "study_uid": self.uid, "kind": "study",
                                          "variant": tc.variant, "objective": tc.objective.metric,
                                          "direction": tc.direction, "storage": _safe_url(tc.storage_url),
                                          "executor": executor_kind})
        self.parent.log_params({"study": tc.study, "variant": tc.variant, "objective": tc.objective.metric,
                                "direction": tc.direction, "n_trials": tc.n_trials, "lambda_rec.low": tc.lambda_rec.low,
                                "lambda_rec.high": tc.lambda_rec.high,
                                "lambda_rec.include_zero": tc.lambda_rec.include_zero, "sampler": tc.sampler.name,
                                "sampler.seed": tc.sampler.seed, "pruner": tc.pruner.name,
                                "executor": executor_kind, "max_parallel": self.max_parallel,
                                "base": json.dumps(unflatten(tc.base), sort_keys=True)})
        self.parent.log_dict({**to_dict(tc), "storage": _safe_url(tc.storage_url)}, "tune_config.json")

    def log_summary(self) -> None:
        trials = self.study.trials
        interrupted = self.interrupted()
        counts = _counts([t for t in trials if t.number not in interrupted])
        m = {f"n_{k.lower()}": v for k, v in counts.items()}
        m["n_interrupted"] = len(interrupted)
        best = _best(self.study)
        if best is not None:
            m.update(best_value=best.value, best_lambda_rec=best.user_attrs["lambda_rec"], best_trial=best.number)
            self.parent.set_tags({"best_trial": best.number, "best_lambda_rec": best.user_attrs["lambda_rec"]})
        self.parent.log_metrics(m, step=len(_finished(trials, set())))
        self.parent.flush()

    def write_artifacts(self) -> None:
        trials = self.study.trials
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            plot_history(trials, self.tc, d / "optimization_history.png")
            plot_lambda(trials, self.tc, d / "lambda_rec_vs_objective.png")
            write_trials_csv(trials, self.tc, d / "trials.csv")
            for name in ("optimization_history.png", "lambda_rec_vs_objective.png", "trials.csv"):
                self.parent.log_artifact(d / name)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Ask, submit and follow trials until the study holds n_trials finished ones or ``stop`` is set."""
        to_ask = max(0, self.remaining())
        self.say(f"study {self.tc.study}: {len(_finished(self.study.trials, self.interrupted()))} finished "
                 f"trials, running {to_ask} more (n_trials {self.tc.n_trials}), executor {self.kind}, "
                 f"max parallel {self.max_parallel}")
        while (to_ask or self.in_flight or self.waiting) and not stop.is_set():
            while (to_ask and len(self.in_flight) + len(self.waiting) < self.max_parallel
                   and self.gpus.available(self.probe) and not stop.is_set()):
                self.ask()
                to_ask -= 1
            for r in list(self.in_flight.values()):
                self.poll(r)
            if self.in_flight:
                stop.wait(self.tc.poll_s)

    def interrupt(self) -> None:
        """Stop requested: cancel the jobs in flight, FAIL their trials as interrupted (not counted) and queue
        their parameters again; a requeued trial's job resumes from its checkpoint and continues its run."""
        from optuna.trial import TrialState

        for r in [r for r in self.in_flight.values() if r.stopping_since is not None]:
            self._pruned(r)  # already decided
        for r in list(self.in_flight.values()) + [_InFlight(w[0], w[1], w[2], None) for w in self.waiting]:
            try:
                if r.job is not None:
                    r.job.cancel()
                    self.find_run(r)
                self._mark_interrupted(r.trial.number, r.trial.params, r.lam == 0)
                self.study.tell(r.trial, state=TrialState.FAIL, skip_if_finished=True)
                if r.job is not None:
                    self._close_run(r, "KILLED", {"interrupted": "true"})
                self.say(f"[trial {r.trial.number}] interrupted: queued again")
            except Exception as e:  # keep going: the next invocation recovers what is left RUNNING
                self.say(f"[trial {r.trial.number}] interrupting it failed: {type(e).__name__}: {e}")
        self.in_flight.clear()
        self.waiting.clear()


def _counts(trials) -> dict[str, int]:
    from optuna.trial import TrialState

    return {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                TrialState.FAIL)}


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


# ============================================================================================== plots

def _running_best(values: list[float], direction: str) -> list[float]:
    out, cur = [], None
    for v in values:
        cur = v if cur is None else (min(cur, v) if direction == "minimize" else max(cur, v))
        out.append(cur)
    return out


def plot_history(trials, tc: TuneConfig, path: Path) -> None:
    """Objective per COMPLETE trial and the best so far; PRUNED and FAIL trials as ticks along the bottom."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    if done:
        x, y = [t.number for t in done], [t.value for t in done]
        ax.scatter(x, y, s=22, color="tab:blue", zorder=3, label=f"trial ({tc.objective.metric})")
        ax.step(x, _running_best(y, tc.direction), where="post", color="tab:red", label="best so far")
    for state, color, marker in ((TrialState.PRUNED, "tab:orange", "|"), (TrialState.FAIL, "black", "x")):
        xs = [t.number for t in trials if t.state == state]
        if xs:
            ax.plot(xs, [0.02] * len(xs), marker, color=color, markersize=10, linestyle="none",
                    transform=ax.get_xaxis_transform(), label=f"{state.name.lower()} ({len(xs)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{tc.objective.metric} ({tc.direction})")
    ax.set_title(f"{tc.study}: optimisation history ({len(done)} complete of {len(trials)})", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_lambda(trials, tc: TuneConfig, path: Path) -> None:
    """Objective against lambda_rec on a log axis (symmetric-log, linear below ``low``, when 0 was tried; the
    0 trial's value is also a dashed line), coloured by trial number; the best trial starred; the paper's
    lambda_rec = 1 dotted; PRUNED trials as ticks along the bottom."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and "lambda_rec" in t.user_attrs]
    pruned = [t.user_attrs["lambda_rec"] for t in trials if t.state == TrialState.PRUNED and
              "lambda_rec" in t.user_attrs]
    low, high = tc.lambda_rec.low, tc.lambda_rec.high
    zero = any(t.user_attrs["lambda_rec"] == 0 for t in done) or 0.0 in pruned
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    if zero:
        ax.set_xscale("symlog", linthresh=low, linscale=0.5)
        ax.set_xlim(-0.3 * low, high * 1.5)
    else:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
    if done:
        sc = ax.scatter([t.user_attrs["lambda_rec"] for t in done], [t.value for t in done],
                        c=[t.number for t in done], cmap="viridis", s=30, zorder=3)
        fig.colorbar(sc, ax=ax, label="trial").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        best = min(done, key=lambda t: t.value if tc.direction == "minimize" else -t.value)
        ax.scatter([best.user_attrs["lambda_rec"]], [best.value], marker="*", s=220, facecolor="none",
                   edgecolor="tab:red", linewidth=1.5, zorder=4,
                   label=f"best: lambda_rec={best.user_attrs['lambda_rec']:.3g}")
        for t in done:
            if t.user_attrs["lambda_rec"] == 0:
                ax.axhline(t.value, color="grey", linestyle="--", linewidth=1, label="lambda_rec = 0")
                break
    if low <= 1.0 <= high:
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="paper (lambda_rec = 1)")
    if pruned:
        ax.plot(pruned, [0.02] * len(pruned), "|", color="tab:orange", markersize=10, linestyle="none",
                transform=ax.get_xaxis_transform(), label=f"pruned ({len(pruned)})")
    ax.set_xlabel("lambda_rec" + (f" (symlog: linear below {low:.3g})" if zero else " (log)"))
    ax.set_ylabel(f"{tc.objective.metric} ({tc.direction})")
    ax.set_title(f"{tc.study}: {tc.variant}, {tc.objective.metric} vs lambda_rec", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_trials_csv(trials, tc: TuneConfig, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "lambda_rec", tc.objective.metric, "last_intermediate_step",
                    "run_id", "duplicate_of", "fail_reason"])
        for t in trials:
            last = max(t.intermediate_values) if t.intermediate_values else ""
            w.writerow([t.number, t.state.name, t.user_attrs.get("lambda_rec", ""),
                        "" if t.value is None else t.value, last, t.user_attrs.get("run_id", ""),
                        t.user_attrs.get("duplicate_of", ""), t.user_attrs.get("fail_reason", "")])


# ============================================================================================== entry points

def tune(tc: TuneConfig, *, executor: str, cluster: dict, max_parallel: int | None = None,
         out=None) -> TuneResult:
    """Run the study to ``tc.n_trials`` finished trials. The config must have passed :func:`validate`.

    Ctrl-C (SIGINT) or SIGTERM stops it in order: the trials in flight are cancelled and queued again, the
    parent run ends KILLED (``TuneResult.interrupted``); a second Ctrl-C aborts at once."""
    max_parallel = max_parallel or tc.executor.max_parallel
    study = open_study(tc, max_parallel)
    drv = _Driver(tc, study, executor, cluster, max_parallel, out=out)
    stop = threading.Event()

    def request_stop(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        drv.say("stopping: cancelling the trials in flight, they run again on the next invocation "
                "(Ctrl-C again to abort at once)")

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    drv.start_parent(executor)
    status = "FAILED"
    try:
        drv.recover_stale()
        drv.run(stop)
        if stop.is_set():
            drv.interrupt()
        status = "KILLED" if stop.is_set() else "FINISHED"
    except BaseException:
        drv.interrupt()
        raise
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        drv.log_summary()
        drv.write_artifacts()
        drv.parent.end(status)
    best = _best(study)
    return TuneResult(study, drv.parent.run_id, best.number if best else None,
                      best.user_attrs["lambda_rec"] if best else None, best.value if best else None,
                      _counts(study.trials), drv.ran, stop.is_set())


def summary_table(study, tc: TuneConfig) -> str:
    head = f"{'trial':>5s} {'state':8s} {'lambda_rec':>10s} {tc.objective.metric:>12s}  run id"
    lines = [head, "-" * len(head)]
    for t in study.trials:
        lam = t.user_attrs.get("lambda_rec")
        lines.append(f"{t.number:>5d} {t.state.name:8s} {'-' if lam is None else format(lam, '10.4g'):>10s} "
                     f"{'-' if t.value is None else format(t.value, '12.4f'):>12s}  {t.user_attrs.get('run_id', '-')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.run import load_cluster, resolve_executor

    ap = argparse.ArgumentParser(prog="python -m bench.tune", description="Tune lambda_rec with Optuna.")
    ap.add_argument("--config", required=True, help="tuning YAML (a path, or a name in experiments/)")
    ap.add_argument("--executor", choices=EXECUTORS, default=None, help="default: the config's, else auto")
    ap.add_argument("--cluster", default=None, help="SLURM profile YAML (e.g. slurm/profiles/local.yaml)")
    ap.add_argument("--n-trials", type=int, default=None, help="finished trials the study should hold")
    ap.add_argument("--max-parallel", type=int, default=None, help="trials in flight at once")
    ap.add_argument("--storage", default=None, help="Optuna storage: RDB URL or journal file path")
    ap.add_argument("--dry-run", action="store_true", help="validate, print the study and exit")
    args = ap.parse_args(argv)
    over: dict = {}
    if args.n_trials is not None:
        over["n_trials"] = args.n_trials
    if args.storage is not None:
        over["storage"] = args.storage
    if args.cluster is not None:
        over["cluster"] = args.cluster
    try:
        tc = load_config(args.config, over)
        if args.executor:
            tc.executor.name = args.executor
        if args.max_parallel is not None:
            tc.executor.max_parallel = args.max_parallel
        problems = validate(tc)
        if problems:
            raise ConfigError(problems, f"tuning config {args.config}")
        cluster = load_cluster(tc.cluster)
        if args.dry_run:
            print(json.dumps({**to_dict(tc), "direction": tc.direction, "storage": _safe_url(tc.storage_url)},
                             indent=2))
            for lam in (tc.lambda_rec.low, tc.lambda_rec.high):
                cfg = _resolve_trial_job(tc, lam)
                budget = {k: v for k, v in to_dict(cfg.train).items() if k.startswith("max_") and v is not None}
                print(f"lambda_rec={lam:g}: job {registry.job_hash(cfg)}, {cfg.variant} on {cfg.dataset} "
                      f"({cfg.scale}), budget {budget}")
            return 0
        executor = resolve_executor(tc.executor.name)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"study {tc.study} ({tc.variant}, {tc.direction} {tc.objective.metric}), storage "
          f"{_safe_url(tc.storage_url)}, tracking {tracking_uri()}", flush=True)
    try:
        result = tune(tc, executor=executor, cluster=cluster)
    except ConfigError as e:  # an existing study of that name defines another problem
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result.interrupted:
        print(f"stopped; run the same command again to continue the study {tc.study!r}", file=sys.stderr)
        return 130
    print()
    print(summary_table(result.study, tc))
    print(f"\n{', '.join(f'{v} {k}' for k, v in result.counts.items())}; parent run {result.parent_run_id} "
          f"in experiment {tc.experiment!r}")
    for line in ui_lines(tc.experiment, result.parent_run_id):
        print(line)
    if result.best_trial is None:
        print("no trial completed: no best value", file=sys.stderr)
        return 1
    print(f"best: trial {result.best_trial}, lambda_rec={result.best_lambda_rec:.4g}, "
          f"{tc.objective.metric}={result.best_value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
