"""MLflow tracking: one run per job, parameters = the flattened resolved config, metrics buffered.

The default store is ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides it (e.g. ``http://host:port`` of an ``mlflow server`` on a cluster).
Metrics are buffered and written with ``log_batch`` (one ``log_metric`` call costs ~3 ms on SQLite and ~50 ms
over HTTP, more than a small training step), flushed every ``flush_every`` values or ``flush_seconds``, and at
the end of the run.

Each run also records its data sets as MLflow dataset inputs (:func:`log_datasets`: name, split, content hash,
size; the run page's "Datasets" box and the runs table's "Dataset" column) and, while it is RUNNING, the
machine's CPU/GPU utilisation and memory as MLflow system metrics (``system/*``, every
``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds, 10 by default; :meth:`Tracker.start_system_metrics`).

MLflow 3.x's UI opens an experiment on its GenAI page ("Traces: 0"); :func:`runs_table_url` gives the URL of the
runs table (``?workflowType=machine_learning``), optionally restricted to one grid's child runs, and
``python -m bench.tracking url`` prints it for the experiment of the latest run (``make ui``).

Writes that several jobs of one grid make at the same moment (the experiment, a data set's row, which the store
keys by name and looks up before inserting) go through :func:`store_write`: a bounded retry that recognises a lost
race (the row now exists) or a busy store and goes on; a write that still fails ends the job with a
:class:`TrackingError` naming the write and the store. Metrics that could not be written are kept (the tracker's
buffer, spooled to the job's directory by :meth:`Tracker.spool`) and written when the job resumes; a resumed run
never logs a metric twice at a step the store already has.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.schema import RENAMED_METRICS

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "tracking_uri", "artifact_root", "get_experiment_id", "flatten", "Tracker",
           "NullTracker", "git_commit", "UI_HOST", "UI_PORT", "ui_base", "runs_table_url", "run_url",
           "ui_lines", "latest_run", "dataset_input", "log_datasets", "RENAMED_METRICS", "current_name",
           "TrackingError", "store_write", "WRITE_TRIES", "not_found", "quick_attempt"]

UI_HOST, UI_PORT = "127.0.0.1", 5000  # where `make ui` serves a local store

# RENAMED_METRICS (bench.schema): metrics renamed so that every name says its unit and scope, old -> new. Runs
# logged before a rename keep the old names; the reports and the tuner read them as aliases.


def current_name(metric: str) -> str:
    """A metric's current name (itself unless it is an old name in :data:`RENAMED_METRICS`)."""
    return RENAMED_METRICS.get(metric, metric)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def artifact_root() -> str:
    return os.environ.get("WAVEBENCH_ARTIFACT_ROOT") or str(REPO_ROOT / "mlartifacts")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dataclasses/dicts -> {"train.lr_g": "0.00016", ...} (lists as JSON)."""
    if is_dataclass(obj):
        obj = asdict(obj)
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    out[key] = json.dumps(obj) if isinstance(obj, (list, tuple)) else str(obj)
    return out


# ============================================================================================== writes

WRITE_TRIES = 8  # attempts of one write that lost a race or found the store busy (about 7 s of back-off in all)

# How stores say that a row keyed by name was inserted by someone else between our look-up and our insert
# (SQLite, PostgreSQL, MySQL, MLflow's REST error code), and that they are busy (locks, serialisation).
_LOST_RACE = ("unique constraint", "integrityerror", "duplicate key value", "duplicate entry", "already exists",
              "resource_already_exists")
_BUSY = ("database is locked", "database table is locked", "deadlock", "could not serialize",
         "lock wait timeout")


class TrackingError(RuntimeError):
    """A write the MLflow store refused, or could not take after :data:`WRITE_TRIES` attempts; names the write
    and the store."""

    def __init__(self, what: str, uri: str, cause: BaseException, tries: int, kept: str = ""):
        self.what, self.uri, self.cause, self.tries, self.kept = what, uri, cause, tries, kept
        first = (str(cause).strip().splitlines() or [""])[0][:300]
        super().__init__(f"MLflow store {uri}: {what} failed after {tries} attempt{'s' if tries > 1 else ''} "
                         f"({type(cause).__name__}: {first})" + (f"; {kept}" if kept else ""))

    def keeping(self, kept: str) -> "TrackingError":
        """The same error, saying what of the job's work was kept and how to go on."""
        return TrackingError(self.what, self.uri, self.cause, self.tries, kept)


def not_found(e: BaseException) -> bool:
    """Whether the store said that a run or experiment does not exist (deleted, or another store)."""
    text = f"{e} {getattr(e, 'cause', '')}"
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower()


class quick_attempt:
    """One attempt per HTTP request inside the block (MLflow's client otherwise retries an unreachable server
    for minutes): for the last writes of a job whose store already failed."""

    KEYS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.KEYS}
        os.environ.update(self.KEYS)
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def _transient(e: BaseException) -> str | None:
    """"lost race" / "busy" when another attempt of the same write can succeed, else None."""
    text = f"{type(e).__name__} {e}".lower()
    if any(m in text for m in _LOST_RACE):
        return "lost race"
    if any(m in text for m in _BUSY):
        return "busy"
    return None


def store_write(what: str, fn, uri: str | None = None, tries: int | None = None):
    """``fn()``, again after a lost race or a busy store (with a growing, jittered pause), at most ``tries``
    times; ``fn`` looks up before it inserts, so a retry finds the row the winner wrote and goes on. Any other
    failure, or the last one, raises :class:`TrackingError` at once (over HTTP, MLflow's client has already
    retried an unreachable server for ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` attempts)."""
    tries = tries or WRITE_TRIES
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except Exception as e:
            if isinstance(e, (TrackingError, ValueError)):  # ours (a param a resumed run cannot change)
                raise
            if _transient(e) is None or attempt == tries:
                raise TrackingError(what, uri or tracking_uri(), e, attempt) from e
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))


def _client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def get_experiment_id(name: str, uri: str | None = None) -> str:
    """The experiment's id, created (with an explicit artifact location) if missing."""
    client = _client(uri)
    location = None
    if not (uri or tracking_uri()).startswith(("http://", "https://")):
        location = Path(artifact_root()).joinpath(name).as_uri()

    def get_or_create() -> str:  # a retry after a lost race finds the experiment the winner created
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=location)

    return store_write(f"creating experiment {name!r}", get_or_create, uri)


# ============================================================================================== the UI

def ui_base(uri: str | None = None) -> str:
    """Where the MLflow UI of the store ``uri`` is: the server itself for an http(s) store, else the address
    ``make ui`` serves a local store on."""
    uri = uri or tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://{UI_HOST}:{UI_PORT}"


def runs_table_url(experiment_id: str, parent_run_id: str | None = None, uri: str | None = None) -> str:
    """The experiment's runs table, every run on its own row: ``/runs?workflowType=machine_learning`` (not MLflow
    3's GenAI "Traces" page), sorted by run name (MLflow nests child runs under a collapsed parent when the table is
    sorted by creation time, and no URL parameter expands a parent). With ``parent_run_id``: only that parent's
    child runs (one grid's jobs)."""
    query = "workflowType=machine_learning&orderByKey=" + quote("tags.`mlflow.runName`", safe="") + "&orderByAsc=true"
    if parent_run_id:
        query += "&searchFilter=" + quote(f"tags.`mlflow.parentRunId` = '{parent_run_id}'", safe="")
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{query}"


def run_url(experiment_id: str, run_id: str, uri: str | None = None) -> str:
    """One run's page (parameters, metrics, datasets; its "System metrics" tab)."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_lines(experiment: str, parent_run_id: str | None = None, uri: str | None = None,
             how_to_start: bool = True) -> list[str]:
    """What a grid prints at its end: where to see its runs in the MLflow UI."""
    uri = uri or tracking_uri()
    exp = _client(uri).get_experiment_by_name(experiment)
    if exp is None:
        return [f"MLflow: experiment {experiment!r} does not exist in {uri}"]
    lines = []
    if parent_run_id:
        lines += [f"MLflow UI, this grid's job runs (the child runs of parent run {parent_run_id}):",
                  f"  {runs_table_url(exp.experiment_id, parent_run_id, uri)}"]
    lines += [f"MLflow UI, every run of experiment {experiment!r} (grid parents and their job runs, one row each):",
              f"  {runs_table_url(exp.experiment_id, None, uri)}"]
    if how_to_start and not uri.startswith(("http://", "https://")):
        lines.append(f"  (a local store: `make ui` serves it on {ui_base(uri)})")
    return lines


def latest_run(uri: str | None = None):
    """The most recently started run of the store (any experiment), or None."""
    client = _client(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=1, order_by=["attributes.start_time DESC"]) if ids else []
    return runs[0] if runs else None


# ============================================================================================== data sets

def dataset_input(name: str, split: str, digest: str, num_images: int, shape: tuple, source: str,
                  source_type: str = "local", context: str = "train", used_for: str = ""):
    """An MLflow dataset input named ``<data set>-<split>``: the content hash as its digest, its size and image
    shape as its profile and schema, where it comes from, and the role it plays in the run (``context``, shown in
    the UI: train or evaluation; ``used_for`` says more, e.g. that the training split is also the metrics'
    reference). MLflow records one input per data set and run, so a split that plays two roles is logged once."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    profile = json.dumps({"num_images": int(num_images), "split": split})
    schema = json.dumps({"images": f"uint8 {list(shape)}"})
    ds = Dataset(name=f"{name}-{split}", digest=digest, source_type=source_type, source=json.dumps({"uri": source}),
                 schema=schema, profile=profile)
    tags = [InputTag("mlflow.data.context", context), InputTag("split", split)]
    return DatasetInput(ds, tags=tags + ([InputTag("used_for", used_for)] if used_for else []))


def log_datasets(client, run_id: str, inputs: list, uri: str | None = None) -> None:
    """Log dataset inputs to a run; an input the run already has (a resumed run, a retried write) is not logged
    twice. The store keeps one row per data set and experiment, which every job of a grid logs: a job that loses
    the race to insert it retries and finds it (:func:`store_write`)."""
    def key(d) -> tuple:
        return d.dataset.name, d.dataset.digest, tuple(sorted((t.key, t.value) for t in d.tags))

    def write() -> None:
        have = {key(d) for d in client.get_run(run_id).inputs.dataset_inputs}
        new = [d for d in inputs if key(d) not in have]
        if new:
            client.log_inputs(run_id, datasets=new)

    names = ", ".join(d.dataset.name for d in inputs)
    store_write(f"logging the dataset input(s) {names} of run {run_id}", write, uri)


class Tracker:
    """One MLflow run. ``Tracker.start`` creates a run, ``Tracker.resume(run_id)`` continues one. Every write goes
    through :func:`store_write`; metrics that could not be written stay in the buffer (:meth:`spool` keeps them on
    disk for the next attempt)."""

    def __init__(self, run_id: str, uri: str | None = None, flush_every: int = 200, flush_seconds: float = 10.0):
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)
        self.run_id = run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._monitor = None
        self._logged_upto: dict[str, int] = {}  # a resumed run: the last step the store has of each metric

    def _write(self, what: str, fn):
        return store_write(f"{what} (run {self.run_id})", fn, self.uri)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, experiment: str, run_name: str | None = None, tags: dict | None = None,
              parent_run_id: str | None = None, uri: str | None = None, **kw) -> "Tracker":
        uri = uri or tracking_uri()
        client = _client(uri)
        exp_id = get_experiment_id(experiment, uri)
        all_tags = {"git_commit": git_commit(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = store_write(f"creating run {run_name!r} in experiment {experiment!r}",
                          lambda: client.create_run(exp_id, run_name=run_name,
                                                    tags={k: str(v) for k, v in all_tags.items()}), uri)
        return cls(run.info.run_id, uri=uri, **kw)

    @classmethod
    def resume(cls, run_id: str, uri: str | None = None, spool: str | Path | None = None, **kw) -> "Tracker":
        """Continue run ``run_id``: RUNNING again; metrics at steps the store already has are not logged again
        (the steps between the last checkpoint and an interruption run twice); the metrics an earlier attempt
        could not write (``spool``, see :meth:`spool`) are written first."""
        t = cls(run_id, uri=uri, **kw)
        t._write("marking the run RUNNING", lambda: t.client.update_run(run_id, status="RUNNING"))
        run = t._write("reading the run", lambda: t.client.get_run(run_id))
        for key in run.data.metrics:
            if not key.startswith("system/"):  # MLflow's monitor continues its own steps
                history = t._write(f"reading metric {key}", lambda k=key: t.client.get_metric_history(run_id, k))
                t._logged_upto[key] = max(m.step for m in history)
        if spool is not None and Path(spool).is_file():
            from mlflow.entities import Metric

            for line in Path(spool).read_text().splitlines():
                if line.strip():
                    m = json.loads(line)
                    t._add(Metric(m["key"], m["value"], m["timestamp"], m["step"]))
            for m in t._buffer:  # the steps the store has now: the re-run of those steps logs nothing twice
                t._logged_upto[m.key] = max(m.step, t._logged_upto.get(m.key, -1))
            t.flush()
            Path(spool).unlink()
        return t

    def start_system_metrics(self, resume: bool = False) -> str:
        """Log this machine's CPU, memory, disk, network and (NVIDIA, through nvidia-ml-py) GPU utilisation to the
        run as MLflow system metrics (``system/...``) from a background thread until :meth:`end`. MLflow's
        ``SystemMetricsMonitor`` samples every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (default 10);
        ``resume`` continues the step count of an earlier attempt. Returns what is monitored, for a tag; it is
        off (saying why) when psutil is missing or ``WAVEBENCH_SYSTEM_METRICS=0``."""
        if os.environ.get("WAVEBENCH_SYSTEM_METRICS", "1") == "0":
            return "off (WAVEBENCH_SYSTEM_METRICS=0)"
        try:
            import psutil  # noqa: F401  (MLflow's CPU monitor needs it)
        except ImportError:
            return "off (psutil is not installed)"
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        quiet = logging.getLogger("mlflow.system_metrics")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # it logs INFO lines on start and stop
        try:
            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=self.uri)
            self._monitor.start()
        finally:
            quiet.setLevel(level)
        return ", ".join(type(m).__name__.replace("Monitor", "") for m in self._monitor.monitors)

    def stop_system_metrics(self) -> None:
        if self._monitor is not None:
            monitor, self._monitor = self._monitor, None
            quiet = logging.getLogger("mlflow.system_metrics")
            level = quiet.level
            quiet.setLevel(logging.WARNING)
            try:
                monitor.finish()
            finally:
                quiet.setLevel(level)

    def end(self, status: str = "FINISHED") -> None:
        self.stop_system_metrics()
        self.flush()
        self._write(f"ending the run {status}", lambda: self.client.set_terminated(self.run_id, status=status))

    def fail(self, reason: str) -> None:
        self.set_tags({"failure_reason": reason[:5000]})
        self.end("FAILED")

    def spool(self, path: str | Path) -> int:
        """Keep the metrics not yet written (the store failed) in ``path`` (JSON lines, appended) for
        :meth:`resume`; returns how many."""
        if not self._buffer:
            return 0
        with open(path, "a") as f:
            for m in self._buffer:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        n, self._buffer = len(self._buffer), []
        return n

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict) -> None:
        """Logs params not yet on the run; a resumed run re-logging a *different* value is an error."""
        from mlflow.entities import Param

        def missing() -> list:  # looked up on every attempt: a retried batch is not logged twice
            existing = self.client.get_run(self.run_id).data.params
            new = []
            for k, v in params.items():
                v = str(v)[:6000]
                if k in existing:
                    if existing[k] != v:
                        raise ValueError(f"run {self.run_id}: param {k} is {existing[k]!r}, cannot change to {v!r}")
                    continue
                new.append(Param(k, v))
            return new

        new = self._write("reading the params", missing)
        for i in range(0, len(new), 100):
            chunk = new[i:i + 100]
            self._write(f"logging {len(chunk)} params", lambda: self.client.log_batch(self.run_id, params=chunk))

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        if batch:
            self._write(f"setting the tags {', '.join(tags)}", lambda: self.client.log_batch(self.run_id, tags=batch))

    def _add(self, metric) -> None:
        if metric.step > self._logged_upto.get(metric.key, -1):  # a resumed run has the earlier steps already
            self._buffer.append(metric)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._add(Metric(k, v, ts, int(step or 0)))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered metrics; what the store did not take stays buffered (and raises)."""
        while self._buffer:
            chunk = self._buffer[:1000]
            self._write(f"logging {len(chunk)} metric values",
                        lambda: self.client.log_batch(self.run_id, metrics=chunk))
            self._buffer = self._buffer[len(chunk):]
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._write(f"storing the artifact {Path(path).name}",
                    lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_dict(self, data: dict, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            self.log_artifact(p)

    # ------------------------------------------------------------------ reading
    def params(self) -> dict:
        return dict(self.client.get_run(self.run_id).data.params)

    def tags(self) -> dict:
        return dict(self.client.get_run(self.run_id).data.tags)

    def log_datasets(self, inputs: list) -> None:
        log_datasets(self.client, self.run_id, inputs, self.uri)


class NullTracker:
    """Same interface, records nothing durable (benchmarks with logging disabled, quick tests)."""

    run_id = None

    def __init__(self):
        self.metrics: list[tuple[str, float, int]] = []
        self.tags_: dict = {}
        self.params_: dict = {}

    def end(self, status: str = "FINISHED") -> None:
        self.status = status

    def fail(self, reason: str) -> None:
        self.tags_["failure_reason"] = reason
        self.end("FAILED")

    def log_params(self, params: dict) -> None:
        self.params_.update(params)

    def set_tags(self, tags: dict) -> None:
        self.tags_.update(tags)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.metrics.extend((k, float(v), int(step or 0)) for k, v in metrics.items())

    def flush(self) -> None:
        pass

    def log_artifact(self, path, artifact_path=None) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass

    def log_datasets(self, inputs: list) -> None:
        pass

    def spool(self, path) -> int:
        return 0

    def start_system_metrics(self, resume: bool = False) -> str:
        return "off (no MLflow run)"

    def stop_system_metrics(self) -> None:
        pass


# ============================================================================================== command line

def main(argv: list[str] | None = None) -> int:
    """``python -m bench.tracking url``: the MLflow UI URL of the latest run's experiment (what ``make ui`` prints
    before it starts the UI)."""
    ap = argparse.ArgumentParser(prog="python -m bench.tracking", description=main.__doc__.split("\n")[0])
    ap.add_argument("command", choices=["url"], help="url: print the runs-table URL of the latest experiment")
    ap.parse_args(argv)
    uri = tracking_uri()
    try:
        run = latest_run(uri)
    except Exception as e:  # an unreadable store: say so, the UI may still start
        print(f"MLflow store {uri}: cannot be read ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    if run is None:
        print(f"MLflow store {uri} has no runs yet (`make demo` makes some); the UI: {ui_base(uri)}")
        return 0
    exp = _client(uri).get_experiment(run.info.experiment_id)
    tags = run.data.tags
    parent = run.info.run_id if tags.get("kind") == "grid" else tags.get("mlflow.parentRunId")
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
    print(f"latest run: {run.info.run_name} ({run.info.status}, started {started}) in experiment {exp.name!r}")
    for line in ui_lines(exp.name, parent, uri, how_to_start=False):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
