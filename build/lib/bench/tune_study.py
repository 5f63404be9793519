"""What a lambda_rec study is (bench.tune runs it): its config (the YAML keys, one dataclass each), every problem of
a config found before anything is created, and the Optuna side: storage, sampler, pruner, the study itself (which
refuses to continue under another definition) and the search space.
"""
from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import registry
from bench.config import ConfigError, apply_overrides, to_dict, unflatten
from bench.metrics_config import metric_sets
from bench.schema import INTERMEDIATE_METRICS, OBJECTIVE_METRICS, QUALITY_METRICS, RENAMED_METRICS, SCORE_KEYS
from bench.submit import EXECUTORS, find_experiment_file, load_cluster, read_yaml
from bench.tracking import REPO_ROOT

__all__ = ["TuneConfig", "LambdaSpace", "Objective", "SamplerSpec", "PrunerSpec", "ExecutorSpec", "TUNABLE_VARIANTS",
           "INTERMEDIATE_METRIC", "find_config", "load_config", "trial_job", "resolve_trial_job", "validate",
           "make_storage", "make_sampler", "make_pruner", "open_study", "suggest_lambda", "safe_url"]

INTERMEDIATE_METRIC = INTERMEDIATE_METRICS["paper"]  # what the pruner sees, logged every eval.every_steps (lower is better);
# fd_dinov2_intermediate instead when the jobs' eval.metrics.sets leave out the paper set (bench.job)
TUNABLE_VARIANTS = tuple(n for n in registry.VARIANTS if n.startswith("wavediff") and n != "wavediff-no-rec")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "threshold", "none")
DEFAULT_STORAGE = f"sqlite:///{REPO_ROOT / 'optuna.db'}"
ZERO_ATTR = "lambda_rec_zero"  # user attribute of the queued lambda_rec = 0 trial


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
    cluster: Any = None              # SLURM profile path or mapping (bench.submit.load_cluster)
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
    return find_experiment_file(name, "tuning config", "tune*.yaml")


def load_config(name: str, overrides: dict | None = None) -> TuneConfig:
    """Read a tuning YAML (a path or a name in experiments/) and apply ``overrides`` (same keys). Only the
    structure and types are checked here; :func:`validate` checks the values."""
    path = find_config(name)
    raw = read_yaml(path) or {}
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


def resolve_trial_job(tc: TuneConfig, lam: float):
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
                cfg = resolve_trial_job(tc, lam)
        except ConfigError as e:
            p += [f"base: {q}" for q in e.problems]
        else:
            if m in QUALITY_METRICS and not cfg.eval.quality:
                p.append(f"objective.metric {m!r} needs base eval.quality: true")

            sets = metric_sets(cfg.eval.metrics)
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
            raise ConfigError([f"study {tc.study!r} in {safe_url(tc.storage_url)} was created with another "
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


def safe_url(url: str) -> str:
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://")[0] + "://..."
