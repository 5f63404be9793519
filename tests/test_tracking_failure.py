"""A store that fails during training never costs the training: the job keeps a checkpoint and the metric values
it could not write, ends with an error naming the store and the write, and the next attempt resumes from the
checkpoint and writes what was missing, each step once. Against a real ``mlflow server`` that is stopped in the
middle of the job and started again on the same backend."""
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench import registry
from bench.job import run_job
from bench.tracking import TrackingError
from conftest import free_port, micro

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "slurm" / "mlflow-server.sh"


def test_store_lost_mid_training_keeps_the_training_and_the_rerun_fills_in(tmp_path, monkeypatch):
    port = free_port()
    options = ["--port", str(port), "--run-dir", str(tmp_path / "server"), "--workers", "1",
               "--backend", f"sqlite:///{tmp_path}/server.db", "--artifacts", str(tmp_path / "artifacts")]

    def server(command: str) -> None:
        done = subprocess.run(["bash", str(SERVER), command, *options], capture_output=True, text=True,
                              timeout=200, cwd=ROOT)
        assert done.returncode == 0, done.stderr

    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("WAVEBENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server fails the write at once
    monkeypatch.setenv("WAVEBENCH_SYSTEM_METRICS", "0")
    cfg = registry.resolve(micro("wavediff", **{"train.max_steps": 12, "train.log_every": 1,
                                                "train.checkpoint_every": 4, "eval.quality": False}))
    workdir = tmp_path / "runs" / registry.train_hash(cfg)
    server("start")
    try:
        calls = []

        def server_dies_after_step_6() -> bool:  # called before every step; after step 6 the server is gone
            calls.append(1)
            if len(calls) == 7:
                server("stop")
            return False

        with pytest.raises(TrackingError) as failed:
            run_job(cfg, experiment="t", progress=False, should_stop=server_dies_after_step_6)
        message = str(failed.value)
        assert message.startswith(f"MLflow store {uri}: logging ") and "metric values" in message
        assert "training kept: checkpoint ckpt-000000008.pt" in message and "run the grid again" in message
        assert sorted(p.name for p in workdir.glob("ckpt-*.pt")) == ["ckpt-000000004.pt", "ckpt-000000008.pt"]
        pending = list(workdir.glob("pending-*.jsonl"))
        assert len(pending) == 1 and pending[0].read_text().count("\n") > 0

        server("start")  # the same backend: the run of the first attempt is there, RUNNING
        r = run_job(cfg, experiment="t", progress=False)
        assert r.status == "FINISHED" and r.metrics["train_steps"] == 12
        assert not list(workdir.glob("pending-*.jsonl"))
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
        assert [x.info.run_id for x in runs] == [r.run_id]  # one run for the job, continued
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags["resumed_from_step"] == "8"
        for key in ("train_s_per_step", "epoch"):  # steps 7 and 8 came from the kept file, 9.. from the re-run
            steps = sorted(m.step for m in client.get_metric_history(r.run_id, key))
            assert steps == list(range(1, 13)), key
    finally:
        subprocess.run(["bash", str(SERVER), "stop", *options], capture_output=True, timeout=60, cwd=ROOT)
