"""The lambda_rec tuner: real Optuna SQLite storage, real MLflow store, micro WaveDiff jobs through the local
submitit executor (subprocesses)."""
import os
import signal
import struct
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from bench import tune, tune_study
from conftest import micro, wait_s

# Micro jobs: 2 training steps, FID every step on 8 samples, a 2-step posterior chain, one timing repeat.
TUNE_MICRO = {"train.max_steps": 2, "train.batch_size": 8, "eval.every_steps": 1, "eval.every_num_samples": 8,
              "eval.metrics.num_samples": 8, "eval.sample_batch_size": 8, "eval.metrics.kid_subsets": 2,
              "eval.timing.repeats": 1, "eval.timing.batch_size": 1, "eval.grid_images": 1,
              "model.schedule.num_timesteps": 2}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The trial processes inherit this: two OpenMP threads on a shared 2-core machine spin-wait badly."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _config(tmp_path: Path, study: str, base: dict | None = None, **over) -> Path:
    job = {k: v for k, v in micro("wavediff", **TUNE_MICRO).items() if k != "variant"}
    job.update(base or {})
    cfg = {"study": study, "experiment": "tune-test", "variant": "wavediff", "base": job,
           "lambda_rec": {"low": 0.01, "high": 10.0}, "n_trials": 3,
           "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2}, "pruner": "none",
           "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "executor": {"name": "local", "max_parallel": 1,
                                                                          "timeout_min": 10}, "poll_s": 0.3}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    p = tmp_path / f"{study}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _runs(uri: str, kind: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tune-test")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == kind] if exp else []


def _study(tmp_path: Path, name: str, storage: str | None = None) -> optuna.Study:
    url = storage or f"sqlite:///{tmp_path / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=tune_study.make_storage(url))


def _is_png(path: Path) -> bool:
    head = path.read_bytes()[:24]
    w, h = struct.unpack(">II", head[16:24])
    return head[:8] == b"\x89PNG\r\n\x1a\n" and w > 100 and h > 100


def test_study_runs_records_and_resumes(store, tmp_path, capsys):
    p = _config(tmp_path, "s3", lambda_rec={"include_zero": True}, executor={"max_parallel": 3})
    assert tune.main(["--config", str(p)]) == 0

    study = _study(tmp_path, "s3")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    lams = [t.user_attrs["lambda_rec"] for t in study.trials]
    assert lams[0] == 0.0 and all(0.01 <= v <= 10.0 for v in lams[1:])  # the queued zero trial runs first
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # fid_intermediate, both steps

    client = MlflowClient(store)
    [parent] = _runs(store, "study")
    kids = _runs(store, "trial")
    assert len(kids) == 3 and all(k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    by_number = {int(k.data.tags["trial_number"]): k for k in kids}
    for t in study.trials:
        k = by_number[t.number]
        assert k.info.status == "FINISHED" and k.data.tags["trial_state"] == "COMPLETE"
        assert float(k.data.params["train.lambda_rec"]) == pytest.approx(t.user_attrs["lambda_rec"])
        assert k.data.metrics["fid"] == pytest.approx(t.value)
        assert [m.step for m in client.get_metric_history(k.info.run_id, "fid_intermediate")] == [1, 2]
    m = parent.data.metrics
    assert m["best_value"] == pytest.approx(study.best_value)
    assert m["best_lambda_rec"] == pytest.approx(study.best_trial.user_attrs["lambda_rec"])
    assert (m["n_complete"], m["n_pruned"], m["n_fail"]) == (3, 0, 0)
    assert parent.data.tags["study"] == "s3" and parent.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_history.png", "lambda_rec_vs_objective.png", "trials.csv"} <= arts
    for name in ("optimization_history.png", "lambda_rec_vs_objective.png"):
        assert _is_png(Path(client.download_artifacts(parent.info.run_id, name, str(tmp_path))))

    # The same command with n_trials 4 runs exactly one more trial, under a second parent run.
    assert tune.main(["--config", str(p), "--n-trials", "4"]) == 0
    study = _study(tmp_path, "s3")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    kids = _runs(store, "trial")
    parents = _runs(store, "study")
    assert len(kids) == 4 and len(parents) == 2
    [new] = [k for k in kids if k.data.tags["trial_number"] == "3"]
    second = [q for q in parents if q.info.run_id != parent.info.run_id][0]
    assert new.data.tags["mlflow.parentRunId"] == second.info.run_id
    assert second.data.metrics["n_complete"] == 4
    # Nothing left to run: a third invocation submits nothing.
    assert tune.main(["--config", str(p), "--n-trials", "4"]) == 0
    assert len(_study(tmp_path, "s3").trials) == 4 and len(_runs(store, "trial")) == 4
    assert "running 0 more" in capsys.readouterr().out


@pytest.mark.parametrize("over, message", [
    ({"lambda_rec": {"low": 1.0, "high": 1.0}}, "empty range"),
    ({"lambda_rec": {"low": -0.1, "high": 1.0}}, "low > 0 and high > 0"),
    ({"lambda_rec": {"low": 0.0, "high": 1.0}}, "low > 0 and high > 0"),
    ({"objective": {"metric": "fdi"}}, "objective.metric 'fdi' is not a metric the jobs log; valid: fid, kid_mean"),
    ({"variant": "wavedif"}, "variant 'wavedif' cannot be tuned here; valid: wavediff, wavediff-wg"),
    ({"variant": "ddpm"}, "variant 'ddpm' cannot be tuned here"),
    ({"base": {"train": {"max_step": 5}}}, "unknown key 'train.max_step'"),
    ({"base": {"train": {"lambda_rec": 1.0}}}, "base.train.lambda_rec is the tuned parameter"),
    ({"pruner": "median", "base": {"eval.every_steps": 0}}, "set base eval.every_steps > 0"),
    ({"pruner": {"name": "hyperband"}}, "pruner.name 'hyperband'; valid: median, threshold, none"),
    ({"objective": {"metric": "precision"}, "pruner": "median"}, "pruner.name median compares fid_intermediate"),
    ({"n_trials": 0}, "n_trials must be >= 1"),
    ({"storage": "/nonexistent/dir/journal.log"}, "directory /nonexistent/dir does not exist"),
])
def test_bad_config_fails_before_anything_is_created(store, tmp_path, capsys, over, message):
    p = _config(tmp_path, "bad", **over)
    assert tune.main(["--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "optuna.db").exists()   # no study
    assert not (tmp_path / "mlflow.db").exists()   # no MLflow run (not even the store)
    assert not (tmp_path / "runs").exists()        # no job submitted


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    p = _config(tmp_path, "bad2", lambda_rec={"low": 5.0, "high": 1.0}, objective={"metric": "nope"},
                sampler={"name": "grid"})
    assert tune.main(["--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "empty range" in err and "'nope'" in err and "sampler.name 'grid'" in err


def test_existing_study_with_another_definition_is_refused(store, tmp_path, capsys):
    p = _config(tmp_path, "def1", n_trials=1)
    assert tune.main(["--config", str(p), "--dry-run"]) == 0 and not (tmp_path / "optuna.db").exists()
    tune.open_study(tune.load_config(str(p)))  # creates the study only
    p2 = _config(tmp_path, "def1", n_trials=1, lambda_rec={"low": 0.1})
    assert tune.main(["--config", str(p2)]) == 2
    assert "was created with another lambda_rec" in capsys.readouterr().err
    assert len(_study(tmp_path, "def1").trials) == 0 and not _runs(store, "study")


def test_threshold_pruner_prunes_and_cancels_the_job(store, tmp_path):
    # Any FID is > 0: the first fid_intermediate (step 1) prunes; 40 steps would take far longer than that.
    p = _config(tmp_path, "prune", base={"train.max_steps": 40}, n_trials=1,
                pruner={"name": "threshold", "upper": 0.0})
    assert tune.main(["--config", str(p)]) == 1  # no COMPLETE trial: no best value
    [t] = _study(tmp_path, "prune").trials
    assert t.state.name == "PRUNED" and min(t.intermediate_values) == 1
    [kid] = _runs(store, "trial")
    assert kid.info.status == "KILLED"
    assert kid.data.tags["pruned"] == "true" and kid.data.tags["trial_state"] == "PRUNED"
    assert "fid" not in kid.data.metrics  # stopped during training: never evaluated
    steps = [m.step for m in MlflowClient(store).get_metric_history(kid.info.run_id, "fid_intermediate")]
    assert steps and max(steps) < 40
    [parent] = _runs(store, "study")
    assert parent.data.metrics["n_pruned"] == 1 and "best_value" not in parent.data.metrics


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_dying_job_fails_its_trial_and_the_study_goes_on(store, tmp_path):
    """Both trials' jobs are killed (SIGKILL, as by the OOM killer) once their MLflow run exists (400 training
    steps: they are still training then)."""
    p = _config(tmp_path, "die", base={"train.max_steps": 400}, n_trials=2)
    rc: dict = {}
    th = threading.Thread(target=lambda: rc.update(rc=tune.main(["--config", str(p)])))
    th.start()
    killed: set[int] = set()
    deadline = time.monotonic() + wait_s(120)
    while th.is_alive() and time.monotonic() < deadline:
        if any(k.info.status == "RUNNING" for k in _runs(store, "trial")):
            for pkl in (tmp_path / "runs" / "submitit").glob("tune-die-*/*_submitted.pkl"):
                controller = int(pkl.name.split("_")[0])  # a local job's id is its controller's pid
                for pid in _children(controller):
                    if pid not in killed:
                        os.kill(pid, signal.SIGKILL)
                        killed.add(pid)
        time.sleep(0.2)
    th.join(timeout=wait_s(60))
    assert not th.is_alive() and rc["rc"] == 1
    trials = _study(tmp_path, "die").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"] and len(killed) == 2
    assert all("the job died" in t.user_attrs["fail_reason"] for t in trials)
    kids = _runs(store, "trial")
    assert len(kids) == 2 and all(k.info.status == "FAILED" and k.data.tags["trial_state"] == "FAIL" for k in kids)
    [parent] = _runs(store, "study")
    assert parent.data.metrics["n_fail"] == 2


def test_a_trial_left_running_by_a_stopped_driver_runs_again(store, tmp_path, capsys):
    journal = str(tmp_path / "journal.log")  # the cluster storage: a journal file
    p = _config(tmp_path, "stale", n_trials=1, storage=journal)
    tc = tune.load_config(str(p))
    study = tune.open_study(tc)
    stale = study.ask()  # what a driver killed mid-trial leaves behind: a RUNNING trial
    lam = tune.suggest_lambda(stale, tc.lambda_rec)
    assert tune.main(["--config", str(p)]) == 0
    assert "left RUNNING by an earlier driver" in capsys.readouterr().out
    study = _study(tmp_path, "stale", journal)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]  # the interrupted one is not counted
    retry = study.trials[1]
    assert retry.params == {"lambda_rec": lam} and retry.user_attrs["retry_of"] == 0
    assert study.user_attrs["interrupted_trials"] == [0]
    assert len(_runs(store, "trial")) == 1


@pytest.mark.slurm
def test_pruned_trial_is_stopped_on_slurm(slurm_up, store, tmp_path):
    p = _config(tmp_path, "sprune", base={"train.max_steps": 40}, n_trials=1,
                pruner={"name": "threshold", "upper": 0.0}, executor={"name": "slurm"},
                cluster=str(Path(__file__).resolve().parents[1] / "slurm/profiles/local.yaml"))
    assert tune.main(["--config", str(p)]) == 1
    [t] = _study(tmp_path, "sprune").trials
    assert t.state.name == "PRUNED"
    [kid] = _runs(store, "trial")
    assert kid.info.status == "KILLED" and kid.data.tags["pruned"] == "true" and kid.data.tags["slurm_job_id"]
    assert "fid" not in kid.data.metrics


def test_ctrl_c_stops_in_order_and_queues_the_trial_again(store, tmp_path, capsys):
    p = _config(tmp_path, "intr", base={"train.max_steps": 400}, n_trials=2)
    state = {"done": False}

    def interrupt_when_training():
        deadline = time.monotonic() + 90
        while not state["done"] and time.monotonic() < deadline:
            if any(k.info.status == "RUNNING" for k in _runs(store, "trial")):
                os.kill(os.getpid(), signal.SIGINT)  # tune() turns it into an orderly stop
                return
            time.sleep(0.2)

    th = threading.Thread(target=interrupt_when_training)
    th.start()
    try:
        rc = tune.main(["--config", str(p)])
    finally:
        state["done"] = True
        th.join()
    assert rc == 130 and "queued again" in capsys.readouterr().out
    study = _study(tmp_path, "intr")
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]  # the retry waits for the next run
    assert study.user_attrs["interrupted_trials"] == [0] and study.trials[1].user_attrs["retry_of"] == 0
    [kid] = _runs(store, "trial")
    assert kid.info.status == "KILLED" and kid.data.tags["interrupted"] == "true"
    [parent] = _runs(store, "study")
    assert parent.info.status == "KILLED" and parent.data.metrics["n_interrupted"] == 1
