import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import registry
from bench.job import run_job
from bench.train import NonFiniteLoss
from conftest import micro


def test_few_step_job_logs_everything_and_is_skipped_when_done(store, tmp_path):
    cfg = registry.resolve(micro("wavediff"))
    r = run_job(cfg, experiment="t", progress=False)
    assert r.status == "FINISHED"
    client = MlflowClient(store)
    run = client.get_run(r.run_id)
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    for k in ("fid", "kid_mean", "precision", "recall", "nfe", "gflops_per_sample", "params_generator",
              "params_discriminator", "time_mean_s", "time_median_s", "train_wall_clock_s", "train_images_per_s"):
        assert k in m and m[k] == m[k] and abs(m[k]) < float("inf"), k
    assert m["nfe"] == 4 and m["train_steps"] == 2
    assert tags["variant"] == "wavediff" and tags["dataset"] == "digits" and tags["job_hash"] == registry.job_hash(cfg)
    assert "wavebench-digits" in tags["metric_backbone_fid"] and tags["git_commit"]
    assert params["train.lambda_rec"] == "1.0" and params["model.generator.in_channels"] == "4"
    assert {a.path for a in client.list_artifacts(r.run_id)} >= {"config.json", "eval_summary.json", "samples.png",
                                                                "final.pt"}
    # The final checkpoint rebuilds the sampling network from its own config alone.
    ck = torch.load(client.download_artifacts(r.run_id, "final.pt", str(tmp_path)), weights_only=True)
    system = registry.build(registry.from_dict(ck["config"]))
    system.sampling_network.load_state_dict(ck["state_dict"])
    assert ck["version"] == 1
    summary = json.loads(open(client.download_artifacts(r.run_id, "eval_summary.json", str(tmp_path))).read())
    assert summary["protocol"]["metrics_num_generated"] == 24 and summary["protocol"]["timing_device"] == "cpu"
    # Same job again: skipped; --force: a new run.
    again = run_job(cfg, experiment="t", progress=False)
    assert again.status == "SKIPPED" and again.run_id == r.run_id
    forced = run_job(cfg, experiment="t", progress=False, force=True)
    assert forced.status == "FINISHED" and forced.run_id != r.run_id


def test_interrupted_job_resumes_the_same_run(store):
    cfg = registry.resolve(micro("wddm-unet-l1", **{"train.max_steps": 6, "train.log_every": 1}))
    steps = []
    r = run_job(cfg, experiment="t", progress=False, should_stop=lambda: steps.append(1) or len(steps) > 3)
    assert r.status == "INTERRUPTED" and r.metrics["train_steps"] == 3
    r2 = run_job(cfg, experiment="t", progress=False)
    assert r2.status == "FINISHED" and r2.run_id == r.run_id
    client = MlflowClient(store)
    hist = [m.step for m in client.get_metric_history(r.run_id, "loss")]
    assert hist == [1, 2, 3, 4, 5, 6]  # continuous, no step logged twice
    assert client.get_run(r.run_id).data.tags["resumed_from_step"] == "3"
    assert len(client.search_runs([client.get_experiment_by_name("t").experiment_id])) == 1


def test_non_finite_training_marks_the_run_failed_with_the_reason(store):
    cfg = registry.resolve(micro("ddgan", **{"train.lr_g": 1e25, "train.lr_d": 1e25, "train.max_steps": 30}))
    with pytest.raises(NonFiniteLoss):
        run_job(cfg, experiment="t", progress=False)
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED" and "non-finite loss" in run.data.tags["failure_reason"]


# ddim-20 and ddim-100 are the ddim-10 / ddim-50 code with other step counts (covered by the sampler tests).
@pytest.mark.parametrize("variant", [v for v in registry.VARIANTS
                                     if v not in ("wavediff", "wddm-unet-l1", "ddim-20", "ddim-100")])
def test_every_variant_trains_samples_and_evaluates(store, variant):
    r = run_job(registry.resolve(micro(variant)), experiment="all", progress=False)
    assert r.status == "FINISHED"
    assert r.metrics["nfe"] == (4 if registry.VARIANTS[variant].family == "gan" else
                                int(variant.split("-")[1]) if variant.startswith("ddim-") else 3)
    assert 0 <= r.metrics["precision"] <= 1 and r.metrics["fid"] >= 0 and r.metrics["gflops_per_sample"] > 0
