"""``--metrics dinov2`` tables and the FID-rank vs FD-DINOv2-rank plot, from a real temporary MLflow store filled
with runs in bench.job's schema (tests/test_reports.py's ``log_run``), some of which logged the ``dinov2`` metric
set beside the paper set. The two rankings of the digits variants differ on purpose."""
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy.stats import kendalltau

from reports import plots, query, table
from test_reports import GAN_P, log_run

EXP = "metric-sets"
VIT_S = "dinov2-vit-s-14"
TAG_S = f"{VIT_S} (CLS token after the final LayerNorm, 384-d, 224 px; weights dinov2_vits14_pretrain.pth 0123456789ab)"
TAG_L = "dinov2-vit-l-14 (CLS token after the final LayerNorm, 1024-d, 224 px; weights dinov2_vitl14_pretrain.pth ba98)"
CONFIG = {"eval.metrics.dinov2_model": VIT_S, "eval.metrics.dinov2_neighborhood": "5",
          "eval.metrics.reference_split": "train"}
# Digits protocol: (variant, seed, fid, dinov2 set or None, tag). wavediff seed 1 records its model only in its
# config (no tag); wavediff-wg seed 1 and ddpm did not log the set.
DIGITS = [
    ("ddgan", 0, 30.0, dict(fd_dinov2=450.0, precision_dinov2=0.55, recall_dinov2=0.30, density_dinov2=0.80,
                            coverage_dinov2=0.40), TAG_S),
    ("wavediff", 0, 20.0, dict(fd_dinov2=500.0, precision_dinov2=0.61, recall_dinov2=0.52, density_dinov2=1.234,
                               coverage_dinov2=0.71), TAG_S),
    ("wavediff", 1, 22.0, dict(fd_dinov2=520.0, precision_dinov2=0.63, recall_dinov2=0.50, density_dinov2=1.10,
                               coverage_dinov2=0.69), None),
    ("wavediff-wg", 0, 18.0, dict(fd_dinov2=1234.56, precision_dinov2=0.70, recall_dinov2=0.20, density_dinov2=0.456,
                                  coverage_dinov2=0.33), TAG_S),
    ("wavediff-wg", 1, 40.0, None, None),
    ("wddm-unet-l1", 0, 17.0, dict(fd_dinov2=480.0, precision_dinov2=0.66, recall_dinov2=0.44, density_dinov2=0.999,
                                   coverage_dinov2=0.58), TAG_S),
    ("ddpm", 0, 15.0, None, None),
]
# The FID and FD-DINOv2 of the variants that logged both, from the same runs (wavediff-wg: its seed 0 only).
FID = {"ddgan": 30.0, "wavediff": 21.0, "wavediff-wg": 18.0, "wddm-unet-l1": 17.0}
FD = {"ddgan": 450.0, "wavediff": 510.0, "wavediff-wg": 1234.56, "wddm-unet-l1": 480.0}


@pytest.fixture(scope="module")
def store(module_store):
    """The runs the tests read, in the module's MLflow store (conftest's ``module_store``)."""
    uri, artifacts = module_store, Path(os.environ["WAVEBENCH_ARTIFACT_ROOT"])
    client = MlflowClient(uri)
    e = client.create_experiment(EXP, artifact_location=artifacts.as_uri())
    rows = {"ddgan": "DDGAN", "wavediff": "WaveDiff", "ddpm": "DDPM"}
    for i, (v, seed, fid, dino, tag) in enumerate(DIGITS):
        family = "diffusion" if v.startswith(("ddpm", "wddm")) else "gan"
        rid = log_run(client, e, v, fid=fid, time_s=0.5 + i, seed=seed, start=i, family=family,
                      published_row=rows.get(v, ""), params={**GAN_P, **(dino or {})}, extra_params=CONFIG)
        if tag:
            client.set_tag(rid, "metric_backbone_dinov2", tag)
    # Another protocol on digits (Inception backbone): wavediff measured with ViT-L/14, ddgan's run recorded no
    # DINOv2 model at all: two column groups, never one average.
    rid = log_run(client, e, "wavediff", fid=50.0, time_s=0.7, backbone="inception-vgg16", published_row="WaveDiff",
                  params={**GAN_P, "fd_dinov2": 900.0, "precision_dinov2": 0.4, "recall_dinov2": 0.3,
                          "density_dinov2": 0.5, "coverage_dinov2": 0.25})
    client.set_tag(rid, "metric_backbone_dinov2", TAG_L)
    log_run(client, e, "ddgan", fid=70.0, time_s=2.1, backbone="inception-vgg16", published_row="DDGAN",
            params={**GAN_P, "fd_dinov2": 950.0, "precision_dinov2": 0.35, "recall_dinov2": 0.2,
                    "density_dinov2": 0.45, "coverage_dinov2": 0.2})
    # CIFAR-10 at paper scale, no dinov2 set at all.
    log_run(client, e, "wavediff", fid=4.5, time_s=0.1, dataset="cifar10", scale="paper",
            backbone="inception-vgg16", published_row="WaveDiff", params=GAN_P)
    yield {"uri": uri, "client": client}


def section(rep, dataset, backbone="digits-classifier"):
    hits = [s for s in rep.sections if s.protocol.dataset == dataset and s.protocol.backbone == backbone]
    assert len(hits) == 1, [s.heading for s in rep.sections]
    return hits[0]


def cell(sec, model, column):
    rows = sec.frame[sec.frame["Model"] == model]
    assert len(rows) == 1, (model, sec.frame["Model"].tolist())
    return rows.iloc[0][column]


def col(label, model=VIT_S):
    return f"{label} (measured; {model})"


@pytest.fixture(scope="module")
def report(store):
    return table.build_report("cifar10", EXP, metrics="dinov2")


def test_dinov2_columns_hold_the_logged_values(report):
    dig = section(report, "digits")
    paper = list(section(table.build_report("cifar10", EXP), "digits").frame.columns)
    labels = ["FD-DINOv2", "Precision", "Recall", "Density", "Coverage"]
    # The paper-width columns first, unchanged, then one DINOv2 group naming its model.
    assert list(dig.frame.columns) == paper + [col(x) for x in labels]
    assert cell(dig, "DDGAN", col("FD-DINOv2")) == "450.00"
    assert cell(dig, "DDGAN", col("Precision")) == "0.55" and cell(dig, "DDGAN", col("Coverage")) == "0.40"
    # Two seeds: mean ± standard deviation, as for FID; density may exceed 1.
    assert cell(dig, "WaveDiff", col("FD-DINOv2")) == "510.00 ± 14.14"
    assert cell(dig, "WaveDiff", col("Precision")) == "0.62 ± 0.01"
    assert cell(dig, "WaveDiff", col("Density")) == "1.17 ± 0.09"
    assert cell(dig, "wddm-unet-l1", col("Density")) == "1.00" and cell(dig, "wddm-unet-l1", col("Recall")) == "0.44"
    # FD from 1000 on: one decimal. Only wavediff-wg's seed 0 logged the set, its FID averages both seeds.
    assert cell(dig, "wavediff-wg", col("FD-DINOv2")) == "1234.6"
    assert cell(dig, "wavediff-wg", col("Precision")) == "0.70"
    assert cell(dig, "wavediff-wg", "FID (measured)") == "29.00 ± 15.56"
    # A run without the set: "not logged" in every DINOv2 column, never blank or zero; rows without a run keep
    # their own marker.
    for x in labels:
        assert cell(dig, "DDPM", col(x)) == table.NOT_LOGGED
        assert cell(dig, "NCSN", col(x)) == table.NOT_REPRODUCED
    assert cell(dig, "DDPM", "FID (measured)") == "15.00"
    # No published DINOv2 value exists: nothing from published.yaml in these columns.
    assert "4.01" not in dig.frame[[col(x) for x in labels]].to_numpy()


def test_footer_names_the_dinov2_protocol(report):
    lines = section(report, "digits").lines
    assert lines[0].startswith("Measured protocol: data set digits")
    dino = lines[1]
    assert dino.startswith(f"DINOv2 protocol ({VIT_S}): FD-DINOv2 (Frechet distance) and precision, recall, density, "
                           "coverage (k = 5)")
    # The tag's full description, and the configured model of wavediff's seed 1 (no tag).
    assert TAG_S in dino and f"{VIT_S} (eval.metrics.dinov2_model of the run's config; weights not recorded)" in dino
    assert "on the same 1000 generated samples as the FID, against the digits train split" in dino
    assert "rows: WaveDiff, DDGAN, wavediff-wg, wddm-unet-l1" in dino
    assert "runs per row that logged it: wavediff-wg 1 of 2" in dino
    assert lines[2] == ("DINOv2 columns 'not logged': the runs of DDPM did not log the dinov2 metric set (their "
                        "eval.metrics.sets has no dinov2).")
    assert any("DINOv2 columns (--metrics dinov2): measured only" in n for n in report.notes)


def test_dinov2_models_are_never_averaged_together(report):
    inc = section(report, "digits", "inception-vgg16")
    vit_l, none = "dinov2-vit-l-14", "DINOv2, backbone not recorded"
    assert cell(inc, "WaveDiff", col("FD-DINOv2", vit_l)) == "900.00"
    assert cell(inc, "WaveDiff", col("FD-DINOv2", none)) == table.NOT_LOGGED
    assert cell(inc, "DDGAN", col("FD-DINOv2", none)) == "950.00"
    assert cell(inc, "DDGAN", col("FD-DINOv2", vit_l)) == table.NOT_LOGGED
    assert any(line.startswith("DINOv2 protocol (DINOv2, backbone not recorded):") and
               f"features of {query.DINOV2_NOT_RECORDED}" in line for line in inc.lines)
    assert any(line.startswith("Several DINOv2 models in this section") for line in inc.lines)
    # A section where no run logged the set: "not logged" under a header naming no model, and a footer saying so.
    cif = section(report, "cifar10", "inception-vgg16")
    assert cell(cif, "WaveDiff", col("FD-DINOv2", "DINOv2")) == table.NOT_LOGGED
    assert cell(cif, "DDGAN", col("FD-DINOv2", "DINOv2")) == table.MISSING
    assert any(line.startswith("DINOv2 columns: no run in this section logged the dinov2 metric set")
               for line in cif.lines)


def test_default_view_is_unchanged(store):
    default = table.build_report("cifar10", EXP)
    md = table.render(default, "md")
    assert "DINOv2" not in md and "dinov2" not in md
    assert default.metrics == "paper"
    with pytest.raises(ValueError, match="valid: paper, dinov2"):
        table.build_report("cifar10", EXP, metrics="dino")


@pytest.mark.parametrize("fmt", ["md", "latex", "html", "csv"])
def test_every_format_wide_and_measured_only(store, fmt, tmp_path, capsys):
    for extra, stem in (([], "table-cifar10-digits-dinov2"), (["--wide"], "table-cifar10-digits-dinov2-wide"),
                        (["--measured-only"], "table-cifar10-digits-dinov2-measured")):
        assert table.main(["--dataset", "digits", "--experiment", EXP, "--metrics", "dinov2", "--format", fmt,
                           "--out", str(tmp_path)] + extra) == 0
        out = capsys.readouterr().out
        assert (tmp_path / f"{stem}.{table.FORMATS[fmt]}").read_text().strip() == out.strip()
        if fmt == "csv":
            csv = pd.read_csv(io.StringIO(out))
            dig = csv[csv["backbone"] == "digits-classifier"].set_index("variant")
            assert dig.loc["wavediff", "fd_dinov2_mean"] == pytest.approx(510.0)
            assert dig.loc["wavediff", "density_dinov2_std"] == pytest.approx(np.std([1.234, 1.10], ddof=1))
            assert dig.loc["wavediff-wg", "fd_dinov2_n"] == 1 and dig.loc["wavediff", "dinov2_model"] == VIT_S
            assert np.isnan(dig.loc["ddpm", "fd_dinov2_mean"]) and dig.loc["ddpm", "fd_dinov2_n"] == 0
            inc = csv[csv["backbone"] == "inception-vgg16"].set_index("variant")
            assert inc.loc["ddgan", "fd_dinov2_mean[DINOv2 (backbone not recorded)]"] == pytest.approx(950.0)
            assert np.isnan(inc.loc["ddgan", "fd_dinov2_mean[dinov2-vit-l-14]"])
            continue
        header = {"md": f"| {col('FD-DINOv2')} ", "latex": f"{col('FD-DINOv2')} &",
                  "html": f"<th>{col('FD-DINOv2')}</th>"}[fmt]
        assert header in out, fmt
        value = {"md": "510.00 ± 14.14", "latex": r"510.00 $\pm$ 14.14", "html": "510.00 ± 14.14"}[fmt]
        assert value in out and "1234.6" in out and table.NOT_LOGGED in out
        assert f"DINOv2 protocol ({VIT_S})" in out
        if extra == ["--measured-only"]:
            assert "(published)" not in out and "NCSN" not in out
        if extra == ["--wide"]:
            assert "Precision (measured)" in out and col("Precision") in out  # both precisions, apart


def test_rank_plot_shows_kendall_tau(store, tmp_path, capsys):
    agg = query.aggregate(query.select_latest(query.load_runs(EXP, datasets=["digits"])))
    (panel,) = plots.rank_comparison(agg)  # the Inception section has one variant per DINOv2 model: no panel
    pts = panel["points"].set_index("variant")
    assert panel["model"] == VIT_S and panel["protocol"].backbone == "digits-classifier"
    assert pts["fid"].to_dict() == pytest.approx(FID) and pts["fd_dinov2"].to_dict() == pytest.approx(FD)
    # The rankings differ: wddm-unet-l1 is best by FID, ddgan by FD-DINOv2.
    assert pts["rank_fid"].to_dict() == {"wddm-unet-l1": 1, "wavediff-wg": 2, "wavediff": 3, "ddgan": 4}
    assert pts["rank_fd_dinov2"].to_dict() == {"ddgan": 1, "wddm-unet-l1": 2, "wavediff": 3, "wavediff-wg": 4}
    names = sorted(FID)
    tau, p = kendalltau([FID[v] for v in names], [FD[v] for v in names])
    assert panel["tau"] == pytest.approx(tau) and panel["p"] == pytest.approx(p) and tau < 0.5

    assert plots.main(["--dataset", "digits", "--experiment", EXP, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / "rank_fid_vs_fd_dinov2-digits.png"
    assert str(png) in out and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert f"{VIT_S}: Kendall's tau = {tau:.3f} (p = {p:.2g}, 4 variants)" in out
    assert f"Kendall tau = {float(tau)!r}" in Image.open(png).text["Description"]
