import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from mlflow.tracking import MlflowClient

from bench import run
from bench.config import ConfigError
from bench.tracking import runs_table_url
from conftest import micro, online, wait_s

import pytest


def _grid(tmp_path, name="g", **over):
    g = {"name": name, "experiment": "grid-test",
         "defaults": {k: v for k, v in micro("wavediff").items() if k != "variant"},
         "axes": {"variant": ["wavediff", "wavediff-no-rec"]}, "executor": {"name": "local", "max_parallel": 1,
                                                                          "timeout_min": 10}}
    g.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def test_expand_defaults_jobs_and_axes():
    jobs = run.expand({"dataset": "digits", "train": {"max_steps": 5}}, {"seed": [0, 1]},
                      [{"variant": "ddpm"}, {"variant": "ddgan", "train.max_steps": 7}])
    assert len(jobs) == 4
    assert jobs[3] == {"dataset": "digits", "train": {"max_steps": 7}, "variant": "ddgan", "seed": 1}


def test_bare_grid_names_and_dry_run(capsys):
    for name in ("demo", "demo.yaml", "experiments/demo.yaml"):
        assert run.find_grid(name).name == "demo.yaml"
    assert run.main(["--grid", "demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ddgan" in out and "wavediff" in out and "job hash" in out
    with pytest.raises(ConfigError, match="grids in experiments/: .*demo"):
        run.find_grid("nope")


def test_invalid_grid_reports_everything_and_logs_nothing(store, tmp_path, capsys):
    p = _grid(tmp_path, axes={"variant": ["wavediff", "wavediffx"], "train.lr_g": ["fast"]},
              jobs=[{"eval": {"sampler": "ddim"}}], executor={"name": "pbs"})
    assert run.main(["--grid", str(p)]) == 2
    err = capsys.readouterr().err
    assert "job 0 (wavediff" in err and "train.lr_g: expected a number, got 'fast'" in err
    assert "unknown variant 'wavediffx'; valid: ddgan" in err
    assert "executor.name='pbs'; valid: local, slurm, auto" in err
    assert MlflowClient(store).get_experiment_by_name("grid-test") is None  # nothing logged
    bad = tmp_path / "bad.yaml"
    bad.write_text("axes:\n  variant: [a\n  b: c\n")
    assert run.main(["--grid", str(bad)]) == 2
    assert "malformed YAML at line 3" in capsys.readouterr().err


def test_local_grid_runs_child_runs_under_a_parent_and_skips_on_rerun(store, tmp_path, capsys):
    p = _grid(tmp_path)
    assert run.main(["--grid", str(p)]) == 0
    out = capsys.readouterr().out
    assert "[running] wavediff/digits/s0" in out and "[done] wavediff-no-rec/digits/s0" in out
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("grid-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "grid"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.info.status == "FINISHED" and c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and
               c.data.tags["grid"] == "g" and c.data.tags["executor"] == "local" for c in children)
    assert {c.data.tags["variant"] for c in children} == {"wavediff", "wavediff-no-rec"}
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["jobs_finished"] == 2
    # Its closing lines: the runs table of this grid's job runs, then of the experiment (MLflow UI URLs).
    pid = parents[0].info.run_id
    urls = [line.strip() for line in out.splitlines() if line.strip().startswith("http://127.0.0.1:5000/#/")]
    assert urls[0] == runs_table_url(exp.experiment_id, pid) and urls[1] == runs_table_url(exp.experiment_id)
    assert f"child runs of parent run {pid}" in out and "sampling_s_per_batch_mean" in out
    # Same grid again: both skipped, nothing retrained.
    assert run.main(["--grid", str(p)]) == 0
    assert capsys.readouterr().out.count("[skip]") == 2
    assert len([r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]) == 2


def test_a_failing_job_does_not_stop_the_grid(store, tmp_path, capsys):
    p = _grid(tmp_path, name="f", jobs=[{"train": {"lr_g": 1e25, "lr_d": 1e25, "max_steps": 30}}, {}],
              axes={"variant": ["ddgan"]},
              defaults={k: v for k, v in micro("ddgan").items() if k != "variant"})
    assert run.main(["--grid", str(p)]) == 101
    out = capsys.readouterr().out
    assert "[failed]" in out and "non-finite loss" in out and "FINISHED" in out


def test_a_grid_that_could_not_evaluate_fails_before_anything_runs(store, tmp_path, monkeypatch, capsys):
    """Issue 16: an image folder with quality metrics on and no Inception weights reachable used to train to its
    budget and only then fail. Now the grid stops at validation (exit 2), naming the file and the key; --dry-run
    lists it without downloading."""
    if online():
        pytest.skip("network reachable: the runner would download the Inception and VGG16 weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    p = _grid(tmp_path, name="folder", defaults={"dataset": "stl10", "scale": "tiny", "device": "cpu",
                                                 "data": {"root": str(folder)}, "train": {"max_steps": 2}},
              axes={"variant": ["wavediff", "ddgan"]})
    assert run.main(["--grid", str(p), "--dry-run"]) == 0
    assert "not on this machine yet" in capsys.readouterr().out
    assert run.main(["--grid", str(p)]) == 2
    err = capsys.readouterr().err
    assert "jobs 0 (wavediff, dataset=stl10), 1 (ddgan, dataset=stl10)" in err
    file, key = "weights-inception-2015-12-05-6726825d.pth", "eval.metrics.inception_weights"
    assert file in err and f"set {key} to its path" in err
    assert "vgg16" not in err  # unless vgg16_weights is set, precision/recall are reported as not measured instead
    assert MlflowClient(store).get_experiment_by_name("grid-test") is None  # nothing ran, nothing logged


# ---- a runner that dies leaves no parent run RUNNING -------------------------------------------------------------

def _parent_runs(client, experiment="grid-test"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'grid'") if exp else []
    return sorted(runs, key=lambda r: r.info.start_time)


def test_a_killed_runners_parent_run_is_marked_killed_by_the_rerun_and_status(store, tmp_path, capsys):
    import os
    import signal
    import time

    import psutil

    p = _grid(tmp_path, axes={"variant": ["wavediff"]}, defaults={**{k: v for k, v in micro("wavediff").items()
                                                                  if k != "variant"}, "train.max_steps": 3})
    runner = subprocess.Popen([sys.executable, "-m", "bench.run", "--grid", str(p)], cwd=Path(run.__file__).resolve().parents[1],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(store)
    deadline = time.monotonic() + wait_s(60)
    while not _parent_runs(client) and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _parent_runs(client), "the runner made no parent run"
    family = psutil.Process(runner.pid).children(recursive=True)
    os.kill(runner.pid, signal.SIGKILL)  # kill -9 mid-grid (its job processes die with the machine, too)
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    runner.wait()
    (killed,) = _parent_runs(client)
    assert killed.info.status == "RUNNING" and killed.data.tags["runner_pid"] == str(runner.pid)

    assert run.main(["--grid", str(p)]) == 0  # the re-run closes the orphan, then runs the job
    out = capsys.readouterr().out
    assert f"[orphan] parent run {killed.info.run_id} of an earlier attempt marked KILLED: its runner (pid " \
           f"{runner.pid} on " in out
    old, new = _parent_runs(client)
    assert old.info.status == "KILLED" and old.data.tags["failure_reason"].startswith("orphaned: its runner (pid")
    assert new.info.status == "FINISHED"

    assert run.main(["--grid", str(p), "--status"]) == 0  # every job FINISHED
    out = capsys.readouterr().out
    assert "wavediff" in out and "FINISHED" in out and f"parent run {old.info.run_id}" in out and "KILLED" in out


def test_status_judges_a_runner_on_another_host_by_its_heartbeat(store, tmp_path, capsys):
    import time

    p = _grid(tmp_path)
    live = run.prepare_tracking("grid-test", "g", "grid-live", "local")  # this process: alive
    quiet = run.prepare_tracking("grid-test", "g", "grid-quiet", "slurm")
    quiet.set_tags({"runner_host": "login-node-2", "runner_heartbeat": f"{time.time() - 3600:.0f}"})
    recent = run.prepare_tracking("grid-test", "g", "grid-recent", "slurm")
    recent.set_tags({"runner_host": "login-node-2", "runner_heartbeat": f"{time.time() - 30:.0f}"})
    assert run.main(["--grid", str(p), "--status"]) == 1  # no job has run
    out = capsys.readouterr().out
    assert "NOT RUN" in out
    assert f"[orphan] parent run {quiet.run_id} marked KILLED: its runner (pid" in out and "has not reported for 60 min" in out
    client = MlflowClient(store)
    status = {r.info.run_id: r.info.status for r in _parent_runs(client)}
    assert status == {live.run_id: "RUNNING", quiet.run_id: "KILLED", recent.run_id: "RUNNING"}
