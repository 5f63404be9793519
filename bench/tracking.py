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
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
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
           "ui_lines", "latest_run", "dataset_input", "log_datasets", "RENAMED_METRICS", "current_name"]

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


def _client(uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or tracking_uri())


def get_experiment_id(name: str, uri: str | None = None) -> str:
    """The experiment's id, created (with an explicit artifact location) if missing."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not (uri or tracking_uri()).startswith(("http://", "https://")):
        location = Path(artifact_root()).joinpath(name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


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


def log_datasets(client, run_id: str, inputs: list) -> None:
    """Log dataset inputs to a run; an input the run already has (a resumed run) is not logged twice."""
    have = {(d.dataset.name, d.dataset.digest, tuple(sorted((t.key, t.value) for t in d.tags)))
            for d in client.get_run(run_id).inputs.dataset_inputs}
    new = [d for d in inputs
           if (d.dataset.name, d.dataset.digest, tuple(sorted((t.key, t.value) for t in d.tags))) not in have]
    if new:
        client.log_inputs(run_id, datasets=new)


class Tracker:
    """One MLflow run. ``Tracker.start`` creates a run, ``Tracker.resume(run_id)`` continues one."""

    def __init__(self, run_id: str, uri: str | None = None, flush_every: int = 200, flush_seconds: float = 10.0):
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)
        self.run_id = run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._monitor = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, experiment: str, run_name: str | None = None, tags: dict | None = None,
              parent_run_id: str | None = None, uri: str | None = None, **kw) -> "Tracker":
        client = _client(uri)
        exp_id = get_experiment_id(experiment, uri)
        all_tags = {"git_commit": git_commit(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()})
        return cls(run.info.run_id, uri=uri, **kw)

    @classmethod
    def resume(cls, run_id: str, uri: str | None = None, **kw) -> "Tracker":
        t = cls(run_id, uri=uri, **kw)
        t.client.update_run(run_id, status="RUNNING")
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
        self.client.set_terminated(self.run_id, status=status)

    def fail(self, reason: str) -> None:
        self.set_tags({"failure_reason": reason[:5000]})
        self.end("FAILED")

    # ------------------------------------------------------------------ logging
    def log_params(self, params: dict) -> None:
        """Logs params not yet on the run; a resumed run re-logging a *different* value is an error."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = []
        for k, v in params.items():
            v = str(v)[:6000]
            if k in existing:
                if existing[k] != v:
                    raise ValueError(f"run {self.run_id}: param {k} is {existing[k]!r}, cannot change to {v!r}")
                continue
            new.append(Param(k, v))
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._buffer.append(Metric(k, v, ts, int(step or 0)))
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self.client.log_batch(self.run_id, metrics=chunk)
        self._last_flush = time.monotonic()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

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
        log_datasets(self.client, self.run_id, inputs)


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
