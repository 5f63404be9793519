"""Devices and job status, the parts a CPU machine can check: GPUs reach the local jobs they belong to, a job
that cannot get the device it asks for fails before anything runs, and the runner and MLflow agree on the status
of every job (the runner's results are matched to jobs by their hash, which must survive the trip to the job's
process). The same paths on a real GPU are in tests/test_cuda.py (marker ``cuda``)."""
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from bench import registry, run, submit
from bench.config import to_dict
from bench.evaluate import resolve_device
from bench.tracking import Tracker
from conftest import micro, wait_s


def _grid(tmp_path, variants, name="dev", job=None, **top):
    job = job or {k: v for k, v in micro(variants[0]).items() if k != "variant"}
    g = {"name": name, "experiment": name, "defaults": job, "axes": {"variant": variants},
         "executor": {"name": "local", "max_parallel": 1, "timeout_min": 10}, **top}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def _children(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def test_every_config_hashes_the_same_after_its_json_round_trip():
    """The runner knows a job by its hash, the job's process recomputes it from the JSON form: paper tables hold
    ints in float fields (max_epochs=1800), which once hashed differently after the trip."""
    checked = 0
    for variant in registry.VARIANTS:
        for dataset in registry.DATASET_PRESETS:
            for scale in registry.SCALES:
                try:
                    cfg = registry.resolve({"variant": variant, "dataset": dataset, "scale": scale}, check_paths=False)
                except Exception:  # no paper configuration for this preset
                    continue
                back = registry.from_dict(to_dict(cfg))
                assert registry.job_hash(back) == registry.job_hash(cfg), (variant, dataset, scale)
                assert registry.train_hash(back) == registry.train_hash(cfg), (variant, dataset, scale)
                checked += 1
    assert checked > 60
    cfg = registry.resolve({"variant": "wavediff", "dataset": "digits", "scale": "paper"})
    assert isinstance(cfg.train.max_epochs, float) and cfg.train.max_epochs == 1800


def test_local_jobs_get_their_own_gpus_and_report_the_status_mlflow_has(store, tmp_path, capsys, monkeypatch):
    """One grid at paper scale (ints in float fields: the hash must survive the trip to the job), two GPUs named
    by CUDA_VISIBLE_DEVICES (no machine has devices 97 and 99 behind them, a GPU machine included, so the jobs
    still train on the CPU and the runner warns that `auto` fell back although GPUs were shown): the two auto jobs
    running at once get one GPU each, the cpu job sees none; the runner's results are MLflow's."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "97,99")
    job = {k: v for k, v in micro("wavediff", scale="paper", device="auto").items() if k != "variant"}
    p = _grid(tmp_path, ["wavediff"], name="gpus", job=job, axes={"seed": [0]},
              jobs=[{"variant": "wavediff"}, {"variant": "wavediff-no-rec"}, {"variant": "ddgan", "device": "cpu"}],
              executor={"name": "local", "max_parallel": 2, "timeout_min": 10})
    assert run.main(["--grid", str(p), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "this machine shows 2 GPU(s): CUDA_VISIBLE_DEVICES='97,99'" in out and "no result" not in out
    kids = {k.data.tags["variant"]: k for k in _children(store, "gpus")}
    seen = {v: k.data.tags["cuda_visible_devices"] for v, k in kids.items()}
    assert sorted([seen["wavediff"], seen["wavediff-no-rec"]]) == ["97", "99"]  # one each, never shared
    assert seen["ddgan"] == ""  # a cpu job sees no GPU
    assert "[running] wavediff/digits/s0 on GPU 97" in out and "[running] ddgan/digits/s0\n" in out
    assert out.count("ran on the CPU (device auto) although this machine shows 2 GPU(s)") == 2
    for r in yaml.safe_load((tmp_path / "r.json").read_text()):
        kid = kids[r["variant"]]
        assert r["status"] == kid.info.status == "FINISHED" and r["run_id"] == kid.info.run_id
        assert r["job_hash"] == kid.data.tags["job_hash"] and r["metrics"]["fid"] == kid.data.metrics["fid"]
        assert r["device"] == "cpu" == kid.data.tags["device"]


def test_the_gpu_pool_shares_out_waits_and_explains(tmp_path):
    import submitit

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    pool = submit.LocalGpus(["7", "9"])
    auto = registry.resolve(micro("wavediff", device="auto"))
    two = registry.resolve(micro("wavediff", device="auto", processes=2))
    tasks = [submit.JobTask([], "e", None, {}) for _ in range(4)]
    assert pool.assign(0, tasks[0], auto, ex) and tasks[0].env["CUDA_VISIBLE_DEVICES"] == "7"
    assert not pool.available(two) and not pool.assign(1, tasks[1], two, ex)  # waits: one GPU is busy
    pool.release(0)
    assert pool.assign(1, tasks[1], two, ex) and tasks[1].env["CUDA_VISIBLE_DEVICES"] == "7,9"  # rank r: r-th
    pinned = registry.resolve(micro("wavediff", device="cuda:1"))
    assert pool.assign(2, tasks[2], pinned, ex) and tasks[2].env["CUDA_VISIBLE_DEVICES"] == "7,9"  # no reservation
    assert pool.assign(3, tasks[3], registry.resolve(micro("wavediff")), ex)  # micro jobs are device cpu
    assert tasks[3].env["CUDA_VISIBLE_DEVICES"] == ""
    four = registry.resolve(micro("wavediff", device="auto", processes=4))
    assert pool.wants(four) == 0 and "processes=4 needs 4 GPUs, this machine shows 2" in pool.fallback_reason(four)
    assert submit.LocalGpus([]).fallback_reason(four) is None


def test_device_cuda_without_a_gpu_fails_before_anything_runs(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU for this process, on a GPU machine too
    job = {k: v for k, v in micro("wavediff", device="cuda").items() if k != "variant"}
    p = _grid(tmp_path, ["wavediff"], name="nocuda", job=job)
    assert run.main(["--grid", str(p)]) == 2
    err = capsys.readouterr().err
    assert "job 0 (wavediff, device=cuda): needs 1 GPU(s), this machine shows 0 GPU(s)" in err
    assert "use device: auto or cpu" in err
    assert MlflowClient(store).get_experiment_by_name("nocuda") is None  # nothing logged
    # On SLURM the cluster profile decides: no gpus_per_node, no GPU.
    cfg = registry.resolve(micro("wavediff", device="cuda"))
    (msg,) = submit.device_problems([cfg], "slurm", {"partition": "debug"}, [])
    assert "the cluster profile gives jobs no GPU; set gpus_per_node" in msg
    assert submit.device_problems([cfg], "slurm", {"gpus_per_node": 1}, []) == []


def test_resolve_device_says_why_cuda_is_missing(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES is empty in this process: the executor gave"):
        resolve_device("cuda")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda is None:
        with pytest.raises(RuntimeError, match="CPU-only build"):
            resolve_device("cuda")
    elif not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="finds no usable GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def _task_pids(folder_root: Path) -> list[int]:
    """Processes of submitit local tasks working under ``folder_root``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and any(str(folder_root).encode() in c for c in cmd):
            pids.append(int(proc.name))
    return pids


def test_a_killed_job_leaves_no_running_run(store, tmp_path, capsys):
    """A job's process that dies mid-training (out of memory, killed) ends FAILED in the runner's summary AND in
    MLflow, with the reason, instead of a run left RUNNING forever."""
    job = {k: v for k, v in micro("wavediff", **{"train.max_steps": 100_000, "train.log_every": 1}).items()
           if k != "variant"}
    p = _grid(tmp_path, ["wavediff"], name="killed", job=job)
    grid = run.load_grid(str(p))
    configs = run.validate(grid)
    out = {}
    th = threading.Thread(target=lambda: out.update(res=run.run_grid(grid, configs, executor="local", max_parallel=1,
                                                                      cluster={}, poll_s=0.5)))
    th.start()
    client = MlflowClient(store)
    deadline = time.monotonic() + wait_s(60)
    killed = False
    while time.monotonic() < deadline and not killed:
        kids = _children(store, "killed") if client.get_experiment_by_name("killed") else []
        if kids and len(client.get_metric_history(kids[0].info.run_id, "loss_g")) >= 2:
            for pid in _task_pids(Path(os.environ["WAVEBENCH_RUNS"])):
                os.kill(pid, signal.SIGKILL)
                killed = True
        time.sleep(0.3)
    th.join(timeout=wait_s(40))
    assert killed and not th.is_alive()
    results, _ = out["res"]
    (kid,) = _children(store, "killed")
    assert results[0]["status"] == "FAILED" and results[0]["run_id"] == kid.info.run_id
    assert kid.info.status == "FAILED" and "the job's process ended" in kid.data.tags["failure_reason"]


def test_a_finished_run_whose_result_was_lost_is_reported_finished(store):
    cfg = registry.resolve(micro("wavediff"))
    h = registry.job_hash(cfg)
    t = Tracker.start("lost", run_name="r", tags={"job_hash": h})
    t.log_metrics({"fid": 12.5}, step=2)
    t.end("FINISHED")
    results = [{"job_hash": h, "status": "FAILED", "run_id": None, "metrics": {}, "reason": "lost"}]
    notes = []
    submit.reconcile("lost", results, notes.append, since_ms=0)
    assert results[0]["status"] == "FINISHED" and results[0]["run_id"] == t.run_id
    assert results[0]["metrics"]["fid"] == 12.5 and "MLflow run" in notes[0]
    assert MlflowClient(store).get_run(t.run_id).info.status == "FINISHED"
