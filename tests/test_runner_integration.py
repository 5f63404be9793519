"""The runner against real components: the one-node SLURM cluster (requeue included) and a real MLflow server."""
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bench import run, submit
from conftest import free_port, micro, wait_s

ROOT = Path(__file__).resolve().parents[1]


def _grid_file(tmp_path, variants, name, **defaults):
    job = {k: v for k, v in micro(variants[0]).items() if k != "variant"}
    job.update(defaults)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "experiment": name, "defaults": job, "axes": {"variant": variants}}))
    return p


def _children(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slurm
def test_two_job_grid_through_slurm(slurm_up, store, tmp_path):
    p = _grid_file(tmp_path, ["wavediff", "wavediff-no-rec"], "slurm2")
    rc = run.main(["--grid", str(p), "--executor", "slurm", "--cluster", str(ROOT / "slurm/profiles/local.yaml")])
    assert rc == 0
    kids = _children(store, "slurm2")
    assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
    assert all(k.data.tags["executor"] == "slurm" and k.data.tags["slurm_job_id"] for k in kids)


def _preempt_once(store, grid_path, experiment: str, loss: str, after_steps: int, steps: int):
    """Run a one-job grid on the local cluster, send its job SIGUSR2 (what SLURM sends before a time-out) once
    ``after_steps`` steps are logged, wait for the grid; check one FINISHED run with steps 1..``steps`` each
    logged once, resumed from a checkpoint. Returns that run."""
    grid = run.load_grid(str(grid_path))
    configs = run.validate(grid)
    out = {}
    th = threading.Thread(target=lambda: out.update(res=run.run_grid(
        grid, configs, executor="slurm", max_parallel=1, cluster=submit.load_cluster(str(ROOT / "slurm/profiles/local.yaml")),
        poll_s=0.5)))
    th.start()
    client = MlflowClient(store)
    deadline = time.monotonic() + wait_s(80)  # two ranks each import torch and MLflow
    run_id = None
    while time.monotonic() < deadline:  # wait until training is under way (a few steps logged)
        kids = _children(store, experiment) if client.get_experiment_by_name(experiment) else []
        if kids and len(client.get_metric_history(kids[0].info.run_id, loss)) >= after_steps:
            run_id = kids[0].info.run_id
            break
        time.sleep(0.5)
    if not run_id:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, timeout=15).stdout
        pytest.fail(f"training did not start on the cluster within {wait_s(80):.0f} s (squeue: {queue.strip()!r})")
    job_id = client.get_run(run_id).data.tags["slurm_job_id"].split("_")[0]
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    th.join(timeout=wait_s(100))
    assert not th.is_alive()
    results, _ = out["res"]
    assert [r["status"] for r in results] == ["FINISHED"], results
    kids = _children(store, experiment)
    assert len(kids) == 1 and kids[0].info.run_id == run_id and kids[0].info.status == "FINISHED"
    # continuous: nothing lost, nothing logged twice
    assert [m.step for m in client.get_metric_history(run_id, loss)] == list(range(1, steps + 1))
    assert int(kids[0].data.tags["resumed_from_step"]) >= after_steps
    return kids[0]


@pytest.mark.slurm
def test_requeued_job_resumes_its_checkpoint_and_its_run(slurm_up, store, tmp_path):
    p = _grid_file(tmp_path, ["wddm-unet-l1"], "requeue", **{"train.max_steps": 60, "train.log_every": 1,
                                                             "train.checkpoint_every": 5})
    _preempt_once(store, p, "requeue", "loss", after_steps=8, steps=60)


@pytest.mark.slurm
def test_two_process_job_on_slurm_requeues_and_resumes_both_ranks(slurm_up, store, tmp_path):
    """A DDP job (2 tasks, gloo) preempted with USR2: both ranks stop at the same step, rank 0 requeues, the
    job resumes from the checkpoint, one FINISHED run with every step logged once."""
    p = _grid_file(tmp_path, ["wavediff"], "ddp-requeue", processes=2, **{
        "train.batch_size": 8, "train.max_steps": 24, "train.log_every": 1, "train.checkpoint_every": 5})
    r = _preempt_once(store, p, "ddp-requeue", "loss_g", after_steps=6, steps=24)
    assert r.data.tags["processes"] == "2"


def test_four_concurrent_jobs_log_to_a_real_mlflow_server(tmp_path, monkeypatch):
    port = free_port()
    script = ROOT / "slurm" / "mlflow-server.sh"
    env = {**os.environ, "WAVEBENCH_PYTHON": str(ROOT / ".venv/bin/python")}
    args = ["--port", str(port), "--run-dir", str(tmp_path / "server")]
    subprocess.run(["bash", str(script), "start", *args, "--backend", f"sqlite:///{tmp_path / 'server.db'}",
                    "--artifacts", str(tmp_path / "server-artifacts")], check=True, env=env, timeout=150)
    try:
        uri = f"http://127.0.0.1:{port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("WAVEBENCH_RUNS", str(tmp_path / "runs"))
        p = _grid_file(tmp_path, ["wavediff", "wavediff-no-rec", "ddgan", "wavediff-wg"], "server4",
                       **{"train.log_every": 1, "train.max_steps": 3})
        assert run.main(["--grid", str(p), "--executor", "local", "--max-parallel", "4"]) == 0
        kids = _children(uri, "server4")
        assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
        client = MlflowClient(uri)
        for k in kids:
            assert [m.step for m in client.get_metric_history(k.info.run_id, "loss_d")] == [1, 2, 3]
            assert {"fid", "sampling_s_per_batch_mean", "train_wall_clock_s"} <= set(k.data.metrics)
    finally:
        subprocess.run(["bash", str(script), "stop", *args], env=env, timeout=60)
