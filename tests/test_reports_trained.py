"""Tables and plots from runs trained for real: tiny jobs through the suite's own pipeline into a temporary MLflow
store (bench.job.run_job in this process; ddgan + wavediff through ``make demo``'s code path, bench.demo ->
bench.run.run_grid with the local executor). Every checked cell is compared with what the runs logged, read back
with MlflowClient; the published numbers are compared with reports/published.yaml."""
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb
from mlflow.tracking import MlflowClient

from bench import demo, registry
from bench.job import run_job
from conftest import micro
from reports import columns, plots, table

EXP = "trained"
GRID = "tiny-demo"
TABLES = ("cifar10", "ablation", "wddm", "dvdp", "ddim")
# (variant, seed) trained in this process; ddim-10 / ddim-20 sample the ddpm checkpoint (trains_as = ddpm).
JOBS = [("wavediff", 1), ("wavediff-wg", 0), ("ddpm", 0), ("ddim-10", 0), ("ddim-20", 0), ("wddm-unet-l1", 0),
        ("dvdp-tp1", 0)]
# Trained by bench.demo (seed 0), 4 steps with FID every 2 steps (the convergence curve).
DEMO = ["ddgan", "wavediff"]
PUBLISHED = yaml.safe_load(table.PUBLISHED_YAML.read_text())["tables"]


@dataclass
class Trained:
    client: MlflowClient
    runs: dict          # variant -> its FINISHED runs (mlflow Run), seed order
    demo_rc: int
    demo_out: Path
    demo_ids: list      # the run ids of the demo grid
    tmp: Path


@pytest.fixture(scope="module")
def trained(module_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the runner's job processes get OMP_NUM_THREADS=1: one timing protocol for all runs
    torch.manual_seed(0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OMP_NUM_THREADS", "1")
            for variant, seed in JOBS:
                r = run_job(registry.resolve(micro(variant, seed=seed)), experiment=EXP, progress=False)
                assert r.status == "FINISHED", (variant, r.reason)
            defaults = {k: v for k, v in micro(DEMO[0]).items() if k != "variant"}
            defaults.update({"train.max_steps": 4, "eval.every_steps": 2, "eval.every_num_samples": 16})
            grid = tmp / f"{GRID}.yaml"
            grid.write_text(yaml.safe_dump({"name": GRID, "experiment": EXP, "defaults": defaults,
                                            "axes": {"variant": DEMO},
                                            "executor": {"name": "local", "max_parallel": 1}}))
            rc = demo.main(["--grid", str(grid), "--out", str(tmp / "demo")])
    finally:
        torch.set_num_threads(threads)
    client = MlflowClient(module_store)
    exp = client.get_experiment_by_name(EXP)
    runs: dict = {}
    for r in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if r.data.tags.get("variant"):
            runs.setdefault(r.data.tags["variant"], []).append(r)
    for rs in runs.values():
        rs.sort(key=lambda r: int(r.data.params["seed"]))
    demo_ids = [r.info.run_id for rs in runs.values() for r in rs if r.data.tags.get("grid") == GRID]
    return Trained(client, runs, rc, tmp / "demo", demo_ids, tmp)


# ============================================================================================== helpers

# The tables' own number formats (test_number_formats_are_the_papers pins them to literal strings).
fixed, sig, seconds = columns._fixed, columns._sig, columns._time
published_seconds, ratio_text = columns._time_published, columns.ratio_text


def test_number_formats_are_the_papers():
    assert fixed(2)(6.9149) == "6.91" and fixed(4)(0.01236) == "0.0124" and fixed(0)(4.0) == "4"
    assert [sig(v) for v in (1234.56, 18.53, 0.5413, 0.0, 0.000123)] == ["1235", "18.5", "0.541", "0.00", "1.23e-04"]
    assert [published_seconds(v) for v in (0.08, 0.6, 8.789, 80.5, 423.17)] == ["0.08", "0.60", "8.79", "80.5",
                                                                                 "423.2"]
    assert [seconds(v) for v in (0.0034, 0.0813, 0.54, 12.34)] == ["0.0034", "0.081", "0.54", "12.3"]
    assert ratio_text(2.86, "DDGAN") == "2.9x faster than DDGAN" and ratio_text(0.5, "DDGAN") == "2.0x slower than DDGAN"
    assert ratio_text(12.4, "DDPM") == "12x faster than DDPM"


def values(runs, metric, scale=1.0):
    return [r.data.metrics[metric] * scale for r in runs]


def expected(runs, metric, fmt, scale=1.0):
    """A measured cell: the value, or mean ± std (ddof 1) over seeds when they differ."""
    v = values(runs, metric, scale)
    std = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{fmt(np.mean(v))} ± {fmt(std)}" if std > 0 else fmt(v[0])


def section(rep):
    assert len(rep.sections) == 1, [s.heading for s in rep.sections]
    s = rep.sections[0]
    assert s.protocol is not None and s.protocol.dataset == "digits" and s.protocol.scale == "tiny"
    return s


def cell(sec, model, col):
    hit = sec.frame.loc[sec.frame["Model"] == model, col]
    assert len(hit) == 1, (model, col, sec.frame["Model"].tolist())
    return hit.iloc[0]


def row_name(run):
    """The row a measured run lands in when its table lists every variant (cifar10: extra = all)."""
    return run.data.tags["published_row"] or run.data.tags["variant"]


MAIN_MEASURED = {  # column (--wide) -> (metric, format, scale)
    "FID (measured)": ("fid", fixed(2), 1.0),
    "Recall (measured)": ("recall", fixed(2), 1.0),
    "Precision (measured)": ("precision", fixed(2), 1.0),
    "KID (measured)": ("kid_mean", fixed(4), 1.0),
    "NFE (measured)": ("nfe", fixed(0), 1.0),
    "Time (s/batch) (measured)": ("sampling_s_per_batch_mean", seconds, 1.0),
    "GFLOPs/sample (measured)": ("gflops_per_sample", sig, 1.0),
    "Train wall-clock (min) (measured)": ("train_wall_clock_s", sig, 1 / 60),
}
PAPER_MEASURED = {  # the paper-width view's measured columns (the default)
    "FID (measured)": MAIN_MEASURED["FID (measured)"], "Recall (measured)": MAIN_MEASURED["Recall (measured)"],
    "NFE (measured)": MAIN_MEASURED["NFE (measured)"], "Time (measured)": MAIN_MEASURED["Time (s/batch) (measured)"],
}


# ============================================================================================== tables

def test_every_run_shares_one_recorded_protocol(trained):
    assert set(trained.runs) == {v for v, _ in JOBS} | set(DEMO)
    assert [int(r.data.params["seed"]) for r in trained.runs["wavediff"]] == [0, 1]
    keys = ("metric_backbone", "metric_backbone_fid", "metric_implementation", "device", "timing_device",
            "timing_threads")
    protocol = {(tuple(r.data.tags[k] for k in keys), r.data.params["eval.metrics.num_samples"],
                 r.data.params["eval.timing.batch_size"]) for rs in trained.runs.values() for r in rs}
    assert len(protocol) == 1, protocol
    assert trained.demo_rc == 0 and len(trained.demo_ids) == 2


def test_main_table_cells_are_the_logged_values(trained):
    rep = table.build_report("cifar10", EXP, datasets=["digits"], wide=True)
    sec = section(rep)
    spec = PUBLISHED["cifar10"]
    runs = trained.runs
    # Rows: the paper's, in its order and with its names, then one row per measured variant it lacks.
    models = sec.frame["Model"].tolist()
    assert models[:len(spec["rows"])] == [r["model"] for r in spec["rows"]]
    paper = {r["model"] for r in spec["rows"]}
    extra = [row_name(rs[0]) for v, rs in runs.items() if row_name(rs[0]) not in paper]
    assert sorted(models[len(spec["rows"]):]) == sorted(extra)
    for variant, rs in runs.items():
        model = row_name(rs[0])
        assert cell(sec, model, "Variant") == variant
        assert cell(sec, model, "Runs") == str(len(rs))
        for col, (metric, fmt, scale) in MAIN_MEASURED.items():
            assert cell(sec, model, col) == expected(rs, metric, fmt, scale), (variant, col)
        gen = "params_generator" if "params_generator" in rs[0].data.metrics else "params_denoiser"
        assert cell(sec, model, "Params G/denoiser (M) (measured)") == expected(rs, gen, fixed(2), 1e-6)
        disc = cell(sec, model, "Params D (M) (measured)")
        assert disc == (expected(rs, "params_discriminator", fixed(2), 1e-6)
                        if "params_discriminator" in rs[0].data.metrics else "not logged")
        # Measured speed-up: the baseline's mean sampling time over this row's, same protocol.
        ratio = (np.mean(values(runs["ddgan"], "sampling_s_per_batch_mean"))
                 / np.mean(values(rs, "sampling_s_per_batch_mean")))
        assert cell(sec, model, "Sampling speed-up (measured)") == (
            "baseline" if variant == "ddgan" else ratio_text(ratio, "DDGAN"))
    assert "±" in cell(sec, "WaveDiff", "Time (s/batch) (measured)")  # two seeds, mean ± std
    assert cell(sec, "DDIM", "FID (measured)") == "missing"            # ddim-50 was not trained
    assert cell(sec, "NCSN", "FID (measured)") == "n/a"
    # Published values in their own columns, as published.yaml has them.
    for r in spec["rows"]:
        assert cell(sec, r["model"], "FID (published)") == f"{r['fid']:.2f}"
        assert cell(sec, r["model"], "Recall (published)") == ("-" if r["recall"] is None else f"{r['recall']:.2f}")
        assert cell(sec, r["model"], "NFE (published)") == f"{r['nfe']:.0f}"
        assert cell(sec, r["model"], "Time (s/batch) (published)") == ("-" if r["time_s"] is None
                                                                       else published_seconds(r["time_s"]))
    assert cell(sec, "WaveDiff", "Sampling speed-up (published)") == "2.6x faster than DDGAN"  # 0.21 / 0.08
    for model in extra:
        assert cell(sec, model, "FID (published)") == "-"
    # The default, paper-width view: the same cells in fewer columns; the speed-up's header names the baseline.
    paper = section(table.build_report("cifar10", EXP, datasets=["digits"]))
    assert list(paper.frame.columns) == [
        "Model", "Variant", "FID (published)", "FID (measured)", "Recall (published)", "Recall (measured)",
        "NFE (published)", "NFE (measured)", "Time (published)", "Time (measured)", "Speed-up vs DDGAN (measured)"]
    for variant, rs in runs.items():
        model = row_name(rs[0])
        for col, (metric, fmt, scale) in PAPER_MEASURED.items():
            assert cell(paper, model, col) == expected(rs, metric, fmt, scale), (variant, col)
        assert cell(paper, model, "Time (published)") == cell(sec, model, "Time (s/batch) (published)")
        assert cell(sec, model, "Sampling speed-up (measured)").startswith(
            cell(paper, model, "Speed-up vs DDGAN (measured)"))


def test_footer_states_the_recorded_protocol(trained):
    rep = table.build_report("cifar10", EXP, datasets=["digits"])
    sec = section(rep)
    run = trained.runs["ddgan"][0]
    tags, params = run.data.tags, run.data.params
    n, batch = params["eval.metrics.num_samples"], params["eval.timing.batch_size"]
    device = f"{tags['device']} ({tags['timing_device']}, {tags['timing_threads']} threads)"
    assert (n, batch, tags["timing_threads"]) == ("24", "4", "1")
    assert sec.heading == (f"Measured under: digits, scale tiny, metrics {tags['metric_backbone']} on {n} samples, "
                           f"timing {device}, batch {batch}")
    proto = sec.lines[0]
    for part in (f"with {tags['metric_backbone_fid']} ({tags['metric_implementation']}) on {n} generated samples",
                 f"mean seconds per batch of {batch}",
                 f"{params['eval.timing.repeats']} timed runs after {params['eval.timing.warmup']} warm-up runs",
                 f"on {device}."):
        assert part in proto, part
    n_runs = sum(len(rs) for rs in trained.runs.values())
    assert any(line.startswith(f"Runs: {n_runs} FINISHED runs in experiment '{EXP}'") for line in sec.lines)
    assert any("Missing measured rows (ddim-50)" in line for line in sec.lines)
    md = table.render(rep, "md")
    assert f"### {sec.heading}" in md and all(f"- {line}" in md for line in sec.lines)


def test_ablation_wddm_dvdp_ddim_cells(trained):
    runs = trained.runs
    t = lambda v, m: np.mean(values(runs[v], m))  # noqa: E731

    ab = section(table.build_report("ablation", EXP, wide=True))
    assert ab.frame["Model"].tolist() == ["w/o residual", "w/o up & down", "w/o bottleneck", "full model",
                                          "DDGAN", "WaveDiff"]  # the paper's rows, then the listed extras
    assert cell(ab, "full model", "Variant") == "wavediff-wg"
    assert cell(ab, "full model", "FID (measured)") == expected(runs["wavediff-wg"], "fid", fixed(2))
    assert cell(ab, "full model", "FID (published)") == "5.94"
    assert cell(ab, "full model", "Sampling speed-up (measured)") == "baseline"
    assert cell(ab, "DDGAN", "Sampling speed-up (measured)") == ratio_text(
        t("wavediff-wg", "sampling_s_per_batch_mean") / t("ddgan", "sampling_s_per_batch_mean"), "the full model")
    assert cell(ab, "w/o residual", "FID (measured)") == "missing"
    assert cell(ab, "w/o residual", "FID (published)") == "6.25"
    assert any("published numbers are on celebahq256, measured ones on digits" in line for line in ab.lines)

    w = section(table.build_report("wddm", EXP, wide=True))
    assert not any("(published)" in c for c in w.frame.columns)
    for model, v in (("Pixel DDPM (UNet)", "ddpm"), ("WDDM UNet L1", "wddm-unet-l1")):
        assert cell(w, model, "Variant") == v
        assert cell(w, model, "FID (measured)") == expected(runs[v], "fid", fixed(2))
        assert cell(w, model, "Train throughput (img/s) (measured)") == expected(runs[v], "train_images_per_s", sig)
        assert cell(w, model, "Train time (s/epoch) (measured)") == expected(runs[v], "train_s_per_epoch", sig)
        assert cell(w, model, "Params G/denoiser (M) (measured)") == expected(runs[v], "params_denoiser",
                                                                              fixed(2), 1e-6)
    assert cell(w, "WDDM UNet L1", "Training speed-up (measured)") == ratio_text(
        t("wddm-unet-l1", "train_images_per_s") / t("ddpm", "train_images_per_s"), "pixel DDPM")
    assert cell(w, "WDDM UNet L1", "Sampling speed-up (measured)") == ratio_text(
        t("ddpm", "sampling_s_per_batch_mean") / t("wddm-unet-l1", "sampling_s_per_batch_mean"), "pixel DDPM")
    assert cell(w, "WDDM UNet L1", "Params G/denoiser (M) (reference)") == "26.20"
    assert cell(w, "WDDM UKAN L1", "FID (measured)") == "missing"

    d = section(table.build_report("dvdp", EXP, wide=True))
    tp1 = runs["dvdp-tp1"][0].data.params
    assert cell(d, "DVDP, 1 turning point", "FID (measured)") == expected(runs["dvdp-tp1"], "fid", fixed(2))
    assert cell(d, "DVDP, 1 turning point", "Config (turning points)") == "; ".join(
        f"{k}={v}" for k, v in sorted(tp1.items()) if "turning" in k)
    assert "500" in cell(d, "DVDP, 1 turning point", "Config (turning points)")
    assert cell(d, "DVDP, 1 turning point", "Training speed-up (measured)") == ratio_text(
        t("dvdp-tp1", "train_images_per_s") / t("ddpm", "train_images_per_s"), "DDPM")
    assert cell(d, "DDPM", "Sampling speed-up (measured)") == "baseline"
    assert cell(d, "DVDP", "FID (measured)") == "missing"
    assert cell(d, "Subspace Diffusion", "FID (published)") == "2.17"

    s = section(table.build_report("ddim", EXP, wide=True))
    for model, v in (("S = 10", "ddim-10"), ("S = 20", "ddim-20"), ("S = 1000", "ddpm")):
        p = runs[v][0].data.params
        assert cell(s, model, "Variant") == v
        assert cell(s, model, "FID (measured)") == expected(runs[v], "fid", fixed(2))
        assert cell(s, model, "NFE (measured)") == expected(runs[v], "nfe", fixed(0))
        assert (cell(s, model, "Sampler (measured)"), cell(s, model, "eta (measured)"),
                cell(s, model, "Spacing (measured)")) == (p["eval.sampler"], p["eval.eta"], p["eval.spacing"])
    assert cell(s, "S = 10", "NFE (measured)") == "10" and cell(s, "S = 20", "NFE (measured)") == "20"
    assert cell(s, "S = 10", "Spacing (measured)") == "quadratic"
    assert cell(s, "S = 10", "FID eta=0 (published)") == "13.36"
    assert cell(s, "S = 10", "Sampling speed-up (measured)") == ratio_text(
        t("ddpm", "sampling_s_per_batch_mean") / t("ddim-10", "sampling_s_per_batch_mean"), "DDPM (1000 steps)")
    assert cell(s, "S = 50", "FID (measured)") == "missing"


def test_published_values_stay_in_their_columns(trained):
    """The published cells of the paper's rows are the same with and without measured runs, and the measured
    cells of an empty store are all placeholders. (Reference columns follow the measured data set's paper
    configuration, so they may change: the ablation's empty table shows CelebA-HQ 256's, digits runs CIFAR-10's.)"""
    for name in TABLES:
        full = section(table.build_report(name, EXP))
        empty = table.build_report(name, "no-such-experiment").sections[0]
        assert empty.protocol is None
        n = len(PUBLISHED[name]["rows"])
        assert list(empty.frame.columns) == list(full.frame.columns)
        published_cols = [c for c in full.frame.columns if "(published)" in c]
        pd.testing.assert_frame_equal(full.frame[published_cols].iloc[:n], empty.frame[published_cols].iloc[:n])
        measured_cols = [c for c in full.frame.columns if "(measured)" in c]
        assert set(np.unique(empty.frame[measured_cols].iloc[:n].to_numpy())) <= {"missing", "n/a", ""}
        assert (full.frame[measured_cols].iloc[:n] != empty.frame[measured_cols].iloc[:n]).any().any()


class _Cells(HTMLParser):
    """Rows of <th>/<td> text of an HTML table."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _untex(s):
    for k, v in {r"$\pm$": "±", r"$\rightarrow$": "->", r"\_": "_", r"\&": "&", r"\%": "%", r"\#": "#"}.items():
        s = s.replace(k, v)
    return s


def _cells(text, fmt):
    """[header, *rows] of the one table in a rendering."""
    if fmt == "md":
        lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
        return [[c.strip() for c in ln[2:-2].split(" | ")] for ln in lines]
    if fmt == "latex":
        lines = text.splitlines()
        body = lines[lines.index("\\toprule") + 1:lines.index("\\bottomrule")]
        return [[_untex(c.strip()) for c in ln.rstrip().removesuffix("\\\\").split(" & ")]
                for ln in body if ln != "\\midrule"]
    parser = _Cells()
    parser.feed(text)
    return parser.rows


@pytest.mark.parametrize("name", TABLES)
def test_every_format_carries_the_same_cells(trained, name, tmp_path, capsys):
    rep = table.build_report(name, EXP)
    sec = section(rep)
    want = [list(sec.frame.columns)] + [list(r) for r in sec.frame.itertuples(index=False)]
    for fmt in ("md", "latex", "html"):
        text = table.render(rep, fmt)
        assert _cells(text, fmt) == want, fmt
        plain = _untex(text) if fmt == "latex" else unescape(text)
        assert sec.heading in plain and all(line in plain for line in sec.lines), fmt
    csv = pd.read_csv(StringIO(table.render(rep, "csv")))
    assert csv["model"].tolist() == sec.frame["Model"].tolist()
    for _, r in csv[csv["status"] == "ok"].iterrows():
        rs = trained.runs[r["variant"]]
        assert r["n"] == len(rs) and r["samples"] == 24 and r["timing_batch"] == 4
        assert sorted(str(r["run_ids"]).split()) == sorted(x.info.run_id for x in rs)
        if "fid_mean" in csv:
            assert r["fid_mean"] == pytest.approx(np.mean(values(rs, "fid")))
        if "time_s_mean" in csv:
            assert r["time_s_mean"] == pytest.approx(np.mean(values(rs, "sampling_s_per_batch_mean")))
        if "nfe_mean" in csv:
            assert r["nfe_mean"] == np.mean(values(rs, "nfe"))
    pub = {row["model"]: row for row in PUBLISHED[name]["rows"]}
    for key in [c.removesuffix("_published") for c in csv.columns if c.endswith("_published")
                and c != "speedup_published"]:
        for _, r in csv[csv["published_row"]].iterrows():
            v = pub[r["model"]].get(key)
            assert (np.isnan(r[f"{key}_published"]) if v is None else r[f"{key}_published"] == pytest.approx(v))
    # The command line prints the chosen format and always writes the Markdown next to it.
    assert table.main(["--table", name, "--experiment", EXP, "--format", "latex", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == table.render(rep, "latex").strip()
    assert (tmp_path / f"table-{name}.md").read_text() == table.render(rep, "md")


# ============================================================================================== plots

def _spy(monkeypatch):
    """Captures each figure's axes just before reports.plots saves it."""
    seen = {}
    finish = plots._finish

    def spy(fig, path, handles=None):
        seen[path.stem.rsplit("-", 1)[0]] = (list(fig.axes), list(handles or []))
        return finish(fig, path, handles)

    monkeypatch.setattr(plots, "_finish", spy)
    return seen


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9)


def _rgb(artist):
    return tuple(np.round(to_rgb(artist.get_color()), 4))


def _by_colour(handles):
    """Legend label of each colour (a variant or a series)."""
    return {_rgb(h): h.get_label() for h in handles}


def test_plots_show_the_logged_values(trained, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    assert plots.main(["--dataset", "digits", "--experiment", EXP, "--out", str(tmp_path), "--log"]) == 0
    drawn = [n for n in plots.PLOTS if n != "rank_fid_vs_fd_dinov2"]  # these runs log no DINOv2 metrics
    for name in drawn:
        p = tmp_path / f"{name}-digits.png"
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 10_000, name
    runs = trained.runs

    # FID vs sampling time: one point per variant at (mean time, mean FID); the Pareto front circled.
    (ax,), handles = seen["fid_vs_time"]
    colour = _by_colour([h for h in handles if h.get_label() != "Pareto front"])
    points = {colour[_rgb(c.lines[0])]: tuple(c.lines[0].get_xydata()[0]) for c in ax.containers}
    want = {v: (np.mean(values(rs, "sampling_s_per_batch_mean")), np.mean(values(rs, "fid"))) for v, rs in runs.items()}
    assert set(points) == set(want)
    for v in want:
        assert points[v] == pytest.approx(want[v]), v
    front = {v for v, (x, y) in want.items()
             if not any(x2 <= x and y2 <= y and (x2, y2) != (x, y) for x2, y2 in want.values())}
    (circles,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    close(sorted(map(tuple, circles.get_offsets())), sorted(want[v] for v in front))
    assert 1 <= len(front) < len(want)
    assert ax.get_xscale() == "log" and "s per batch of 4" in ax.get_xlabel()
    assert ax.get_ylabel().startswith("FID (digits-classifier, 24 samples)")

    # Convergence, two panels (against training wall-clock in seconds, against training steps): one line per run
    # through its fid_intermediate points, the final FID a star of the same colour, apart from the line (fewer
    # samples during training: another protocol).
    axes, handles = seen["convergence"]
    assert [ax.get_xlabel() for ax in axes] == ["training wall-clock (s)", "training step"]
    colour = _by_colour([h for h in handles if h.get_label() in runs])
    labels = [h.get_label() for h in handles]
    assert "FID during training (16 samples)" in labels and "final FID (24 samples)" in labels
    client = trained.client
    for ax, wall_clock in zip(axes, (True, False)):
        lines, stars = {}, {}
        for ln in ax.lines:
            into = stars if ln.get_marker() == "*" else lines
            into.setdefault(colour[_rgb(ln)], []).append(sorted(map(tuple, ln.get_xydata().tolist())))
        for v, rs in runs.items():
            want_lines, want_stars = [], []
            for r in rs:
                wall = client.get_metric_history(r.info.run_id, "train_wall_clock_s")
                inter = client.get_metric_history(r.info.run_id, "fid_intermediate")
                # The wall-clock logged in the same call as each intermediate FID (same step and timestamp).
                pts = [((next(w.value for w in wall if (w.step, w.timestamp) == (m.step, m.timestamp))
                         if wall_clock else m.step), m.value) for m in inter]
                if pts:
                    want_lines.append(sorted(pts))
                (final,) = client.get_metric_history(r.info.run_id, "fid")
                last_wall = max((w for w in wall if w.step == final.step), key=lambda w: w.timestamp).value
                want_stars.append([(last_wall if wall_clock else final.step, final.value)])
            assert len(lines.get(v, [])) == len(want_lines) and len(stars[v]) == len(want_stars), v
            for a, b in zip(sorted(lines.get(v, [])), sorted(want_lines)):
                close(a, b)
            for a, b in zip(sorted(stars[v]), sorted(want_stars)):
                close(a, b)
        # The demo's runs: FID at steps 2 and 4 (eval.every_steps = 2), the final FID at step 4 beside it.
        for v in DEMO:
            (line,) = lines[v]  # only the demo's run of each variant logged intermediate FIDs
            assert len(line) == 2
            if not wall_clock:
                assert [x for x, _ in line] == [2, 4] and [4] in [[x for x, _ in star] for star in stars[v]]

    # FID vs DDIM steps: each series' points at (steps = the NFE the run counted, FID).
    (ax,), handles = seen["fid_vs_ddim_steps"]
    colour = _by_colour(handles)
    series = {colour[_rgb(c.lines[0])]: sorted(map(tuple, c.lines[0].get_xydata())) for c in ax.containers}
    want_series: dict = {}
    for v, rs in runs.items():
        p = rs[0].data.params
        if p.get("eval.sampler") != "ddim" and v != "ddpm":
            continue
        model = "ddpm model" if v == "ddpm" or v.startswith("ddim-") else v
        label = f"{model}: DDIM, eta {p['eval.eta']}, {p['eval.spacing']}"
        want_series.setdefault(label, []).append((np.mean(values(rs, "nfe")), np.mean(values(rs, "fid"))))
    assert set(series) == set(want_series)
    for label, pts in want_series.items():
        close(series[label], sorted(pts))
    assert series["ddpm model: DDIM, eta 0.0, quadratic"][0][0] == 10  # ddim-10 and ddim-20 on one curve
    assert "sampling steps" in ax.get_xlabel() and ax.get_xscale() == "log"

    # GFLOPs per sample: one bar per variant, its height the logged value.
    (ax,), _ = seen["gflops"]
    names = [t.get_text() for t in ax.get_xticklabels()]
    bars = {names[round(p.get_x() + p.get_width() / 2)]: p.get_height() for p in ax.patches
            if np.isfinite(p.get_height()) and p.get_height() > 0}
    assert bars == pytest.approx({v: np.mean(values(rs, "gflops_per_sample")) for v, rs in runs.items()})
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "GFLOPs per sample (log scale)"

    # --log: the PNGs are artifacts of the experiment's report run, which is never a measured row.
    client = trained.client
    exp = client.get_experiment_by_name(EXP).experiment_id
    (report,) = client.search_runs([exp], "tags.`wavebench.report` = 'true'")
    assert {a.path for a in client.list_artifacts(report.info.run_id, "reports")} == {
        f"reports/{n}-digits.png" for n in drawn}


# ============================================================================================== make demo

def test_demo_prints_reports_table_of_its_own_runs(trained, tmp_path, capsys):
    md = (trained.demo_out / "demo.md").read_text()
    rep = table.build_report("cifar10", EXP, datasets=["digits"], run_ids=trained.demo_ids, measured_only=True)
    rendered = table.render(rep, "md").rstrip()
    assert rendered in md
    sec = section(rep)
    # Only the demo's runs (not the other variants, nor wavediff's seed-1 run of the same experiment).
    assert sec.frame["Model"].tolist() == ["WaveDiff", "DDGAN"]
    assert not any("(published)" in c or "(reference)" in c for c in sec.frame.columns)
    demo_runs = {v: [r for r in trained.runs[v] if r.info.run_id in trained.demo_ids] for v in DEMO}
    assert list(sec.frame.columns) == ["Model", "Variant", *PAPER_MEASURED, "Speed-up vs DDGAN (measured)"]
    for model, v in (("WaveDiff", "wavediff"), ("DDGAN", "ddgan")):
        for col, (metric, fmt, scale) in PAPER_MEASURED.items():
            assert cell(sec, model, col) == expected(demo_runs[v], metric, fmt, scale), (v, col)
    assert any("(one seed per row)" in line for line in sec.lines)
    ratio = (demo_runs["ddgan"][0].data.metrics["sampling_s_per_batch_mean"]
             / demo_runs["wavediff"][0].data.metrics["sampling_s_per_batch_mean"])
    assert cell(sec, "WaveDiff", "Speed-up vs DDGAN (measured)") == ratio_text(ratio, "DDGAN").removesuffix(
        " than DDGAN")
    assert "4.01" not in rendered and "Published:" not in rendered
    assert "every number above was measured by this demo's runs" in md and "`make table-cifar10`" in md
    for v in DEMO:
        assert (trained.demo_out / f"samples-{v}.png").read_bytes()[:4] == b"\x89PNG"
    # The command the demo names renders the same table.
    assert table.main(["--dataset", "digits", "--experiment", EXP, "--measured-only", "--filter",
                       f"tags.grid = '{GRID}'", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == rendered
    assert (tmp_path / "table-cifar10-digits-measured.md").exists()
    assert f"--measured-only --filter \"tags.grid = '{GRID}'\"" in md
