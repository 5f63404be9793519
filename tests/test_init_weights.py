"""Jobs that start from given weights (``init.weights``) and train zero steps: the evaluation of the papers' public
checkpoints through the runner. Weights here are a micro network's, written in the converter's checkpoint format
(``kind: public-weights``); tests/test_weights.py converts the public layouts themselves."""
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from bench import registry, run
from bench.config import ConfigError, to_dict
from bench.job import load_init_weights, run_job
from bench.train import CHECKPOINT_VERSION
from conftest import fake_datasets, micro, wait_s

FAKE_SHA = hashlib.sha256(b"a public file").hexdigest()


def _public_checkpoint(path, variant="wavediff", seed=7, **extra):
    """A converted checkpoint as ``python -m bench.weights convert`` writes it, for a micro ``variant`` network with
    weights of its own (seed ``seed``, not the job's)."""
    cfg = registry.resolve(micro(variant, **extra))
    torch.manual_seed(seed)
    system = registry.build(cfg)
    with torch.no_grad():
        for p in system.sampling_network.parameters():
            p.add_(0.01 * torch.randn_like(p))  # nothing equals a fresh initialisation
    torch.save({"version": CHECKPOINT_VERSION, "kind": "public-weights", "config": to_dict(cfg),
                "state_dict": system.sampling_network.state_dict(),
                "source": {"name": f"{variant}-test", "file": "netG_test.pth", "sha256": FAKE_SHA,
                           "published_fid": 4.01, "where": "a test", "licence": "test", "variant": variant,
                           "dataset": "digits"}}, path)
    return system.sampling_network.state_dict()


def test_default_configs_hash_as_before_the_init_and_sample_format_keys():
    cfg = registry.resolve({"variant": "wavediff", "dataset": "digits", "scale": "tiny"})
    assert cfg.init.weights == "" and cfg.eval.metrics.sample_format == "uint8"
    assert (registry.job_hash(cfg), registry.train_hash(cfg)) == ("0d0eedd7a0cd86b4", "c50331a7658f7c17")


def test_init_weights_that_cannot_be_read_fail_at_resolve_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WAVEBENCH_WEIGHTS", raising=False)
    with pytest.raises(ConfigError) as e:
        registry.resolve(micro("wavediff", **{"init.weights": "$WAVEBENCH_WEIGHTS/wavediff-cifar10.pt"}))
    assert "init.weights" in str(e.value) and "WAVEBENCH_WEIGHTS" in str(e.value) and "not set" in str(e.value)
    monkeypatch.setenv("WAVEBENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        registry.resolve(micro("wavediff", **{"init.weights": "$WAVEBENCH_WEIGHTS/wavediff-cifar10.pt"}))
    assert f"{tmp_path}/wavediff-cifar10.pt is not a file" in str(e.value) and "bench.weights convert" in str(e.value)
    # The weights are part of what is trained and of the job.
    _public_checkpoint(tmp_path / "w.pt")
    a = registry.resolve(micro("wavediff", **{"init.weights": "$WAVEBENCH_WEIGHTS/w.pt"}))
    b = registry.resolve(micro("wavediff"))
    assert registry.train_hash(a) != registry.train_hash(b) and registry.job_hash(a) != registry.job_hash(b)


def test_weights_of_another_model_config_or_data_set_are_refused_naming_the_keys(tmp_path):
    _public_checkpoint(tmp_path / "w.pt")
    cfg = registry.resolve(micro("wavediff", **{"init.weights": str(tmp_path / "w.pt"),
                                                "model.generator.nf": 8}))
    with pytest.raises(ConfigError) as e:
        load_init_weights(cfg, registry.build(cfg))
    assert "model.generator.nf (16 there, 8 here)" in str(e.value)
    cfg = registry.resolve(micro("ddpm", **{"init.weights": str(tmp_path / "w.pt")}))
    with pytest.raises(ConfigError) as e:
        load_init_weights(cfg, registry.build(cfg))
    assert "holds a 'wavediff' network, the job is 'ddpm'" in str(e.value)
    torch.save({"state_dict": {}}, tmp_path / "bad.pt")
    cfg = registry.resolve(micro("wavediff", **{"init.weights": str(tmp_path / "bad.pt")}))
    with pytest.raises(ConfigError, match="not a wavebench checkpoint"):
        load_init_weights(cfg, registry.build(cfg))


def test_init_weights_fill_the_sampling_network_and_its_training_copy(tmp_path):
    sd = _public_checkpoint(tmp_path / "w.pt")
    cfg = registry.resolve(micro("wavediff", **{"init.weights": str(tmp_path / "w.pt")}))
    system = registry.build(cfg)
    tags = load_init_weights(cfg, system)
    for net in (system.G, system.G_ema):
        assert all(torch.equal(v, sd[k]) for k, v in net.state_dict().items())
    assert tags["weights_source"] == "wavediff-test" and tags["weights_sha256"] == FAKE_SHA
    assert tags["weights_published_fid"] == "4.01" and tags["init_weights"] == str(tmp_path / "w.pt")


def test_a_zero_step_job_evaluates_the_weights_without_training_metrics(store, tmp_path):
    sd = _public_checkpoint(tmp_path / "w.pt")
    cfg = registry.resolve(micro("wavediff", **{"init.weights": str(tmp_path / "w.pt"), "train.max_steps": 0}))
    r = run_job(cfg, experiment="pw", progress=False)
    assert r.status == "FINISHED"
    run_ = MlflowClient(store).get_run(r.run_id)
    m, tags = run_.data.metrics, run_.data.tags
    assert {"fid", "nfe", "gflops_per_sample", "sampling_s_per_batch_mean"} <= set(m)
    assert not [k for k in m if k.startswith("train_")], "training-side metrics are absent, not zero"
    assert tags["weights_source"] == "wavediff-test" and tags["weights_sha256"] == FAKE_SHA
    assert tags["metric_sample_format"] == "uint8"
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(r.run_id)}
    assert "final.pt" not in artifacts and "eval_summary.json" in artifacts  # the weights are the init file
    # What the job evaluated is the file's network: the same samples as that network gives outside the job.
    system = registry.build(cfg)
    system.sampling_network.load_state_dict(sd)
    from bench.job import generate

    ours = generate(system, 4, 4, 3, torch.device("cpu"))
    job_system = registry.build(cfg)
    load_init_weights(cfg, job_system)
    assert torch.equal(generate(job_system, 4, 4, 3, torch.device("cpu")), ours)


def _run_grid(grid: dict, tmp_path, store) -> list:
    """Run ``grid`` through the runner (every job must finish); its job runs."""
    p = tmp_path / f"{grid['name']}.yaml"
    p.write_text(yaml.safe_dump(grid))
    assert run.main(["--grid", str(p)]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(grid["experiment"])
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def test_public_weights_run_through_the_runner_and_get_their_own_table_row(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WAVEBENCH_WEIGHTS", str(tmp_path))
    _public_checkpoint(tmp_path / "wavediff-test.pt")
    defaults = {k: v for k, v in micro("wavediff").items() if k != "variant"}
    grid = {"name": "pw", "experiment": "pw-grid", "defaults": defaults,
            "jobs": [{"variant": "wavediff"},
                     {"variant": "wavediff", "init.weights": "$WAVEBENCH_WEIGHTS/wavediff-test.pt",
                      "train.max_steps": 0}],
            "executor": {"name": "local", "max_parallel": 1, "timeout_min": 10}}
    children = _run_grid(grid, tmp_path, store)
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
    public = [r for r in children if r.data.tags.get("weights_source")]
    assert len(public) == 1 and "train_steps" not in public[0].data.metrics
    capsys.readouterr()

    from reports import table

    rep = table.build_report("cifar10", experiment="pw-grid")
    sec = rep.sections[0]
    models = list(sec.frame["Model"])
    i = models.index("WaveDiff (public weights, measured here: wavediff-test)")
    assert models[i - 1] == "WaveDiff"  # right under the paper's row, which keeps the trained run
    variants = list(sec.frame["Variant"])
    assert variants[i - 1] == "wavediff" and variants[i] == "wavediff [public weights: wavediff-test]"
    fids = dict(zip(sec.data["variant"], sec.data["fid_mean"]))
    assert fids["wavediff"] != fids["wavediff [public weights: wavediff-test]"]  # two runs, never merged
    assert any("netG_test.pth" in line and "zero training steps" in line for line in sec.lines)


GRID = Path(__file__).resolve().parents[1] / "experiments" / "public_weights.yaml"


def test_the_public_weights_grid_evaluates_every_source_as_converted(tmp_path, monkeypatch):
    """experiments/public_weights.yaml: one job per SOURCE (each once per sample format), every one valid with its
    data set and converted file present, its model config the one the converter writes into the file."""
    from bench import weights
    from bench.run import load_grid, validate

    monkeypatch.setenv("WAVEBENCH_DATA", str(fake_datasets(tmp_path / "data")))
    monkeypatch.setenv("WAVEBENCH_WEIGHTS", str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    for name in weights.SOURCES:
        (tmp_path / "w" / f"{name}.pt").touch()
    configs = validate(load_grid(str(GRID)))
    assert len(configs) == 2 * len(weights.SOURCES)
    by_file = {}
    for c in configs:
        assert c.train.max_steps == 0 and c.eval.metrics.num_samples == 50000 and c.scale == "paper"
        by_file.setdefault(c.init.weights, []).append(c)
    assert set(by_file) == {f"$WAVEBENCH_WEIGHTS/{n}.pt" for n in weights.SOURCES}
    for name, s in weights.SOURCES.items():
        pair = by_file[f"$WAVEBENCH_WEIGHTS/{name}.pt"]
        assert sorted(c.eval.metrics.sample_format for c in pair) == ["jpeg", "uint8"]
        want = weights.source_config(name, prediction="noise" if s.needs_prediction else None)
        for c in pair:
            assert (c.variant, c.dataset) == (s.variant, s.dataset)
            assert to_dict(c)["model"] == to_dict(want)["model"], name


def test_a_converted_public_file_is_evaluated_by_the_runner_and_shown_in_the_table(store, tmp_path, monkeypatch):
    """The whole path on CPU: a file in the public WaveDiff CIFAR-10 layout (random weights), `python -m bench.weights
    convert`, the public_weights grid's job for it (both sample formats, fewer samples) through the runner, the
    table's row."""
    from test_weights import public_tensors, write

    monkeypatch.setenv("WAVEBENCH_DATA", str(fake_datasets(tmp_path / "data", n=8)))
    monkeypatch.setenv("WAVEBENCH_WEIGHTS", str(tmp_path / "w"))
    f = write(public_tensors("wavediff-cifar10"), tmp_path / "netG_1300.pth")
    conv = subprocess.run([sys.executable, "-m", "bench.weights", "convert", "wavediff-cifar10", str(f)],
                          capture_output=True, text=True, timeout=wait_s(120))
    assert conv.returncode == 0, conv.stderr
    assert (tmp_path / "w" / "wavediff-cifar10.pt").is_file()

    grid = yaml.safe_load(GRID.read_text())
    grid["jobs"] = [j for j in grid["jobs"] if j["init"]["weights"].endswith("/wavediff-cifar10.pt")]
    grid["experiment"] = "pw-cifar10"
    grid["defaults"].update({"device": "cpu", "train.batch_size": 8, "eval.metrics.num_samples": 10,
                             "eval.sample_batch_size": 10, "eval.grid_images": 4, "eval.timing.batch_size": 2, "eval.timing.warmup": 0,
                             "eval.timing.repeats": 1, "eval.metrics.kid_subsets": 5})
    grid["defaults"]["eval"] = {}
    grid["executor"] = {"name": "local", "max_parallel": 1, "timeout_min": 20}
    jobs = _run_grid(grid, tmp_path, store)
    assert len(jobs) == 2 and all(r.info.status == "FINISHED" for r in jobs)
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    for r in jobs:
        assert r.data.tags["weights_source"] == "wavediff-cifar10" and r.data.tags["weights_sha256"] == sha
        assert r.data.tags["weights_file"] == "netG_1300.pth" and r.data.tags["weights_published_fid"] == "4.01"
        assert "fid" in r.data.metrics and not [k for k in r.data.metrics if k.startswith("train_")]
    assert {r.data.tags["metric_sample_format"] for r in jobs} == {"uint8", "jpeg"}

    from reports import table

    rep = table.build_report("cifar10", experiment="pw-cifar10")
    assert len(rep.sections) == 2  # the samples as they are, and through JPEG: two protocols
    jpeg = next(s for s in rep.sections if s.protocol.sample_format == "jpeg")
    assert "samples through jpeg (the papers' way)" in jpeg.heading
    row = "WaveDiff (public weights, measured here: wavediff-cifar10)"
    for sec in rep.sections:
        models = list(sec.frame["Model"])
        assert models[models.index(row) - 1] == "WaveDiff"
        paper = sec.frame[sec.frame["Model"] == "WaveDiff"].iloc[0]
        assert paper["FID (published)"] == "4.01" and paper["FID (measured)"] == "missing"  # no trained run here
        assert any(sha[:16] in line and "netG_1300.pth" in line for line in sec.lines)
    assert any("JPEG round trip" in line for line in jpeg.lines)
