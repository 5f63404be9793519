"""Metric names that say their unit and scope (README, "Metric names"): runs logged under the old names are still
read (tables, the tuner's objective), and the tuner accepts the old names with a note."""
import time

import pytest
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from bench import tune
from bench.tracking import RENAMED_METRICS, get_experiment_id
from conftest import micro
from reports import query, table


def _old_run(uri: str, experiment: str, variant: str, seconds: float, fid: float) -> str:
    """A FINISHED job run as the suite logged it before the renames (time_*_s)."""
    client = MlflowClient(uri)
    run = client.create_run(get_experiment_id(experiment), tags={"variant": variant, "dataset": "digits",
                                                                  "scale": "tiny", "metric_backbone": "digits-classifier",
                                                                  "device": "cpu"})
    now = int(time.time() * 1000)
    metrics = {"fid": fid, "time_mean_s": seconds, "time_median_s": seconds, "time_std_s": 0.0, "nfe": 4}
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     params=[Param("seed", "0"), Param("eval.metrics.num_samples", "1000"),
                             Param("eval.timing.batch_size", "100")], tags=[RunTag("grid", "old")])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_runs_logged_before_the_renames_fill_the_new_columns(store):
    _old_run(store, "old", "ddgan", 2.0, 30.0)
    _old_run(store, "old", "wavediff", 0.5, 10.0)
    runs = query.load_runs("old")
    assert sorted(runs["sampling_s_per_batch_mean"]) == [0.5, 2.0]
    assert sorted(runs["sampling_s_per_batch_median"]) == [0.5, 2.0]
    rep = table.build_report("cifar10", "old", datasets=["digits"], measured_only=True)
    text = table.render(rep, "md")
    assert "4.0x faster" in text  # the measured speed-up, from the old names
    assert set(RENAMED_METRICS.values()) >= {"sampling_s_per_batch_mean", "train_s_per_step"}


def test_the_tuner_reads_an_old_objective_name_as_the_new_one(tmp_path, capsys):
    job = {k: v for k, v in micro("wavediff").items() if k != "variant"}
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"study": "t", "variant": "wavediff", "base": job, "objective": "time_mean_s",
                                 "pruner": "none", "storage": f"sqlite:///{tmp_path / 'o.db'}"}))
    tc = tune.load_config(str(p))
    assert tc.objective.metric == "sampling_s_per_batch_mean" and tc.direction == "minimize"
    assert "'time_mean_s' is now called 'sampling_s_per_batch_mean'" in capsys.readouterr().err
    assert tune.validate(tc) == []


@pytest.mark.parametrize("metric, sets, problem", [
    ("fd_dinov2", ["paper"], "objective.metric 'fd_dinov2' is a score of the 'dinov2' metric set"),
    ("fid", ["dinov2"], "objective.metric 'fid' is a score of the 'paper' metric set"),
])
def test_the_objective_must_be_a_score_the_jobs_compute(tmp_path, metric, sets, problem):
    job = {k: v for k, v in micro("wavediff", **{"eval.metrics.sets": sets}).items() if k != "variant"}
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"study": "t", "variant": "wavediff", "base": job, "objective": metric,
                                 "pruner": "none", "storage": f"sqlite:///{tmp_path / 'o.db'}"}))
    assert any(problem in q for q in tune.validate(tune.load_config(str(p))))
