"""The ``--quick`` smoke run of the performance benchmark: every section runs, the report holds finite positive
numbers and sane ratios, and the MLflow run (experiment ``perf``) carries the metrics and the report.

One torch thread: on a loaded machine multi-threaded operators stall (threads wait for a core), which makes the
smoke run several times slower without testing anything more; the benchmark restores the thread count after."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from bench import perf


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("perf") / "perf.md"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert perf.main(["--quick", "--no-mlflow", "--device", "cpu", "--threads", "1", "--out", str(out),
                          "--profile", "--json", str(out.parent / "ops.json")]) == 0
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def _positive(stat: dict) -> None:
    for k in ("median", "min", "max"):
        assert math.isfinite(stat[k]) and stat[k] > 0, stat
    assert stat["min"] <= stat["median"] <= stat["max"]


def test_report_has_every_section_with_numbers(quick):
    text, _ = quick
    assert "1 torch threads" in text
    for head in ("# wavebench performance benchmark", "## 1. Haar transform", "## 2. Sampling", "### Whole sampler",
                 "### DDPM vs WDDM: per step", "### DVDP vs DDPM, per sample", "## 3. Training throughput",
                 "## 4. Suite overhead", "## 5. Aten ops per training step", "Protocol: device cpu"):
        assert head in text, head
    for name in perf.GAN_GROUP + perf.STEP_GROUP + (perf.DVDP_VARIANT,):
        assert re.search(rf"^\| {re.escape(name)} \|", text, re.M), name
    assert "**reference**" in text and "2.5x" in text and "33-34 s" in text
    assert "pytorch_wavelets" in text
    # Every table cell that is a number is finite (no nan / inf reached the report).
    assert not re.search(r"\b(nan|inf)\b", text)


def test_haar_ratios_are_sane(quick):
    _, res = quick
    rows = res["haar"]["rows"]
    assert [r["shape"] for r in rows] == [list(s) for s in perf.HAAR_SHAPES]
    for row in rows:
        for stat in row["ms"].values():
            _positive(stat)
        assert row["max_roundtrip_error"]["ours"] < 1e-5
        ratio = row["ours_over_clone"]["median"]
        # The copy is the floor. The bound only catches a pathological transform (a Python loop is >1000x):
        # the two-stage butterfly measures about 5x (1 thread) to 11x (2 threads) here, more under load
        # (reported, not asserted).
        assert 1.0 < ratio < 100.0, ratio
        if res["haar"]["available"]:
            assert row["speedup_vs_pytorch_wavelets"]["median"] > 1.0


def test_sampling_and_training_numbers(quick):
    _, res = quick
    s = res["sampling"]
    gan = s["gan"]["variants"]
    for name, v in gan.items():
        _positive(v["seconds"])
        _positive(v["speedup_vs_baseline"])
        assert v["gflops_per_sample"] > 0 and v["gflops_per_s"] > 0 and v["nfe"] == 4
    assert gan["ddgan"]["speedup_vs_baseline"]["median"] == pytest.approx(1.0)
    # Same generator widths on a 4x smaller grid: fewer FLOPs per sample than the pixel baseline.
    assert gan["wavediff"]["gflops_per_sample"] < gan["ddgan"]["gflops_per_sample"]
    for v in s["step"]["variants"].values():
        _positive(v["seconds"])
        assert v["gflops_per_call_per_sample"] > 0 and v["projected_sampler_s"] > 0
    assert s["step"]["variants"]["wddm-unet-l2"]["gflops_per_call_per_sample"] < \
        s["step"]["variants"]["ddpm"]["gflops_per_call_per_sample"]
    dv = s["dvdp"]
    assert sum(dv["calls_per_resolution"].values()) == dv["ddpm_nfe"] == 1000
    assert set(dv["calls_per_resolution"]) == {"32", "16"}
    _positive(dv["dvdp_s_per_sample"])
    _positive(dv["speedup_vs_ddpm"])
    assert 1.0 < dv["flop_ratio"] < 4.0  # half the calls at a quarter of the pixels
    assert s["graphs"] == {"skipped": "CUDA graphs need a CUDA device (this run: cpu)"}
    assert all(v["tflops_per_s"] == pytest.approx(v["gflops_per_s"] / 1e3) for v in gan.values())
    assert res["training"]["precisions"] == ["fp32"]
    for grp in res["training"]["groups"]:
        for v in grp["rows"]:
            _positive(v["images_per_s"])
            _positive(v["speedup_vs_baseline"])
            # FLOPs of a training step: more than the forward pass of the networks it trains
            assert v["gflops_per_image"] > 0 and v["tflops_per_s"] > 0
    rows = {v["variant"]: v for v in res["training"]["groups"][0]["rows"]}
    assert rows["wavediff"]["gflops_per_image"] < rows["ddgan"]["gflops_per_image"]


def test_training_times_whole_step_cycles_with_one_trainer_per_arm(quick):
    text, res = quick
    tr = res["training"]
    for grp in tr["groups"]:
        for v in grp["rows"]:  # quick: a GAN's cycle cut to 2 steps (R1, plain), others' cycle is 1 step
            assert v["timed_steps"] == 2, v
    assert "Quick mode: step cycles cut to 2 steps" in text
    names = {v["variant"] for grp in tr["groups"] for v in grp["rows"]}
    assert sorted(Path(p).name for p in tr["profiles"]) == sorted(f"{n}-fp32.txt" for n in names)
    for p in tr["profiles"]:
        head = Path(p).read_text().splitlines()
        assert head[0].startswith(f"# {Path(p).stem[:-5]}, fp32, batch 4, 2 steps, cpu")
        per_step = int(re.match(r"aten op events per step .*: (\d+) \(", head[2]).group(1))
        assert per_step > 100 and "aten::convolution" in Path(p).read_text()


def test_train_session_runs_one_trainer_across_rounds(one_thread):
    from bench import registry
    from bench.perf.training import TrainSession, _train_images
    from conftest import micro

    cfg = registry.resolve(micro("ddpm"))
    torch.manual_seed(0)
    system = registry.build(cfg)
    before = [p.detach().clone() for p in system.denoiser.parameters()]
    session = TrainSession(cfg, system, _train_images(cfg, 16, 5, 0), torch.device("cpu"), warmup=1, steps=2,
                           windows=2, seed=0)
    try:
        assert session.cfg.train.max_steps == 5  # warm-up + two windows, one trainer
        assert all(session.round() > 0 for _ in range(2))
        assert any(not torch.equal(a, b) for a, b in zip(before, system.denoiser.parameters()))
        with pytest.raises(RuntimeError, match="stopped before its last window"):
            session.round()  # its step budget is spent: the rounds were steps of the same trainer
    finally:
        session.close()


def test_ops_section_and_json(quick, tmp_path):
    text, res = quick
    table = res["ops"]["table"]
    ops_json = json.loads((Path(res["config"]["profile"]).parent / "ops.json").read_text())
    assert ops_json == table
    assert set(table) == set(perf.ops.OPS_VARIANTS)
    for v, precs in table.items():
        assert set(precs) == {"fp32", "bf16"} | ({"fp32+fast_sums", "bf16+fast_sums"} if v in perf.GAN_GROUP else set())
        for prec, f in precs.items():
            assert f["plain_step"] > f["sampler_call"] > 0, (v, prec)
            assert (f["r1_step"] > f["plain_step"]) if v in perf.GAN_GROUP else f["r1_step"] is None, (v, prec)
        assert re.search(rf"^\| {re.escape(v)} \| bf16 \| [0-9,]+ \|", text, re.M), v
    # bf16 sampling casts the weights once: few casts per network call, where the bare network casts each weight
    call = res["ops"]["counts"]["wavediff"]["bf16"]["sampler_call"]
    assert call["casts"] * 10 < call["casts_per_call_uncached"], call


def test_overhead_section(quick):
    _, res = quick
    lg = res["overhead"]["logging"]
    _positive(lg["s_per_step_null"])
    _positive(lg["s_per_step_mlflow"])
    # MLflow really logged every step of every run (warm-up + timed steps).
    assert lg["loss_g_values_logged_per_run"] == lg["warmup_steps"] + lg["timed_steps"]
    # The A/B difference of two step times is at the mercy of other load: only required to be a number.
    assert math.isfinite(lg["overhead_pct"]["median"])
    # The direct measure: time inside the Tracker per step is positive and inside the step (how small a part is
    # the benchmark's figure, reported against its 2% target; on a loaded machine a quick run says little).
    _positive(lg["tracker_s_per_step"])
    assert lg["tracker_s_per_step"]["median"] < lg["s_per_step_mlflow"]["median"]
    assert 0.0 < lg["direct_overhead_pct"]["median"] and math.isfinite(lg["direct_overhead_pct"]["median"])
    _positive(res["overhead"]["metrics"]["s_per_1000"])
    ex = {r["backbone"]: r for r in res["overhead"]["extraction"]["rows"]}
    assert ex["digits-classifier"]["s_per_1000"] > 0 and ex["digits-classifier"]["device"] == "cpu"
    for name in ("inception", "vgg16", "dinov2"):  # no weights on this offline machine: said, not measured
        assert "s_per_1000" in ex[name] or "eval.metrics." in ex[name]["missing"], ex[name]


def test_mlflow_run_is_logged(store, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "perf.md"
    assert perf.main(["--quick", "--sections", "haar", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("perf")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["haar_256x3x32x32_ours_ms"] > 0 and m["haar_16x3x256x256_ours_over_clone"] > 1
    assert run.data.params["quick"] == "True" and run.data.tags["mode"] == "quick"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"perf.md", "perf.json"} <= names
    md = client.download_artifacts(run.info.run_id, "perf.md", str(tmp_path / "dl"))
    assert open(md).read() == out.read_text()


def test_rounds_interleave_arms_and_drop_warmup():
    order = []
    arms = {k: (lambda k: lambda: order.append(k) or float(len(order)))(k) for k in ("a", "b")}
    assert perf.rounds(arms, 2, warmup=1) == {"a": [3.0, 5.0], "b": [4.0, 6.0]}
    assert order == ["a", "b"] * 3
    summary, speedup = perf.versus({"base": [2.0, 4.0], "x": [1.0, 1.0]}, "base")["x"]
    assert summary["median"] == 1.0 and speedup["median"] == 3.0 and speedup["of_minima"] == 2.0


def test_arms_are_a_precision_and_gan_training_options():
    from bench.perf.config import arm_options
    assert arm_options("fp32") == {"precision": "fp32"}
    assert arm_options("bf16+graphs+fast_sums") == {"precision": "bf16", "cuda_graphs": True, "fast_sums": True}
    with pytest.raises(ValueError, match=r"a precision \(fp32, bf16\) then any of \+graphs, \+fast_sums"):
        arm_options("fp32+compile")


def test_unknown_section_is_an_error():
    with pytest.raises(SystemExit):
        perf.main(["--quick", "--sections", "haar,nope", "--no-mlflow"])


@pytest.mark.parametrize("args", [["--train-warmup", "0"], ["--train-steps", "0"], ["--sections", "haar", "--json",
                                  "x.json"], ["--quick", "--write-budgets"], ["--train-precisions", "fp16"],
                                  ["--train-precisions", "fp32+fast"], ["--train-precisions", "bf16+graphs+graphs"]])
def test_bad_flags_are_errors(args, capsys):
    with pytest.raises(SystemExit) as e:
        perf.main(["--no-mlflow", "--device", "cpu", *args])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_a_run_cut_short_keeps_the_sections_it_measured(tmp_path, monkeypatch):
    """The report is written after each section: a run killed in a later section leaves the earlier ones."""
    def killed(pc, device):
        raise KeyboardInterrupt  # what a timeout's signal or Ctrl-C does mid-section

    monkeypatch.setitem(perf.MODULES, "overhead", type("Killed", (), {"run": staticmethod(killed)}))
    out = tmp_path / "perf.md"
    with pytest.raises(KeyboardInterrupt):
        perf.main(["--quick", "--sections", "haar,overhead", "--no-mlflow", "--device", "cpu", "--threads", "1",
                   "--out", str(out)])
    text = out.read_text()
    assert "## 1. Haar transform" in text and "**Partial report**" in text and "still to run when this was " \
        "written: overhead" in text
    assert re.search(r"^\| \(256,3,32,32\) \| [0-9.]+ ", text, re.M)  # the measured row, not only its heading
    assert json.loads(out.with_suffix(".json").read_text())["unfinished"] == ["overhead"]
