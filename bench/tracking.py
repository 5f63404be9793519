"""MLflow tracking: one run per job, parameters = the flattened resolved config, metrics buffered.

The default store is ``sqlite:///<repo>/mlflow.db`` with artifacts under ``<repo>/mlartifacts``;
``MLFLOW_TRACKING_URI`` overrides it (e.g. ``http://host:port`` of an ``mlflow server`` on a cluster).
Metrics are buffered and written with ``log_batch`` (one ``log_metric`` call costs ~3 ms on SQLite and ~50 ms
over HTTP, more than a small training step), flushed every ``flush_every`` values or ``flush_seconds``, and at
the end of the run.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["REPO_ROOT", "tracking_uri", "artifact_root", "get_experiment_id", "flatten", "Tracker",
           "NullTracker", "git_commit"]


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


class Tracker:
    """One MLflow run. ``Tracker.start`` creates a run, ``Tracker.resume(run_id)`` continues one."""

    def __init__(self, run_id: str, uri: str | None = None, flush_every: int = 200, flush_seconds: float = 10.0):
        self.uri = uri or tracking_uri()
        self.client = _client(self.uri)
        self.run_id = run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._buffer: list = []
        self._last_flush = time.monotonic()

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

    def end(self, status: str = "FINISHED") -> None:
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
