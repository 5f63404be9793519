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
:class:`bench.submit.JobTask`, reads the job's ``fid_intermediate`` history from MLflow while it trains, reports it
to the trial, cancels the job when the pruner says so, and tells the outcome (COMPLETE, PRUNED, or FAIL when the
job dies; the study goes on). Re-running the same command continues the study up to ``n_trials`` finished
trials. Every problem of the config is reported at once (exit code 2) before any storage or run is created.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from bench import registry
from bench.config import ConfigError, to_dict, unflatten
from bench.schema import OBJECTIVE_METRICS, RENAMED_METRICS
from bench.submit import (CANCEL_GRACE_S, EXECUTORS, Submitter, indent, load_cluster, log_tail, resolve_executor,
                          stop_orphan, task_result)
from bench.tracking import Tracker, store_write, tracking_uri, ui_lines
from bench.tune_report import best_trial, count_states, finished_trials, log_summary, summary_table, write_artifacts
from bench.tune_study import (INTERMEDIATE_METRIC, TUNABLE_VARIANTS, ZERO_ATTR, ExecutorSpec, LambdaSpace, Objective,
                              PrunerSpec, SamplerSpec, TuneConfig, load_config, open_study, resolve_trial_job,
                              safe_url, suggest_lambda, validate)

__all__ = ["TuneConfig", "LambdaSpace", "Objective", "SamplerSpec", "PrunerSpec", "ExecutorSpec",
           "OBJECTIVE_METRICS", "TUNABLE_VARIANTS", "INTERMEDIATE_METRIC", "load_config", "validate",
           "open_study", "tune", "TuneResult", "main"]


# ============================================================================================== the driver

@dataclass
class _InFlight:
    trial: Any                       # optuna.Trial
    lam: float
    job_hash: str
    job: Any                         # submitit job (None: waiting for an identical job)
    run_id: str | None = None
    last_step: int = -1              # last reported training step
    last_value: float = float("nan")  # fid_intermediate at that step
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


class _TrialRuns:
    """The trials' MLflow runs: found by the study's uid and the trial number, read for the intermediate values
    the pruner judges, tagged with the trial's state and closed when the driver ends a trial."""

    def __init__(self, tc: TuneConfig, uid: str, intermediate: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri())
        self.experiment, self.uid, self.intermediate = tc.experiment, uid, intermediate
        self.parent_run_id: str | None = None

    def find(self, r: _InFlight) -> str | None:
        if r.run_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            runs = self.client.search_runs([exp.experiment_id], f"tags.study_uid = '{self.uid}' and "
                                           f"tags.trial_number = '{r.trial.number}'", max_results=1,
                                           order_by=["attributes.start_time DESC"]) if exp else []
            if runs:
                r.run_id = runs[0].info.run_id
                r.trial.set_user_attr("run_id", r.run_id)
                if runs[0].data.tags.get("mlflow.parentRunId") != self.parent_run_id:  # a resumed run
                    self._tag(r.run_id, {"mlflow.parentRunId": self.parent_run_id})
        return r.run_id

    def report_new(self, r: _InFlight) -> bool:
        """Report fid_intermediate values the job logged since the last look. True when there were any."""
        if self.find(r) is None:
            return False
        hist = sorted(self.client.get_metric_history(r.run_id, self.intermediate), key=lambda m: m.step)
        new = False
        for m in hist:
            if m.step > r.last_step:
                r.trial.report(m.value, m.step)
                r.last_step, r.last_value, new = m.step, m.value, True
        return new

    def close(self, r: _InFlight, status: str, tags: dict) -> None:
        """Tag the trial's run and end it with ``status`` unless the job already ended it."""
        if r.run_id is None or r.trial.user_attrs.get("reused_run"):
            return
        run = self.client.get_run(r.run_id)
        self._tag(r.run_id, {k: v for k, v in tags.items() if k not in run.data.tags})  # keep the job's failure_reason
        if run.info.status in ("RUNNING", "SCHEDULED"):
            store_write(f"ending trial {r.trial.number}'s run {r.run_id} {status}",
                        lambda: self.client.set_terminated(r.run_id, status=status))

    def tag_state(self, r: _InFlight, state: str) -> None:
        if r.run_id is not None and not r.trial.user_attrs.get("reused_run"):
            self._tag(r.run_id, {"trial_state": state})

    def _tag(self, run_id: str, tags: dict) -> None:
        """Tags on a trial's run, while its job may be writing to the same store (a busy store is retried)."""
        from mlflow.entities import RunTag

        if tags:
            batch = [RunTag(k, str(v)) for k, v in tags.items()]
            store_write(f"tagging run {run_id} ({', '.join(tags)})", lambda: self.client.log_batch(run_id, tags=batch))


class _Driver:
    """Ask-and-tell: asks trials, submits their jobs through a :class:`bench.submit.Submitter`, reports what the
    jobs log to the pruner, stops pruned jobs, and tells every trial's outcome."""

    def __init__(self, tc: TuneConfig, study, executor_kind: str, cluster: dict, max_parallel: int,
                 out=None):
        from bench.job import intermediate_metric, runs_root

        self.tc, self.study, self.kind = tc, study, executor_kind
        self.max_parallel, self.out = max_parallel, out
        self.uid = study.user_attrs["uid"]
        self.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.sub = Submitter(executor_kind, runs_root() / "submitit" / f"tune-{tc.study}-{self.stamp}", cluster,
                             float(tc.executor.timeout_min))
        self.probe = resolve_trial_job(tc, 1.0)  # every trial has this device, process count and metric sets
        self.intermediate = intermediate_metric(self.probe)[1]  # fid_intermediate (paper set on) or fd_dinov2_...
        self.runs = _TrialRuns(tc, self.uid, self.intermediate)
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
        and enqueue their parameters again (their jobs resume from their checkpoints). A stale trial's job may
        still run (its driver was killed, not interrupted): it is stopped before its retry trains in the same
        directory."""
        from optuna.trial import TrialState

        stale = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        for t in stale:
            if stop_orphan(t.user_attrs.get("executor"), t.user_attrs.get("job_id")):
                self.say(f"[trial {t.number}] stopped its job {t.user_attrs['job_id']}, still running from an "
                         "earlier driver")
            self._mark_interrupted(t.number, t.params, bool(t.user_attrs.get(ZERO_ATTR)))
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.say(f"[trial {t.number}] left RUNNING by an earlier driver: FAIL, parameters queued again")

    def _mark_interrupted(self, number: int, params: dict, zero: bool) -> None:
        self.study.set_user_attr("interrupted_trials", sorted(self.interrupted() | {number}))
        self.study.enqueue_trial(params, user_attrs={"retry_of": number, **({ZERO_ATTR: True} if zero else {})})

    def remaining(self) -> int:
        return self.tc.n_trials - len(finished_trials(self.study.trials, self.interrupted()))

    def known_jobs(self) -> dict[str, Any]:
        """Job hash -> finished COMPLETE/PRUNED trial of this study that ran that exact job."""
        from optuna.trial import TrialState

        out = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            h = t.user_attrs.get("job_hash")
            if h and h not in out:
                out[h] = t
        return out

    def log_summary(self) -> None:
        log_summary(self.parent, self.study, self.interrupted())

    # ------------------------------------------------------------------ one trial
    def ask(self) -> None:
        trial = self.study.ask()
        lam = suggest_lambda(trial, self.tc.lambda_rec)
        cfg = resolve_trial_job(self.tc, lam)
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
        task = self.sub.task([cfg], self.tc.experiment, self.parent.run_id, tags)
        job = self.sub.submit(trial.number, task, cfg)  # run() asks only while the GPUs a trial needs are free
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

    def poll(self, r: _InFlight) -> bool:
        """Look at one running trial; True when it is over (told)."""
        if r.stopping_since is not None:
            if self.sub.stopped(r.job) or time.monotonic() - r.stopping_since > CANCEL_GRACE_S:
                self._pruned(r)
                return True
            return False
        done = self.sub.done(r.job)
        new = self.runs.report_new(r)
        if done:
            self.finish(r)
            return True
        if new and r.trial.should_prune():
            self.prune(r)
        return False

    def finish(self, r: _InFlight) -> None:
        from optuna.trial import TrialState

        metric = self.tc.objective.metric
        value, reason, tail = None, "", ""
        try:
            res = self.sub.result(r.job)[0]
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
            self.runs.close(r, "FAILED", {"failure_reason": reason[:5000]})
        self.runs.tag_state(r, state)
        self._after(r)

    def prune(self, r: _InFlight) -> None:
        """The pruner said stop: signal the job (SIGINT: it marks its run KILLED and exits); the trial is told
        PRUNED once the job is over (see :meth:`poll`), keeping its slot until then."""
        self.say(f"[trial {r.trial.number}] PRUNED at step {r.last_step} ({self.intermediate}={r.last_value:.4g})")
        r.stopping_since = time.monotonic()
        try:
            self.sub.stop(r.job)
        except Exception as e:
            self.say(f"    stopping the job failed: {type(e).__name__}: {e}")

    def _pruned(self, r: _InFlight) -> None:
        from optuna.trial import TrialState

        self.sub.cancel(r.job)  # make sure it is gone
        if r.job.paths.result_pickle.exists():  # it finished before the signal arrived: keep the result
            try:
                finished = task_result(r.job)[0]["status"] == "FINISHED"
            except Exception:
                finished = False
            if finished:
                self.say(f"[trial {r.trial.number}] its job had already finished: using its result")
                self.finish(r)
                return
        self.runs.find(r)
        self.study.tell(r.trial, state=TrialState.PRUNED)
        self.runs.close(r, "KILLED", {"pruned": "true", "pruned_at_step": r.last_step})
        self.runs.tag_state(r, "PRUNED")
        self._after(r)

    def _after(self, r: _InFlight) -> None:
        """A trial is over: release the trials waiting for the same job, update the parent run."""
        from optuna.trial import TrialState

        self.in_flight.pop(r.trial.number, None)
        self.sub.release(r.trial.number)
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
                                          "direction": tc.direction, "storage": safe_url(tc.storage_url),
                                          "executor": executor_kind})
        self.parent.log_params({"study": tc.study, "variant": tc.variant, "objective": tc.objective.metric,
                                "direction": tc.direction, "n_trials": tc.n_trials, "lambda_rec.low": tc.lambda_rec.low,
                                "lambda_rec.high": tc.lambda_rec.high,
                                "lambda_rec.include_zero": tc.lambda_rec.include_zero, "sampler": tc.sampler.name,
                                "sampler.seed": tc.sampler.seed, "pruner": tc.pruner.name,
                                "executor": executor_kind, "max_parallel": self.max_parallel,
                                "base": json.dumps(unflatten(tc.base), sort_keys=True)})
        self.parent.log_dict({**to_dict(tc), "storage": safe_url(tc.storage_url)}, "tune_config.json")
        self.runs.parent_run_id = self.parent.run_id

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Ask, submit and follow trials until the study holds n_trials finished ones or ``stop`` is set."""
        to_ask = max(0, self.remaining())
        self.say(f"study {self.tc.study}: {len(finished_trials(self.study.trials, self.interrupted()))} finished "
                 f"trials, running {to_ask} more (n_trials {self.tc.n_trials}), executor {self.kind}, "
                 f"max parallel {self.max_parallel}")
        while (to_ask or self.in_flight or self.waiting) and not stop.is_set():
            while (to_ask and len(self.in_flight) + len(self.waiting) < self.max_parallel
                   and self.sub.pool.available(self.probe) and not stop.is_set()):
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
                    self.runs.find(r)
                self._mark_interrupted(r.trial.number, r.trial.params, r.lam == 0)
                self.study.tell(r.trial, state=TrialState.FAIL, skip_if_finished=True)
                if r.job is not None:
                    self.runs.close(r, "KILLED", {"interrupted": "true"})
                self.say(f"[trial {r.trial.number}] interrupted: queued again")
            except Exception as e:  # keep going: the next invocation recovers what is left RUNNING
                self.say(f"[trial {r.trial.number}] interrupting it failed: {type(e).__name__}: {e}")
        self.in_flight.clear()
        self.waiting.clear()


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
        write_artifacts(drv.parent, study.trials, tc)
        drv.parent.end(status)
    best = best_trial(study)
    return TuneResult(study, drv.parent.run_id, best.number if best else None,
                      best.user_attrs["lambda_rec"] if best else None, best.value if best else None,
                      count_states(study.trials), drv.ran, stop.is_set())


def main(argv: list[str] | None = None) -> int:
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
            print(json.dumps({**to_dict(tc), "direction": tc.direction, "storage": safe_url(tc.storage_url)},
                             indent=2))
            for lam in (tc.lambda_rec.low, tc.lambda_rec.high):
                cfg = resolve_trial_job(tc, lam)
                budget = {k: v for k, v in to_dict(cfg.train).items() if k.startswith("max_") and v is not None}
                print(f"lambda_rec={lam:g}: job {registry.job_hash(cfg)}, {cfg.variant} on {cfg.dataset} "
                      f"({cfg.scale}), budget {budget}")
            return 0
        executor = resolve_executor(tc.executor.name)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"study {tc.study} ({tc.variant}, {tc.direction} {tc.objective.metric}), storage "
          f"{safe_url(tc.storage_url)}, tracking {tracking_uri()}", flush=True)
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
