import json
import re
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import metrics as M
from bench import registry
from bench.config import ConfigError
from bench.data import dataset_fingerprint, load_dataset
from bench.job import run_job
from bench.schema import FINAL_METRICS, SCORE_KEYS
from bench.train import NonFiniteLoss
from conftest import micro

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = "dinov2-vit-test-14"  # the tests' tiny DINOv2 stand-in (as in test_metrics_dinov2.py)
TINY_ARCH = M.DinoV2Arch(embed_dim=48, depth=2, num_heads=3)
M.register_dinov2_model(TINY, TINY_ARCH)


def readme_metric_names() -> set[str]:
    """The metric names of the README's "Metric names" table (first column, in backticks; `a`, `b` rows list
    several; `loss_*`-style rows are expanded by the caller's set only when named in full)."""
    text = README.read_text()
    section = text[text.index("### Metric names"):]
    section = section[:section.index("\n#", 1)]
    names = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([a-z0-9_/]+)`", line.split("|")[1]))
    return names


def test_few_step_job_logs_everything_and_is_skipped_when_done(store, tmp_path):
    cfg = registry.resolve(micro("wavediff"))
    r = run_job(cfg, experiment="t", progress=False)
    assert r.status == "FINISHED"
    client = MlflowClient(store)
    run = client.get_run(r.run_id)
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    for k in ("fid", "kid_mean", "precision", "recall", "nfe", "gflops_per_sample", "params_generator",
              "params_discriminator", "sampling_s_per_batch_mean", "sampling_s_per_batch_median",
              "sampling_s_per_sample", "train_wall_clock_s", "train_images_per_s"):
        assert k in m and m[k] == m[k] and abs(m[k]) < float("inf"), k
    assert m["nfe"] == 4 and m["train_steps"] == 2
    # Names say unit and scope: seconds per sampler call on eval.timing.batch_size (4) images, and per image.
    assert not {"time_mean_s", "time_median_s"} & set(m)
    assert m["sampling_s_per_sample"] == pytest.approx(m["sampling_s_per_batch_mean"] / 4)
    assert m["sampling_s_per_batch_min"] <= m["sampling_s_per_batch_median"] <= m["sampling_s_per_batch_max"]
    # Every final metric the schema names (what the reports and the tuner read) for this job's metric set and
    # networks was logged under that name.
    other_sets = {k for name, keys in SCORE_KEYS.items() if name != "paper" for k in keys}  # this job: paper only
    final = {k for k in FINAL_METRICS if k not in other_sets and k != "params_denoiser"}
    assert final <= set(m), final - set(m)
    # Every metric the job logged is in the README's table of metric names.
    documented = readme_metric_names()
    assert {k for k in m if not k.startswith("system/")} <= documented, set(m) - documented
    # The training split as an MLflow dataset input: name, split, content hash, size; also the metrics' reference.
    (inp,) = run.inputs.dataset_inputs
    train = load_dataset(cfg.data, "train")
    assert inp.dataset.name == "digits-train" and inp.dataset.digest == dataset_fingerprint(train.images)
    assert json.loads(inp.dataset.profile) == {"num_images": len(train), "split": "train"}
    itags = {t.key: t.value for t in inp.tags}
    assert itags["mlflow.data.context"] == "train" and "reference" in itags["used_for"]
    assert tags["system_metrics"].startswith("CPU")  # psutil is a dependency: MLflow's monitor runs
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
    assert r.metrics["nfe"] == (4 if registry.VARIANTS[variant].family.name == "gan" else
                                int(variant.split("-")[1]) if variant.startswith("ddim-") else 3)
    assert 0 <= r.metrics["precision"] <= 1 and r.metrics["fid"] >= 0 and r.metrics["gflops_per_sample"] > 0


def test_periodic_fid_is_logged_and_its_time_is_not_training_time(store):
    """FID every step, next to the training time so far and the seconds the evaluation took: the training time
    grows by each step's time only. Between two evaluations the log timestamps advance by at least the step and the
    next evaluation; were the evaluation counted as training, the training time alone would advance by about as
    much."""
    cfg = registry.resolve(micro("wavediff", **{"train.max_steps": 4, "eval.every_steps": 1,
                                                "eval.every_num_samples": 24}))
    r = run_job(cfg, experiment="t", progress=False)
    client = MlflowClient(store)

    def hist(key):
        return {m.step: m for m in client.get_metric_history(r.run_id, key)}

    fid, wall, took = hist("fid_intermediate"), hist("train_wall_clock_s"), hist("intermediate_eval_s")
    assert sorted(fid) == sorted(took) == [1, 2, 3, 4]
    assert all(m.value > 0 for m in took.values())
    for k in (2, 3, 4):
        trained = wall[k].value - wall[k - 1].value
        elapsed = (fid[k].timestamp - fid[k - 1].timestamp) / 1000
        assert trained + took[k].value <= elapsed + 0.003, (k, trained, took[k].value, elapsed)
    assert client.get_run(r.run_id).data.metrics["train_wall_clock_s"] == wall[4].value


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = M.DinoV2ViT(TINY_ARCH)
    path = tmp_path_factory.mktemp("dinov2") / f"{TINY}.pth"
    torch.save(net.state_dict(), path)
    return path


def test_paper_and_dinov2_sets_log_every_score_with_its_backbone(store, tiny_dinov2, tmp_path):
    sets = {"eval.metrics.dinov2_model": TINY, "eval.metrics.dinov2_weights": str(tiny_dinov2),
            "eval.metrics.reference_split": "test", "eval.every_steps": 2, "eval.every_num_samples": 24}
    cfg = registry.resolve(micro("wavediff", **{"eval.metrics.sets": ["paper", "dinov2"], **sets}))
    r = run_job(cfg, experiment="t", progress=False)
    client = MlflowClient(store)
    run = client.get_run(r.run_id)
    m, tags = run.data.metrics, run.data.tags
    for key in M.SCORE_KEYS["paper"] + M.SCORE_KEYS["dinov2"]:
        assert key in m and abs(m[key]) < float("inf"), key
    assert [x.step for x in client.get_metric_history(r.run_id, "fid_intermediate")] == [2]
    assert not client.get_metric_history(r.run_id, "fd_dinov2_intermediate")  # the paper set is on: FID
    summary = json.loads(Path(client.download_artifacts(r.run_id, "eval_summary.json", str(tmp_path))).read_text())
    protocol = summary["protocol"]
    assert "wavebench-digits" in protocol["metrics_backbone_fid"] and "wavebench-digits" in protocol[
        "metrics_backbone_prc"]
    assert protocol["metrics_backbone_dinov2"].startswith(TINY) and protocol["metrics_dinov2_k"] == 5
    assert not set(M.SCORE_KEYS["dinov2"]) & set(protocol)  # scores are metrics, never protocol
    assert tags["metric_backbone_dinov2"] == protocol["metrics_backbone_dinov2"]
    assert tags["metric_backbone_prc"] == protocol["metrics_backbone_prc"] and tags["metric_sets"] == "paper,dinov2"
    # The reference split is not the training split: both are dataset inputs, each with its role.
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} for d in run.inputs.dataset_inputs}
    assert inputs["digits-train"]["mlflow.data.context"] == "train"
    assert inputs["digits-test"]["mlflow.data.context"] == "evaluation"

    # The dinov2 set alone: no FID anywhere, FD-DINOv2 during training (another seed: a job of the same training
    # would reuse the finished checkpoint and train no step).
    cfg = registry.resolve(micro("wavediff", seed=1, **{"eval.metrics.sets": ["dinov2"], **sets}))
    r = run_job(cfg, experiment="t", progress=False)
    m = client.get_run(r.run_id).data.metrics
    assert "fid" not in m and "precision" not in m and m["fd_dinov2"] >= 0
    assert [x.step for x in client.get_metric_history(r.run_id, "fd_dinov2_intermediate")] == [2]
    assert not client.get_metric_history(r.run_id, "fid_intermediate")


def test_a_job_that_cannot_evaluate_never_trains(store, tmp_path, monkeypatch):
    """No weights for its metric backbone (the tiny DINOv2 has no download): the job fails in seconds, before
    training, its run FAILED with the file and the key to set."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = registry.resolve(micro("wavediff", **{"eval.metrics.sets": ["dinov2"], "eval.metrics.dinov2_model": TINY,
                                                "train.max_steps": 1000}))
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"(?s)not training.*{TINY}.pth.*eval.metrics.dinov2_weights"):
        run_job(cfg, experiment="t", progress=False)
    assert time.perf_counter() - t0 < 30
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FAILED" and "eval.metrics.dinov2_weights" in run.data.tags["failure_reason"]
    assert not client.get_metric_history(run.info.run_id, "loss_d")  # not one training step
    # eval.quality: false computes no metric, so it needs no weights: the same job trains.
    quick = registry.resolve(micro("wavediff", **{"eval.metrics.sets": ["dinov2"], "eval.metrics.dinov2_model": TINY,
                                                  "eval.quality": False}))
    assert registry.evaluation_prerequisites(quick) == []
    assert run_job(quick, experiment="t", progress=False).status == "FINISHED"
