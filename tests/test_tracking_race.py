"""The jobs of one grid write to one MLflow store at the same instant: none may be lost to a race.

Eight job processes, released together by a barrier, each do what a job does to the store at its start and end
(tests/tracking_race.py), five times on fresh stores: against a new SQLite file per round, and against a real
``mlflow server`` (two workers, started by the project's script) with a new experiment per round. On the tracking
code before retried writes, both lost jobs (``UNIQUE constraint failed: datasets.experiment_id, datasets.name,
datasets.digest``: the data set's row is looked up, then inserted, by every job).
"""
import json
import subprocess
import sys
from pathlib import Path

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "tracking_race.py"
SERVER = ROOT / "slurm" / "mlflow-server.sh"
JOBS, ROUNDS = 8, 5


def race(uri: str, workdir: Path) -> dict:
    out = subprocess.run([sys.executable, str(DRIVER), "--uri", uri, "--workdir", str(workdir), "--jobs", str(JOBS),
                          "--rounds", str(ROUNDS)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    assert lines, f"the driver printed nothing (exit {out.returncode}):\n{out.stderr[-3000:]}"
    result = json.loads(lines[-1])
    assert len(result["rounds"]) == ROUNDS
    return result


def assert_no_job_lost(result: dict) -> None:
    for k, r in enumerate(result["rounds"]):
        assert not r["failures"], f"round {k}: {len(r['failures'])} of {JOBS} jobs failed: {r['failures'][0]}"
        assert not r["problems"], f"round {k}: {r['problems']}"
        assert r["runs_ok"] == JOBS
    assert result["failures"] == 0


def test_eight_jobs_at_once_on_fresh_sqlite_stores(tmp_path):
    assert_no_job_lost(race(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", tmp_path / "runs"))


def test_eight_jobs_at_once_through_an_mlflow_server(tmp_path):
    port = free_port()
    options = ["--port", str(port), "--run-dir", str(tmp_path / "server"), "--workers", "2",
               "--backend", f"sqlite:///{tmp_path}/server.db", "--artifacts", str(tmp_path / "artifacts")]
    started = subprocess.run(["bash", str(SERVER), "start", *options], capture_output=True, text=True, timeout=200,
                             cwd=ROOT)
    assert started.returncode == 0, started.stderr
    try:
        assert_no_job_lost(race(f"http://127.0.0.1:{port}", tmp_path / "runs"))
    finally:
        subprocess.run(["bash", str(SERVER), "stop", *options], capture_output=True, timeout=60, cwd=ROOT)
