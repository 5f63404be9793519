"""``make demo`` (bench.demo): its equal-training-FLOPs budget, its outputs, and (slow) that its exact configuration
draws recognisable digits."""
import re
from dataclasses import replace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bench import demo, registry
from bench.evaluate import train_flops_per_step
from bench.run import load_grid, validate
from conftest import micro


def test_flops_per_step_counts_the_whole_step_schedule(one_thread, tmp_path, monkeypatch):
    """The two-step count (the R1 step, then an ordinary one) equals counting every step of the R1 cycle, and the
    count is linear in the batch size (what scaling from a small counting batch relies on)."""
    monkeypatch.setenv("WAVEBENCH_RUNS", str(tmp_path))
    cfg = registry.resolve(micro("ddgan", **{"train.lazy_reg": 3, "train.batch_size": 16}))
    two = train_flops_per_step(cfg)
    assert two == pytest.approx(train_flops_per_step(cfg, cycle="full"), rel=1e-12)
    assert two == pytest.approx(train_flops_per_step(cfg, batch=2), rel=1e-12)
    # The R1 step costs more than an ordinary one: a cycle of one step (R1 every step) costs more per step.
    every = registry.resolve(micro("ddgan", **{"train.lazy_reg": 1, "train.batch_size": 16}))
    assert train_flops_per_step(every) > two > 0


def test_the_demo_grid_gives_both_variants_the_same_training_flops(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("WAVEBENCH_RUNS", str(tmp_path))
    configs = validate(load_grid("demo"))
    assert {c.variant for c in configs} == {"ddgan", "wavediff"}
    assert all(c.train.max_minutes is None and c.train.max_steps for c in configs)  # no wall-clock budget
    rows, unequal = demo.flops_budget(configs)
    assert unequal == []
    per_step = {r["variant"]: r["gflops_per_step"] for r in rows}
    assert per_step["ddgan"] > 2 * per_step["wavediff"]  # pixels cost more than one-level Haar coefficients
    cheap = min(rows, key=lambda r: r["gflops_per_step"])
    for r in rows:  # within half a step of the cheapest variant's budget
        assert abs(r["tflops"] - cheap["tflops"]) <= r["gflops_per_step"] / 2e3
    text = demo.budget_text(rows)
    assert text.startswith("training budget: equal training FLOPs") and "ddgan" in text and "wavediff" in text

    # One step off: named, with the step count that would make the budgets equal.
    ddgan = next(c for c in configs if c.variant == "ddgan")
    wrong = [replace(c, train=replace(c.train, max_steps=c.train.max_steps + 5)) if c is ddgan else c
             for c in configs]
    _, unequal = demo.flops_budget(wrong)
    assert len(unequal) == 1 and f"set train.max_steps: {ddgan.train.max_steps}" in unequal[0]


def test_demo_on_a_micro_grid_prints_its_budget_table_plot_and_ui_urls(store, tmp_path, capsys, one_thread):
    """The demo's code path end to end at micro size: equal training FLOPs computed here, FID during training,
    the convergence plot restricted to the demo's runs, and the MLflow UI addresses."""
    base = {k: v for k, v in micro("wavediff").items() if k != "variant"}
    base.update({"eval.every_num_samples": 16})
    cfgs = {v: registry.resolve(micro(v, **{"train.max_steps": 1})) for v in ("ddgan", "wavediff")}
    flops = {v: train_flops_per_step(c) for v, c in cfgs.items()}
    steps = {"wavediff": 8}
    steps["ddgan"] = round(8 * flops["wavediff"] / flops["ddgan"])
    assert 1 <= steps["ddgan"] < 8
    grid = tmp_path / "micro-demo.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "micro-demo", "experiment": "micro-demo", "defaults": base,
        "jobs": [{"variant": v, "train.max_steps": n, "eval.every_steps": max(1, n // 2)} for v, n in steps.items()],
        "executor": {"name": "local", "max_parallel": 1}}))
    out = tmp_path / "out"
    assert demo.main(["--grid", str(grid), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "training budget: equal training FLOPs" in printed and "warning" not in printed
    md = (out / "demo.md").read_text()
    assert "## FID during training" in md and "| wavediff | 8 (final) |" in md
    assert (out / "convergence-demo.png").read_bytes()[:4] == b"\x89PNG"
    for v in steps:
        assert (out / f"samples-{v}.png").read_bytes()[:4] == b"\x89PNG"
    exp = MlflowClient(store).get_experiment_by_name("micro-demo")
    assert f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in printed


@pytest.mark.slow
def test_the_demo_draws_recognisable_digits(store, tmp_path):
    """``make demo``'s exact configuration (experiments/demo.yaml, its budget) in a fresh store: wavediff's samples
    are digits, by the digit classifier's precision (the fraction of samples inside the real digits' k-NN balls in
    its feature space)."""
    out = tmp_path / "out"
    assert demo.main(["--out", str(out)]) == 0
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("demo")
    runs = {r.data.tags["variant"]: r for r in client.search_runs([exp.experiment_id], "tags.grid = 'demo'")
            if r.data.tags.get("kind") != "grid"}
    wavediff = runs["wavediff"].data
    assert wavediff.metrics["precision"] >= 0.3, wavediff.metrics
    assert wavediff.tags["metric_backbone_prc"].startswith("wavebench-digits")
    assert int(wavediff.metrics["train_steps"]) == int(wavediff.params["train.max_steps"])
    md = (out / "demo.md").read_text()
    assert re.search(r"training budget: equal training FLOPs", md)
    assert (out / "convergence-demo.png").exists()
