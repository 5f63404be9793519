"""Integration tests against the real local components: the one-node SLURM cluster and the MLflow server.

SLURM tests (marker `slurm`) need `slurm/local-cluster.sh up` first; they skip when `sinfo` is missing or the
cluster is down, and fail instead when WAVEBENCH_REQUIRE_SLURM=1 (CI brings the cluster up).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit
import yaml

from conftest import free_port, wait_s

ROOT = Path(__file__).resolve().parents[1]
LOCAL_PROFILE = ROOT / "slurm" / "profiles" / "local.yaml"
GPU_PROFILE = ROOT / "slurm" / "profiles" / "gpu-example.yaml"
MLFLOW_SCRIPT = ROOT / "slurm" / "mlflow-server.sh"

def profile_parameters(path: Path) -> dict:
    """The submitit parameters the runner derives from a cluster profile."""
    from bench.submit import cluster_parameters, load_cluster

    return cluster_parameters(load_cluster(str(path)), timeout_min=60)


# ---- SLURM ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_cluster(slurm_up):
    """A usable SLURM cluster; jobs unpickle this module's callables by value (tests/ is not importable)."""
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True, timeout=15)
    return out.stdout.strip()


def _wait_result(job: submitit.Job, timeout_s: float):
    """job.result() with a deadline: without accounting, submitit cannot tell a lost job from a pending one."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"job {job.job_id} not done after {timeout_s} s (squeue: {_squeue(job.job_id)!r})\n"
                f"stdout:\n{job.stdout()}\nstderr:\n{job.stderr()}"
            )
        time.sleep(0.5)
    return job.result()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True, timeout=15)
            pytest.fail(f"timed out after {timeout_s} s waiting for {what} (squeue: {queue.stdout.strip()!r})")
        time.sleep(0.2)


def _square_on_node(x: int) -> tuple[int, str, str]:
    return x * x, os.environ["SLURM_ARRAY_JOB_ID"], os.environ["SLURM_JOB_PARTITION"]


class SleepThenFinish(submitit.helpers.Checkpointable):
    """First attempt sleeps until interrupted; checkpoint() marks a file and resubmits as the next attempt."""

    def __call__(self, folder: str, attempt: int = 0) -> tuple[int, str]:
        Path(folder, f"started_{attempt}").touch()
        if attempt == 0:
            time.sleep(300)
        return attempt, os.environ.get("SLURM_RESTART_COUNT", "0")

    def checkpoint(self, folder: str, attempt: int = 0) -> submitit.helpers.DelayedSubmission:
        Path(folder, f"checkpointed_{attempt}").touch()
        return submitit.helpers.DelayedSubmission(self, folder, attempt + 1)


def test_profiles_map_onto_submitit_parameters(tmp_path):
    local = profile_parameters(LOCAL_PROFILE)
    assert local == {
        "slurm_partition": "debug",
        "cpus_per_task": 1,
        "mem_gb": 2,
        "timeout_min": 30,  # the profile's, not the fallback
        "slurm_array_parallelism": 2,
        "slurm_signal_delay_s": 90,
        "nodes": 1,
    }
    gpu = profile_parameters(GPU_PROFILE)
    assert gpu["gpus_per_node"] >= 1 and gpu["slurm_additional_parameters"] == {"requeue": True}
    assert gpu["slurm_signal_delay_s"] == 120 and gpu["timeout_min"] == 1440
    if shutil.which("srun"):  # submitit's SLURM executor accepts every parameter (it needs srun to exist)
        submitit.AutoExecutor(folder=tmp_path, cluster="slurm").update_parameters(**gpu)
    from bench.submit import load_cluster  # the runner reads both profiles (it rejects unknown keys)

    for path in (LOCAL_PROFILE, GPU_PROFILE):
        assert load_cluster(str(path)) == yaml.safe_load(path.read_text())


@pytest.mark.slurm
def test_map_array_runs_as_one_job_array(slurm_cluster, tmp_path):
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    assert executor.cluster == "slurm"
    executor.update_parameters(**profile_parameters(LOCAL_PROFILE))
    jobs = executor.map_array(_square_on_node, [3, 4])
    try:
        results = [_wait_result(job, timeout_s=wait_s(60)) for job in jobs]
    finally:
        for job in jobs:
            job.cancel(check=False)
    array_id = jobs[0].job_id.split("_")[0]
    assert [job.job_id for job in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    assert results == [(9, array_id, "debug"), (16, array_id, "debug")]


def _node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%c"], capture_output=True, text=True, timeout=15)
    return int(out.stdout.split()[0])


@pytest.mark.slurm
@pytest.mark.parametrize("interruption", ["usr2", "preemption"])
def test_interrupted_checkpointable_job_checkpoints_requeues_and_finishes(slurm_cluster, tmp_path, interruption):
    # usr2: `scancel --signal=USR2 <job>` reaches the job step, as SLURM's --signal=USR2@90 does before the time
    # limit (`--batch` would signal only the batch shell, which dies; a plain `scontrol requeue` only sends
    # SIGTERM, which submitit ignores, and restarts the original submission). preemption: a job in the `urgent`
    # partition needs the node; SLURM sends the debug job its --signal at once (preempt_send_user_signal).
    # Either way submitit's handler calls checkpoint(), saves the returned submission and runs
    # `scontrol requeue`; the job starts again about 11 s later and runs the checkpointed submission.
    marks = tmp_path / "marks"
    marks.mkdir()
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(**profile_parameters(LOCAL_PROFILE))
    if interruption == "preemption":
        executor.update_parameters(cpus_per_task=_node_cpus())  # the whole node, so `urgent` must preempt it
    job = executor.submit(SleepThenFinish(), str(marks))
    urgent_out = tmp_path / "urgent.out"
    try:
        _wait_for(lambda: (marks / "started_0").exists(), wait_s(60), "the first attempt to start")
        if interruption == "usr2":
            subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=15)
        else:
            command = ["sbatch", "--partition=urgent", "--cpus-per-task=1", f"--output={urgent_out}", "--wrap=echo ran"]
            subprocess.run(command, check=True, timeout=15, capture_output=True)
        _wait_for(lambda: (marks / "checkpointed_0").exists(), wait_s(20), "checkpoint() to be called")
        attempt, restarts = _wait_result(job, timeout_s=wait_s(45))
    finally:
        job.cancel(check=False)
    assert (attempt, restarts) == (1, "1")
    assert sorted(p.name for p in marks.iterdir()) == ["checkpointed_0", "started_0", "started_1"]
    assert "Caught signal SIGUSR2" in job.stdout() and "Requeued job" in job.stdout()
    if interruption == "preemption":
        _wait_for(urgent_out.exists, 15, "the urgent job to run")
        assert urgent_out.read_text().strip() == "ran"


# ---- MLflow server ---------------------------------------------------------------------------------------------


def _log_run(uri: str, experiment_id: str, worker: int, n_metrics: int) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"worker-{worker}") as run:
        mlflow.log_param("worker", worker)
        for step in range(n_metrics):
            mlflow.log_metric("loss", worker + step / n_metrics, step=step)
    return run.info.run_id


def test_mlflow_server_script_takes_runs_from_concurrent_processes(tmp_path):
    from mlflow.tracking import MlflowClient

    port = free_port()
    options = ["--port", str(port), "--run-dir", str(tmp_path / "server"), "--workers", "1",
               "--backend", f"sqlite:///{tmp_path}/mlflow.db", "--artifacts", str(tmp_path / "artifacts")]  # fmt: skip

    def script(command: str) -> subprocess.CompletedProcess:
        args = ["bash", str(MLFLOW_SCRIPT), command, *options]
        return subprocess.run(args, capture_output=True, text=True, timeout=150, cwd=ROOT)

    started = script("start")
    try:
        assert started.returncode == 0, started.stderr
        uri = f"http://127.0.0.1:{port}"
        assert started.stdout.strip() == f"export MLFLOW_TRACKING_URI={uri}"
        assert script("status").returncode == 0

        client = MlflowClient(uri)
        experiment_id = client.create_experiment("concurrent", artifact_location=str(tmp_path / "artifacts"))
        n_workers, n_metrics = 4, 50
        context = mp.get_context("forkserver")  # fresh processes without importing mlflow four times
        context.set_forkserver_preload(["mlflow"])
        with context.Pool(n_workers) as pool:
            run_ids = pool.starmap(_log_run, [(uri, experiment_id, w, n_metrics) for w in range(n_workers)])

        runs = client.search_runs([experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
        assert sorted(int(r.data.params["worker"]) for r in runs) == list(range(n_workers))
        for run in runs:
            worker = int(run.data.params["worker"])
            history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(n_metrics))
            assert [m.value for m in history] == pytest.approx([worker + s / n_metrics for s in range(n_metrics)])
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert script("status").returncode == 3
    assert script("stop").returncode == 0  # stopping twice is fine
