import math
from dataclasses import dataclass, field

import pytest
from mlflow.tracking import MlflowClient

from bench.tracking import Tracker, flatten, get_experiment_id


@dataclass
class Inner:
    lr: float = 1e-4
    ch_mult: tuple = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_flatten_nested_config():
    assert flatten(Outer()) == {"name": "x", "inner.lr": "0.0001", "inner.ch_mult": "[1, 2]"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WAVEBENCH_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return uri


def test_run_lifecycle_buffered_metrics_and_resume(store, tmp_path):
    t = Tracker.start("unit", run_name="r", tags={"variant": "wavediff"}, flush_every=1000)
    t.log_params(flatten(Outer()))
    for step in range(250):
        t.log_metrics({"loss": 1.0 / (step + 1), "nan_is_dropped": math.nan}, step=step)
    t.log_dict({"a": 1}, "summary.json")
    t.end()
    client = MlflowClient(store)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["variant"] == "wavediff"
    assert "git_commit" in run.data.tags
    hist = client.get_metric_history(t.run_id, "loss")
    assert [m.step for m in hist] == list(range(250))
    assert not client.get_metric_history(t.run_id, "nan_is_dropped")
    assert "summary.json" in [a.path for a in client.list_artifacts(t.run_id)]
    # Resuming continues the same run; identical params are accepted, a changed one is refused.
    r = Tracker.resume(t.run_id)
    assert client.get_run(t.run_id).info.status == "RUNNING"
    r.log_params(flatten(Outer()))
    with pytest.raises(ValueError, match="cannot change"):
        r.log_params({"inner.lr": "0.5"})
    r.fail("boom")
    run = client.get_run(t.run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "boom"


def test_experiment_has_explicit_artifact_location(store, tmp_path):
    eid = get_experiment_id("exp-a")
    assert get_experiment_id("exp-a") == eid
    loc = MlflowClient(store).get_experiment(eid).artifact_location
    assert loc.startswith("file://") and "artifacts" in loc
