"""Tables and plots from a real temporary MLflow store filled with small runs in the schema bench.job writes."""
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from reports import plots, query, table

EXP = "reports-test"
T0 = int(time.time() * 1000) - 3_600_000
COMMON = {"recall": 0.4, "precision": 0.6, "kid_mean": 0.01, "kid_std": 0.001, "time_std_s": 0.01,
          "train_steps": 400, "train_epochs": 14, "train_s_per_epoch": 30.0}


def log_run(client, exp_id, variant, *, fid, time_s, seed=0, dataset="digits", scale="tiny",
            backbone="digits-classifier", family="gan", published_row="", start=0, status="FINISHED",
            nfe=4, gflops=0.5, params=None, ips=200.0, wall=600.0, history=None, extra_params=None, parent=None):
    """One run as bench.job logs it: tags, flattened params, evaluation metrics at the final step."""
    tags = {"variant": variant, "dataset": dataset, "scale": scale, "family": family, "paper": "p",
            "job_hash": f"{variant}{seed}{start}", "train_hash": "t", "published_row": published_row,
            "metric_backbone": backbone, "metric_backbone_fid": f"{backbone} features",
            "metric_implementation": "torch-fidelity 0.4.0", "timing_device": "x86_64", "timing_threads": "2",
            "device": "cpu"}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, start_time=T0 + start, tags=tags, run_name=f"{variant}-{seed}")
    rid = run.info.run_id
    p = {"seed": str(seed), "scale": scale, "eval.metrics.num_samples": "1000", "eval.timing.batch_size": "100",
         "eval.timing.repeats": "5", "eval.timing.warmup": "2", "data.resolution": "32", **(extra_params or {})}
    step = 400
    m = {**COMMON, "fid": fid, "time_mean_s": time_s, "time_median_s": time_s, "nfe": nfe,
         "gflops_per_sample": gflops, "train_wall_clock_s": wall, "train_images_per_s": ips, **(params or {})}
    metrics = [Metric(k, float(v), T0 + start, step) for k, v in m.items()]
    for i, (s, f, w) in enumerate(history or []):
        metrics += [Metric("fid_intermediate", f, T0 + start - 100 + i, s), Metric("train_wall_clock_s", w, T0 + start - 100 + i, s)]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in p.items()])
    client.set_terminated(rid, status=status)
    return rid


GAN_P = {"params_generator": 1.5e6, "params_discriminator": 0.3e6}
DIFF_P = {"params_denoiser": 2.0e6}


@pytest.fixture(scope="module")
def store(module_store):
    """The runs the tests read, in the module's MLflow store (conftest's ``module_store``)."""
    uri, artifacts = module_store, Path(os.environ["WAVEBENCH_ARTIFACT_ROOT"])
    client = MlflowClient(uri)
    e = client.create_experiment(EXP, artifact_location=artifacts.as_uri())
    parent = client.create_run(e, run_name="grid-demo", tags={"grid": "demo"}).info.run_id
    client.set_terminated(parent)
    hist = [(100, 80.0, 150.0), (200, 50.0, 300.0)]
    every = {"eval.every_num_samples": "200"}  # intermediate FIDs on 200 samples, the final one on 1000
    r = {}
    r["ddgan"] = log_run(client, e, "ddgan", fid=30.0, time_s=2.0, params=GAN_P, published_row="DDGAN",
                         history=hist + [(400, 31.0, 600.0)], parent=parent, gflops=2.0, extra_params=every)
    log_run(client, e, "wavediff", fid=99.0, time_s=9.0, seed=0, start=-1000, params=GAN_P)  # older: replaced
    r["wavediff0"] = log_run(client, e, "wavediff", fid=20.0, time_s=0.8, seed=0, params=GAN_P,
                             published_row="WaveDiff", history=hist + [(400, 21.0, 600.0)], parent=parent,
                             extra_params=every)
    r["wavediff1"] = log_run(client, e, "wavediff", fid=22.0, time_s=0.6, seed=1, start=10, params=GAN_P,
                             published_row="WaveDiff", parent=parent)
    log_run(client, e, "wavediff", fid=77.7, time_s=0.01, seed=2, status="FAILED", params=GAN_P)  # ignored
    for i, (v, f) in enumerate([("wavediff-wg", 18.0), ("wavediff-wg-no-residual", 19.5),
                                ("wavediff-wg-no-updown", 19.0), ("wavediff-wg-no-bottleneck", 18.5),
                                ("wavediff-no-rec", 40.0)]):
        log_run(client, e, v, fid=f, time_s=0.5 + 0.01 * i, params=GAN_P)
    diff = dict(family="diffusion", params=DIFF_P)
    log_run(client, e, "ddpm", fid=15.0, time_s=40.0, nfe=1000, gflops=300.0, ips=100.0,
            extra_params={"eval.sampler": "ddpm", "eval.steps": "0", "eval.eta": "0.0",
                          "model.process.num_timesteps": "1000"}, **diff)
    for n, f in ((10, 25.0), (20, 19.0), (50, 16.0)):
        log_run(client, e, f"ddim-{n}", fid=f, time_s=40.0 * n / 1000, nfe=n, gflops=0.3 * n,
                extra_params={"eval.sampler": "ddim", "eval.steps": str(n), "eval.eta": "0.0",
                              "eval.spacing": "quadratic"}, **diff)
    log_run(client, e, "wddm-unet-l1", fid=17.0, time_s=12.0, nfe=1000, gflops=80.0, ips=300.0, **diff)
    log_run(client, e, "dvdp-tp1", fid=16.5, time_s=25.0, nfe=1000, gflops=150.0, ips=150.0, family="dvdp",
            params=DIFF_P, extra_params={"model.turning_points": "[500]"})
    # Another protocol on the same data set (Inception backbone), and CIFAR-10 at paper scale.
    log_run(client, e, "wavediff", fid=50.0, time_s=0.7, backbone="inception-vgg16", params=GAN_P)
    log_run(client, e, "ddgan", fid=70.0, time_s=2.1, backbone="inception-vgg16", params=GAN_P, gflops=2.0)
    log_run(client, e, "wavediff", fid=4.5, time_s=0.1, dataset="cifar10", scale="paper",
            backbone="inception-vgg16", params={"params_generator": 33.4e6, "params_discriminator": 7.6e6})
    # Other experiments of the same store, read when no experiment is named: a newer ddgan run (it wins),
    # a variant only there, and runs that are never rows: a tuning trial and its study (newer, their own
    # kind), the speed benchmark's experiment.
    other = client.create_experiment("other", artifact_location=artifacts.as_uri())
    r["other_ddgan"] = log_run(client, other, "ddgan", fid=31.0, time_s=2.2, start=5000, params=GAN_P,
                               published_row="DDGAN", gflops=2.0)
    log_run(client, other, "wddm-unet-l2", fid=23.0, time_s=11.0, nfe=1000, start=5000, **diff)
    tune = client.create_experiment("tune", artifact_location=artifacts.as_uri())
    for kind in ("trial", "study"):
        rid = log_run(client, tune, "wavediff", fid=1.0, time_s=0.01, start=6000, params=GAN_P)
        client.set_tag(rid, "kind", kind)
    perf = client.create_experiment("perf", artifact_location=artifacts.as_uri())
    log_run(client, perf, "wavediff-wg", fid=2.0, time_s=0.02, start=6000, params=GAN_P)
    yield {"uri": uri, "client": client, "exp": e, "runs": r, "tmp": artifacts.parent}


def section(rep, dataset, backbone="digits-classifier"):
    hits = [s for s in rep.sections if s.protocol and s.protocol.dataset == dataset and s.protocol.backbone == backbone]
    assert len(hits) == 1, [s.heading for s in rep.sections]
    return hits[0]


def cell(sec, model, column):
    f = sec.frame
    rows = f[f["Model"] == model]
    assert len(rows) == 1, (model, f["Model"].tolist())
    return rows.iloc[0][column]


def test_query_latest_per_seed_and_aggregate(store):
    runs = query.load_runs(EXP, datasets=["digits"])
    assert "FAILED" not in set(runs["status"]) and 99.0 in set(runs["fid"])  # the older run is loaded ...
    latest = query.select_latest(runs)
    assert 99.0 not in set(latest["fid"])                                    # ... but not selected
    agg = query.aggregate(latest)
    wd = agg[(agg["variant"] == "wavediff") & (agg["protocol"].map(lambda p: p.backbone) == "digits-classifier")]
    assert len(wd) == 1
    wd = wd.iloc[0]
    assert wd["n"] == 2 and wd["fid_mean"] == pytest.approx(21.0) and wd["fid_std"] == pytest.approx(np.sqrt(2))
    assert wd["time_mean_s_mean"] == pytest.approx(0.7)
    assert "grid-demo" not in set(runs["run_name"])  # the grid's parent run has no variant tag


def test_cifar10_table_measured_beside_published(store):
    rep = table.build_report("cifar10", EXP, datasets=["digits"], wide=True)
    sec = section(rep, "digits")
    assert cell(sec, "WaveDiff", "FID (published)") == "4.01"
    assert cell(sec, "WaveDiff", "FID (measured)") == "21.00 ± 1.41"
    assert cell(sec, "WaveDiff", "Runs") == "2"
    assert cell(sec, "DDGAN", "FID (measured)") == "30.00"
    assert cell(sec, "DDGAN", "FID (published)") == "3.75"
    # Speed-up: 2.0 s / mean(0.8, 0.6) s = 2.86, measured in this protocol; the published one from 0.21 / 0.08.
    assert cell(sec, "WaveDiff", "Sampling speed-up (measured)") == "2.9x faster than DDGAN"
    assert cell(sec, "WaveDiff", "Sampling speed-up (published)") == "2.6x faster than DDGAN"
    assert cell(sec, "DDGAN", "Sampling speed-up (measured)") == "baseline"
    assert cell(sec, "WaveDiff", "Params G/denoiser (M) (measured)") == "1.50"
    assert cell(sec, "WaveDiff", "Params G/denoiser (M) (reference)") == "33.37"
    # Papers' order and names first; rows no variant reproduces are n/a, measured-only rows come after.
    models = sec.frame["Model"].tolist()
    assert models[:4] == ["WaveDiff", "DDGAN", "DDPM", "NCSN"]
    assert cell(sec, "NCSN", "FID (measured)") == "n/a" and cell(sec, "NCSN", "FID (published)") == "25.30"
    # Rounded as the paper prints: recall and precision two decimals, seconds 0.08 / 80.5.
    assert cell(sec, "WaveDiff", "Recall (measured)") == "0.40"
    assert cell(sec, "WaveDiff", "Recall (published)") == "0.55"
    assert cell(sec, "WaveDiff", "Precision (measured)") == "0.60"
    assert cell(sec, "WaveDiff", "Time (s/batch) (published)") == "0.08"
    assert cell(sec, "DDPM", "Time (s/batch) (published)") == "80.5"
    assert cell(sec, "DDPM", "Time (s/batch) (measured)") == "40.0"
    assert cell(sec, "WaveDiff", "Time (s/batch) (measured)") == "0.70 ± 0.14"
    assert cell(sec, "DDPM", "FID (measured)") == "15.00" and cell(sec, "DDIM", "FID (measured)") == "16.00"
    assert models.index("wavediff-no-rec") > models.index("VAEBM")
    assert cell(sec, "wavediff-no-rec", "FID (published)") == "-"
    # Never the published value in a measured cell or the reverse; the stale and failed runs appear nowhere.
    assert "21.00" not in " ".join(sec.frame.filter(like="(published)").to_numpy().ravel())
    md = table.render(rep, "md")
    assert "99.00" not in md and "77.70" not in md
    assert "digits-classifier features (torch-fidelity 0.4.0) on 1000 generated samples" in md
    assert "batch of 100" in md and "cpu (x86_64, 2 threads)" in md
    assert "Not the published data set" not in md and "with the cifar10 paper configurations" in md


def test_paper_width_is_the_default(store, tmp_path, capsys):
    rep = table.build_report("cifar10", EXP, datasets=["digits"])
    sec = section(rep, "digits")
    assert list(sec.frame.columns) == [
        "Model", "Variant", "FID (published)", "FID (measured)", "Recall (published)", "Recall (measured)",
        "NFE (published)", "NFE (measured)", "Time (published)", "Time (measured)", "Speed-up vs DDGAN (measured)"]
    wide = section(table.build_report("cifar10", EXP, datasets=["digits"], wide=True), "digits")
    same = {"Time (published)": "Time (s/batch) (published)", "Time (measured)": "Time (s/batch) (measured)"}
    for col in sec.frame.columns[:-1]:
        assert sec.frame[col].tolist() == wide.frame[same.get(col, col)].tolist(), col  # the same cells
    assert cell(sec, "WaveDiff", "Speed-up vs DDGAN (measured)") == "2.9x faster"
    assert cell(sec, "DDGAN", "Speed-up vs DDGAN (measured)") == "baseline"
    assert cell(sec, "DDPM", "Speed-up vs DDGAN (measured)") == "20x slower"
    assert cell(sec, "WaveDiff", "Time (measured)") == "0.70 ± 0.14"
    assert cell(sec, "WaveDiff", "Recall (measured)") == "0.40"
    # No column has the published and the measured number in one cell; seeds and the protocol are in the footer.
    assert any("(seeds per row: WaveDiff 2, DDGAN 1, DDPM 1, DDIM 1" in line for line in sec.lines)
    assert sec.lines[0].startswith("Measured protocol: data set digits")
    assert len(sec.frame.columns) == 11 and len(wide.frame.columns) == 22
    # --wide on the command line: every column, written beside the default file.
    assert table.main(["--dataset", "digits", "--experiment", EXP, "--wide", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Params G/denoiser (M) (reference)" in out and "| Runs" in out
    assert (tmp_path / "table-cifar10-digits-wide.md").read_text().strip() == out.strip()
    # Tables without published times keep their point: WDDM's training speed-up.
    w = section(table.build_report("wddm", EXP, datasets=["digits"]), "digits")
    assert cell(w, "WDDM UNet L1", "Training speed-up vs pixel DDPM (measured)") == "3.0x faster"
    assert not any("(reference)" in c for c in w.frame.columns)


def test_every_experiment_is_read_unless_one_is_named(store):
    everywhere = section(table.build_report("cifar10", datasets=["digits"], wide=True), "digits")
    # The newest FINISHED ddgan run of the store (experiment 'other') replaces the older one ...
    assert cell(everywhere, "DDGAN", "FID (measured)") == "31.00"
    assert store["runs"]["other_ddgan"] in everywhere.data.set_index("variant").loc["ddgan", "run_ids"]
    assert cell(everywhere, "wddm-unet-l2", "FID (measured)") == "23.00"  # a variant only 'other' has
    # ... but tuning trials and studies (newer still) and the perf experiment never are rows.
    assert cell(everywhere, "WaveDiff", "FID (measured)") == "21.00 ± 1.41"
    assert cell(everywhere, "wavediff-wg", "FID (measured)") == "18.00"
    assert any(line.startswith("Runs: ") and "in experiments 'other', 'reports-test'" in line
               for line in everywhere.lines)
    runs = query.load_runs()
    assert set(runs["experiment"]) == {EXP, "other"} and 1.0 not in set(runs["fid"]) and 2.0 not in set(runs["fid"])
    # Naming an experiment restricts to it.
    named = section(table.build_report("cifar10", EXP, datasets=["digits"]), "digits")
    assert cell(named, "DDGAN", "FID (measured)") == "30.00" and "wddm-unet-l2" not in set(named.frame["Model"])
    assert any(f"in experiment '{EXP}'" in line for line in named.lines)


def test_protocols_are_separate_labelled_sections(store):
    rep = table.build_report("cifar10", EXP, wide=True)  # default scope: cifar10 and digits
    labels = [s.heading for s in rep.sections]
    assert len(labels) == 3, labels
    inc = section(rep, "digits", "inception-vgg16")
    dig = section(rep, "digits", "digits-classifier")
    cif = section(rep, "cifar10", "inception-vgg16")
    assert "inception-vgg16" in inc.heading and "digits-classifier" in dig.heading and "scale paper" in cif.heading
    assert cell(inc, "WaveDiff", "FID (measured)") == "50.00" and cell(dig, "WaveDiff", "FID (measured)") != "50.00"
    assert cell(inc, "WaveDiff", "Sampling speed-up (measured)") == "3.0x faster than DDGAN"
    assert cell(cif, "WaveDiff", "FID (measured)") == "4.50"
    assert cell(cif, "WaveDiff", "Sampling speed-up (measured)") == "no ddgan run"
    assert cell(cif, "DDGAN", "FID (measured)") == "missing"
    assert any("Missing measured rows (ddgan, ddpm, ddim-50)" in line for line in cif.lines)
    csv = pd.read_csv(pd.io.common.StringIO(table.render(rep, "csv")))
    wd = csv[(csv["variant"] == "wavediff") & (csv["status"] == "ok")]
    assert sorted(wd["fid_mean"].round(2)) == [4.5, 21.0, 50.0]
    assert wd["protocol"].nunique() == 3 and set(wd["fid_published"]) == {4.01}


def test_empty_store_prints_published_rows_and_fill_command(store, capsys, tmp_path):
    assert table.main(["--table", "cifar10", "--experiment", "no-such-experiment", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for model in ("WaveDiff", "DDGAN", "Score SDE (VE)", "StyleGAN2 w/ DiffAug", "VAEBM"):
        assert f"| {model} " in out
    assert "| 4.01 " in out and "missing" in out
    assert "python -m bench.run --grid experiments/cifar10.yaml" in out
    assert (tmp_path / "table-cifar10.md").read_text().strip() == out.strip()


@pytest.mark.parametrize("fmt", ["md", "latex", "html", "csv"])
def test_every_table_renders_in_every_format(store, fmt, tmp_path, capsys):
    assert table.main(["--table", "all", "--experiment", EXP, "--format", fmt, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in table.table_names():
        assert (tmp_path / f"table-{name}.md").exists()
        assert (tmp_path / f"table-{name}.{table.FORMATS[fmt]}").exists()
    marker = {"md": "| WaveDiff ", "latex": "\\begin{tabular}", "html": "<table", "csv": "fid_published"}[fmt]
    assert marker in out


def test_ablation_wddm_dvdp_ddim_tables(store):
    rep = table.build_report("ablation", EXP, wide=True)
    assert all(s.protocol.dataset == "digits" for s in rep.sections)  # cifar10 measured no ablation row
    ab = section(rep, "digits")
    assert ab.frame["Model"].tolist()[:4] == ["w/o residual", "w/o up & down", "w/o bottleneck", "full model"]
    assert cell(ab, "w/o residual", "FID (published)") == "6.25"
    assert cell(ab, "w/o residual", "FID (measured)") == "19.50"
    assert cell(ab, "full model", "Sampling speed-up (measured)") == "baseline"
    assert set(ab.frame["Variant"]) >= {"wavediff-no-rec", "ddgan"} and "ddpm" not in set(ab.frame["Variant"])
    assert any("published numbers are on celebahq256, measured ones on digits" in line for line in ab.lines)

    wrep = table.build_report("wddm", EXP, datasets=["digits"], wide=True)
    w = section(wrep, "digits")
    assert not any("(published)" in c for c in w.frame.columns)
    assert any("UNVERIFIED" in line for line in wrep.header + wrep.notes)
    assert cell(w, "WDDM UNet L1", "Training speed-up (measured)") == "3.0x faster than pixel DDPM"
    assert cell(w, "WDDM UNet L1", "Params G/denoiser (M) (reference)") == "26.20"
    assert cell(w, "WDDM UKAN L2", "FID (measured)") == "missing"

    d = section(table.build_report("dvdp", EXP, wide=True), "digits")
    assert cell(d, "DVDP, 1 turning point", "FID (measured)") == "16.50"
    assert cell(d, "DVDP, 1 turning point", "Config (turning points)") == "model.turning_points=[500]"
    assert cell(d, "DVDP, 1 turning point", "Sampling speed-up (measured)") == "1.6x faster than DDPM"
    assert cell(d, "Subspace Diffusion", "FID (published)") == "2.17"

    s = section(table.build_report("ddim", EXP, wide=True), "digits")
    assert cell(s, "S = 10", "FID eta=0 (published)") == "13.36"
    assert cell(s, "S = 10", "FID (measured)") == "25.00"
    assert cell(s, "S = 10", "eta (measured)") == "0.0"
    assert cell(s, "S = 1000", "FID (measured)") == "15.00"
    assert cell(s, "S = 100", "FID (measured)") == "missing"
    assert cell(s, "S = 10", "Sampling speed-up (measured)") == "100x faster than DDPM (1000 steps)"


def test_measured_only_table_keeps_measured_rows_and_columns(store, tmp_path, capsys):
    full = section(table.build_report("cifar10", EXP, datasets=["digits"]), "digits")
    rep = table.build_report("cifar10", EXP, datasets=["digits"], measured_only=True)
    sec = section(rep, "digits")
    assert rep.title.endswith("measured runs only") and "--table cifar10" in rep.header[0]
    assert not any("(published)" in c or "(reference)" in c for c in sec.frame.columns)
    # Only rows with a run (paper order first), with the same measured cells as the full table.
    assert sec.frame["Model"].tolist()[:3] == ["WaveDiff", "DDGAN", "DDPM"]
    assert "NCSN" not in set(sec.frame["Model"]) and "missing" not in sec.frame.to_numpy()
    for model in sec.frame["Model"]:
        for col in sec.frame.columns:
            assert cell(sec, model, col) == cell(full, model, col), (model, col)
    md = table.render(rep, "md")
    assert "4.01" not in md and "Published:" not in md and "reference columns" not in md
    assert "Measured on digits with the cifar10 paper configurations" in md
    # Restricted to chosen runs: one seed of wavediff only; no run ids at all gives the empty table.
    one = section(table.build_report("cifar10", EXP, datasets=["digits"], run_ids=[store["runs"]["wavediff0"]],
                                     measured_only=True), "digits")
    assert one.frame["Model"].tolist() == ["WaveDiff"]
    assert cell(one, "WaveDiff", "FID (measured)") == "20.00"
    assert any("(one seed per row)" in line for line in one.lines)
    none = table.build_report("cifar10", EXP, run_ids=[], measured_only=True)
    assert none.sections[0].protocol is None and none.sections[0].frame.empty
    assert "No FINISHED runs" in table.render(none, "md")
    assert table.main(["--dataset", "digits", "--experiment", EXP, "--measured-only", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == md.strip()
    assert (tmp_path / "table-cifar10-digits-measured.md").read_text() == md

def test_pareto_front():
    x = np.array([1.0, 2.0, 3.0, 0.5, 2.5])
    y = np.array([5.0, 3.0, 4.0, 9.0, 1.0])
    assert plots.pareto_front(x, y).tolist() == [True, True, False, True, True]


def test_plots_render_and_log(store, tmp_path, capsys):
    conv = query.convergence(query.select_latest(query.load_runs(EXP, datasets=["digits"])))
    wd = conv[conv["run_id"] == store["runs"]["wavediff0"]]
    # The intermediate FIDs (200 samples) and the final one (1000 samples, same step as the last intermediate
    # one) are two protocols: two kinds of rows, never one merged series.
    inter, final = wd[wd["kind"] == "intermediate"], wd[wd["kind"] == "final"]
    assert inter["step"].tolist() == [100, 200, 400] and inter["train_wall_clock_s"].tolist() == [150.0, 300.0, 600.0]
    assert inter["fid"].tolist() == [80.0, 50.0, 21.0] and set(inter["samples"]) == {"200"}
    assert final[["step", "fid", "train_wall_clock_s", "samples"]].values.tolist() == [[400, 20.0, 600.0, "1000"]]
    # A run that logged no intermediate FID still has its final point.
    one = conv[conv["run_id"] == store["runs"]["wavediff1"]]
    assert one["kind"].tolist() == ["final"] and one["fid"].tolist() == [22.0]
    assert plots.main(["--dataset", "digits", "--experiment", EXP, "--out", str(tmp_path), "--log"]) == 0
    # No run of this store logged the dinov2 metric set: the ranking plot is skipped with a one-line note
    # (tests/test_reports_dinov2.py draws it).
    err = capsys.readouterr().err
    assert "skipped rank_fid_vs_fd_dinov2: no protocol has two variants" in err
    assert table.main(["--dataset", "digits", "--experiment", EXP, "--out", str(tmp_path / "tables"), "--log"]) == 0
    tables = {f"reports/{p.name}" for p in (tmp_path / "tables").iterdir()}
    said = [line for line in (err + capsys.readouterr().err).splitlines() if line.startswith("logged to run ")]
    assert len(said) == 2 and said[0] == said[1] and f"in experiment '{EXP}'" in said[0]  # one report run
    assert not (tmp_path / "rank_fid_vs_fd_dinov2-digits.png").exists()
    drawn = [n for n in plots.PLOTS if n != "rank_fid_vs_fd_dinov2"]
    for name in drawn:
        p = tmp_path / f"{name}-digits.png"
        assert p.exists() and p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG"
    client = store["client"]
    reports = client.search_runs([store["exp"]], "tags.`wavebench.report` = 'true'")
    assert len(reports) == 1 and reports[0].info.run_name == "report"
    logged = {a.path for a in client.list_artifacts(reports[0].info.run_id, "reports")}
    assert logged == {f"reports/{n}-digits.png" for n in drawn} | tables and tables
    assert reports[0].info.run_id not in set(query.load_runs(EXP)["run_id"])  # never a measured row


def test_numbers_are_rounded_as_the_papers_print_them():
    pub, ours = table.MEASURES["time_s"].pub_fmt, table.MEASURES["time_s"].fmt
    assert [pub(v) for v in (0.08, 0.6, 8.79, 80.5, 423.2)] == ["0.08", "0.60", "8.79", "80.5", "423.2"]
    # Measured seconds: the same, but never "0.00" for a fast sampler.
    assert [ours(v) for v in (0.0034, 0.0456, 0.515, 2.474, 40.04)] == ["0.0034", "0.046", "0.52", "2.47", "40.0"]
    assert table.MEASURES["recall"].fmt(0.399) == "0.40" and table.MEASURES["recall"].pub_fmt(0.4) == "0.40"
    assert table.MEASURES["fid"].fmt(7.034) == "7.03" and table.MEASURES["fid"].pub_fmt(25.3) == "25.30"


def test_runs_of_another_precision_get_their_own_section(tmp_path, monkeypatch):
    """train.precision / eval.precision are part of the protocol: a bf16 run never shares a column with fp32."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    e = client.create_experiment("prec", artifact_location=(tmp_path / "a").as_uri())
    log_run(client, e, "wavediff", fid=10.0, time_s=0.5, published_row="WaveDiff", params=GAN_P)
    log_run(client, e, "wavediff", fid=11.0, time_s=0.4, published_row="WaveDiff", params=GAN_P, start=5,
            extra_params={"train.precision": "bf16", "eval.precision": "fp32"})
    runs = query.load_runs("prec")
    protocols = query.protocols(runs)
    assert sorted(p.precision for p in protocols) == ["bf16/fp32", "fp32/fp32"]
    bf16 = next(p for p in protocols if p.precision == "bf16/fp32")
    assert bf16.label().endswith(", precision train bf16 / sampling fp32") and bf16.slug().endswith("bf16-fp32")
    text = table.render(table.build_report(table.table_for_dataset("digits"), "prec", datasets=["digits"],
                                           measured_only=True), "md")
    assert "precision train bf16 / sampling fp32" in text and "10.00" in text and "11.00" in text
