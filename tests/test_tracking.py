import math
import time
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


def test_ui_urls_open_the_runs_table_with_every_run_visible(store):
    from urllib.parse import parse_qs, unquote, urlsplit

    from bench.tracking import runs_table_url, ui_base, ui_lines

    assert ui_base("sqlite:///x/mlflow.db") == "http://127.0.0.1:5000"
    assert ui_base("http://login-node:5001/") == "http://login-node:5001"
    url = runs_table_url("7", "abc123", "http://host:5001")
    assert url.startswith("http://host:5001/#/experiments/7/runs?")
    q = parse_qs(urlsplit(url.split("#", 1)[1]).query)
    assert q["workflowType"] == ["machine_learning"]  # not MLflow 3's GenAI "Traces" page
    assert q["orderByKey"] == ["tags.`mlflow.runName`"]  # child runs on their own rows, not under a collapsed parent
    assert unquote(q["searchFilter"][0]) == "tags.`mlflow.parentRunId` = 'abc123'"
    assert "searchFilter" not in runs_table_url("7")
    eid = get_experiment_id("exp-ui")
    lines = ui_lines("exp-ui", "abc123")
    assert any(f"/#/experiments/{eid}/runs?" in line and "abc123" in line for line in lines)
    assert any("make ui" in line for line in lines)  # a local store: how to start the UI
    assert "does not exist" in ui_lines("nope")[0]


def test_url_command_names_the_latest_runs_experiment(store, capsys):
    from bench.tracking import main

    assert main(["url"]) == 0
    assert "has no runs yet" in capsys.readouterr().out
    parent = Tracker.start("older", run_name="grid-a", tags={"kind": "grid"})
    Tracker.start("older", run_name="job-a", parent_run_id=parent.run_id)
    time.sleep(0.01)
    parent = Tracker.start("newest", run_name="grid-b", tags={"kind": "grid"})
    time.sleep(0.01)
    child = Tracker.start("newest", run_name="job-b", parent_run_id=parent.run_id)
    assert main(["url"]) == 0
    out = capsys.readouterr().out
    eid = get_experiment_id("newest")
    assert "latest run: job-b" in out and f"/#/experiments/{eid}/runs?workflowType=machine_learning" in out
    assert parent.run_id in out and child.run_id not in out  # the latest grid's job runs


def test_dataset_inputs_are_logged_once(store):
    from bench.tracking import dataset_input

    t = Tracker.start("unit-ds", run_name="r")
    train = dataset_input("digits", "train", "0123456789abcdef", 1437, (1, 32, 32), "sklearn", "code",
                          used_for="training")
    t.log_datasets([train])
    Tracker.resume(t.run_id).log_datasets([train])  # a resumed run logs it again: still one input
    (inp,) = MlflowClient(store).get_run(t.run_id).inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("digits-train", "0123456789abcdef")
    assert {x.key: x.value for x in inp.tags} == {"mlflow.data.context": "train", "split": "train",
                                                   "used_for": "training"}


def test_system_metrics_while_running_and_not_after(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    t = Tracker.start("unit-sys", run_name="r")
    assert t.start_system_metrics().startswith("CPU")
    time.sleep(1.5)
    t.end()
    client = MlflowClient(store)
    cpu = client.get_metric_history(t.run_id, "system/cpu_utilization_percentage")
    mem = client.get_metric_history(t.run_id, "system/system_memory_usage_megabytes")
    assert len(cpu) >= 2 and all(0 <= m.value <= 100 for m in cpu) and mem and mem[0].value > 0
    time.sleep(0.5)
    assert len(client.get_metric_history(t.run_id, "system/cpu_utilization_percentage")) == len(cpu)  # stopped
    monkeypatch.setenv("WAVEBENCH_SYSTEM_METRICS", "0")
    assert Tracker.start("unit-sys").start_system_metrics().startswith("off")


# ---- writes that lose a race, a store that fails ----------------------------------------------------------------

def test_a_write_that_lost_a_race_is_retried_and_goes_on():
    from bench.tracking import store_write

    calls = []

    def insert():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
        return "row"

    assert store_write("logging a data set", insert, "sqlite:///x.db") == "row" and len(calls) == 3


def test_a_refused_write_fails_at_once_naming_the_write_and_the_store():
    from bench.tracking import TrackingError, store_write

    calls = []

    def refuse():
        calls.append(1)
        raise RuntimeError("INVALID_PARAMETER_VALUE: bad value")

    with pytest.raises(TrackingError, match=r"MLflow store sqlite:///x.db: logging 3 params failed after 1 attempt "
                                            r"\(RuntimeError: INVALID_PARAMETER_VALUE"):
        store_write("logging 3 params", refuse, "sqlite:///x.db")
    assert len(calls) == 1


def test_a_store_that_stays_locked_fails_after_bounded_retries(monkeypatch):
    from bench import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def locked():
        calls.append(1)
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    with pytest.raises(tracking.TrackingError, match=f"after {tracking.WRITE_TRIES} attempts"):
        tracking.store_write("ending the run", locked, "sqlite:///x.db")
    assert len(calls) == tracking.WRITE_TRIES


def test_experiment_created_by_another_process_in_between_is_found(store):
    """The lost race of get_experiment_id: the look-up said absent, the insert found it present."""
    client = MlflowClient(store)
    real_get = MlflowClient.get_experiment_by_name
    state = {"first": True}

    def stale_lookup(self, name):  # the first look-up runs before the other process commits
        if state["first"]:
            state["first"] = False
            client.create_experiment(name)
            return None
        return real_get(self, name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MlflowClient, "get_experiment_by_name", stale_lookup)
        exp_id = get_experiment_id("raced")
    assert exp_id == client.get_experiment_by_name("raced").experiment_id


def test_a_resumed_run_writes_what_was_kept_and_never_a_step_twice(store, tmp_path):
    t = Tracker.start("unit", run_name="r")
    for step in (1, 2, 3):
        t.log_metrics({"loss": float(step)}, step=step)
    t.flush()
    for step in (4, 5):  # the store failed before these were written: the job keeps them
        t.log_metrics({"loss": float(step)}, step=step)
    spool = tmp_path / "pending.jsonl"
    assert t.spool(spool) == 2 and t.spool(spool) == 0
    r = Tracker.resume(t.run_id, spool=spool)
    assert not spool.exists()
    for step in (3, 4, 5, 6):  # training resumed from a checkpoint at step 2 runs 3..5 again
        r.log_metrics({"loss": 10.0 + step}, step=step)
    r.end()
    hist = sorted((m.step, m.value) for m in MlflowClient(store).get_metric_history(t.run_id, "loss"))
    assert hist == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 16.0)]
