"""Plots from MLflow (seaborn, PNG): FID vs sampling time with the Pareto front, FID during training (against
training wall-clock and against training steps), FID vs DDIM steps, GFLOPs per sample, and, where runs logged the
``dinov2`` metric set, the variants' FID rank against their FD-DINOv2 rank with Kendall's tau.

    python -m reports.plots [--dataset digits] [--experiment NAME] [--out DIR] [--filter STR] [--log]

Runs of every experiment of the store (but ``perf``) unless ``--experiment`` names one. One panel per
measurement protocol (never two protocols on one axis; the convergence plot has a row of two panels per
protocol); the published DDIM curve is drawn only on CIFAR-10 panels. Files: ``<out>/<plot>-<dataset|all>.png``.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
from scipy.stats import kendalltau, rankdata  # noqa: E402

from reports import query  # noqa: E402
from reports.table import DINOV2_MEASURES, MEASURES, OUT_DIR, load_published  # noqa: E402

__all__ = ["PLOTS", "pareto_front", "plot_fid_vs_time", "plot_convergence", "plot_ddim_steps", "plot_gflops",
           "rank_comparison", "plot_rank_fid_vs_fd_dinov2", "make_plots", "main"]

PLOTS = ("fid_vs_time", "convergence", "fid_vs_ddim_steps", "gflops", "rank_fid_vs_fd_dinov2")
DDIM_FILL = "python -m bench.run --grid experiments/ddim_steps.yaml"


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats in both x and y (lower is better in both)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        keep[i] = not dominated.any()
    return keep


def _palette(variants) -> dict:
    names = sorted(set(variants), key=query.natural_key)
    return dict(zip(names, sns.color_palette("tab20", max(len(names), 1))))


def _title(p: query.Protocol) -> str:
    return "\n".join(textwrap.wrap(p.label(), 52))


def _panels(n: int, width: float = 6.0, height: float = 4.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n + 2.2, height), squeeze=False)
    return fig, list(axes[0])


def _finish(fig, path: Path, handles: list | None = None, metadata: dict | None = None) -> Path:
    if handles:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return path


def _label_points(ax, xs, ys, labels) -> None:
    """Names next to points; a name that would overlap one already placed tries other sides, else is left out
    (the legend still names every colour)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    for x, y, text in sorted(zip(xs, ys, labels), key=lambda t: (t[1], t[0])):
        for dx, dy, ha in ((6, 4, "left"), (6, -11, "left"), (-6, 4, "right"), (-6, -11, "right")):
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, ha=ha)
            box = ann.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()


def _plain_log_ticks(axis, values) -> None:
    """Log-axis tick labels as plain numbers; 2 and 5 between decades when the data span two decades or less."""
    values = np.asarray(values, float)
    few = np.log10(values.max() / values.min()) <= 2 if values.min() > 0 else False
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    # The leading digit of 0.02 is 2: read it from the scientific form ("2e-02").
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if few and f"{v:.0e}"[0] in "25" else ""))


def _groups(agg: pd.DataFrame) -> list[tuple[query.Protocol, pd.DataFrame]]:
    out = []
    for p in query.protocols(agg):
        out.append((p, agg[agg["protocol"].map(lambda q: q.key() == p.key())]))
    return out


def _variant_handles(palette: dict, used: set) -> list:
    return [Line2D([], [], marker="o", linestyle="", color=palette[v], label=v)
            for v in sorted(used, key=query.natural_key)]


# ============================================================================================== plots

def plot_fid_vs_time(agg: pd.DataFrame, path: Path) -> Path | None:
    """FID against sampling time per batch (log x), one point per variant, the Pareto front marked."""
    d = agg[np.isfinite(agg["fid_mean"].astype(float)) &
            np.isfinite(agg["sampling_s_per_batch_mean_mean"].astype(float))]
    if d.empty:
        return None
    groups = _groups(d)
    palette = _palette(d["variant"])
    fig, axes = _panels(len(groups))
    for ax, (p, g) in zip(axes, groups):
        x, y = g["sampling_s_per_batch_mean_mean"].to_numpy(float), g["fid_mean"].to_numpy(float)
        xerr, yerr = g["sampling_s_per_batch_mean_std"].to_numpy(float), g["fid_std"].to_numpy(float)
        for xi, yi, xe, ye, v in zip(x, y, xerr, yerr, g["variant"]):
            ax.errorbar(xi, yi, xerr=None if np.isnan(xe) else xe, yerr=None if np.isnan(ye) else ye,
                        fmt="o", color=palette[v], markersize=7, capsize=3)
        front = pareto_front(x, y)
        order = np.argsort(x[front])
        ax.step(x[front][order], y[front][order], where="post", color="black", linestyle="--", linewidth=1)
        ax.scatter(x[front], y[front], s=220, facecolors="none", edgecolors="black", linewidths=1.2)
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis, x)
        ax.set_xlabel(f"sampling time (s per batch of {p.timing_batch}, log scale)")
        ax.set_ylabel(f"FID ({p.backbone}, {p.samples} samples), lower is better")
        ax.set_title(_title(p), fontsize=9)
        ax.margins(x=0.15, y=0.12)
        _label_points(ax, x, y, list(g["variant"]))
    handles = _variant_handles(palette, set(d["variant"])) + [
        Line2D([], [], marker="o", markersize=12, markerfacecolor="none", markeredgecolor="black",
               linestyle="--", color="black", label="Pareto front")]
    return _finish(fig, path, handles)


def plot_convergence(conv: pd.DataFrame, path: Path) -> Path | None:
    """FID during training, one row of two panels per protocol: against training wall-clock (s, left) and
    against training steps (right). One line per run through its ``fid_intermediate`` points (FID every
    ``eval.every_steps`` on ``eval.every_num_samples`` samples), coloured by variant; the run's final FID (the
    table's number, ``eval.metrics.num_samples`` samples) is a star. The star joins the line only when both use the
    same sample count; otherwise it stands apart and the legend names both sample counts."""
    if conv.empty:
        return None
    groups = [(p, conv[conv["protocol"].map(lambda q: q.key() == p.key())]) for p in query.protocols(conv)]
    palette = _palette(conv["variant"])
    fig, grid = plt.subplots(len(groups), 2, figsize=(13.0, 4.6 * len(groups)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    inter_samples = sorted(set(conv.loc[conv["kind"] == "intermediate", "samples"]), key=query.natural_key)
    style_of = {n: styles[i % len(styles)] for i, n in enumerate(inter_samples)}
    handles: list = []
    for (p, g), axes in zip(groups, grid):
        for ax, x, xlabel in ((axes[0], "train_wall_clock_s", "training wall-clock (s)"),
                              (axes[1], "step", "training step")):
            for (_, variant), r in g.groupby(["run_id", "variant"], sort=False):
                inter = r[r["kind"] == "intermediate"].sort_values("step")
                final = r[r["kind"] == "final"]
                if not inter.empty:
                    xs, ys = list(inter[x]), list(inter["fid"])
                    if not final.empty and final["samples"].iloc[0] == inter["samples"].iloc[0]:
                        xs, ys = xs + list(final[x]), ys + list(final["fid"])  # the same protocol: one curve
                    ax.plot(xs, ys, marker="o", markersize=4, color=palette[variant], alpha=0.9,
                            linestyle=style_of[inter["samples"].iloc[0]])
                if not final.empty:
                    ax.plot(final[x], final["fid"], marker="*", markersize=13, linestyle="", color=palette[variant],
                            markeredgecolor="black", markeredgewidth=0.6)
            fids = g["fid"].to_numpy(float)
            log = fids.min() > 0 and fids.max() / fids.min() > 10
            if log:
                ax.set_yscale("log")
                _plain_log_ticks(ax.yaxis, fids)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"FID ({p.backbone}{', log scale' if log else ''})")
            ax.set_title(_title(p), fontsize=9)
    handles += [Line2D([], [], marker="o", color=palette[v], label=v)
                for v in sorted(set(conv["variant"]), key=query.natural_key)]
    handles += [Line2D([], [], marker="o", markersize=4, color="grey", linestyle=style_of[n],
                       label=f"FID during training ({n} samples)") for n in inter_samples]
    finals = sorted(set(conv.loc[conv["kind"] == "final", "samples"]), key=query.natural_key)
    handles += [Line2D([], [], marker="*", markersize=11, linestyle="", color="grey", markeredgecolor="black",
                       label=f"final FID ({', '.join(finals)} samples)")] if finals else []
    return _finish(fig, path, handles)


def _ddim_points(agg: pd.DataFrame) -> pd.DataFrame:
    """Runs of the DDPM-trained denoisers with their sampler and step count."""
    rows = []
    for _, a in agg.iterrows():
        params = a["params"] or {}
        sampler = params.get("eval.sampler", "")
        v = a["variant"]
        if not (v == "ddpm" or v.startswith("ddim-") or sampler == "ddim") or not np.isfinite(a["fid_mean"]):
            continue
        steps = int(float(params.get("eval.steps", 0) or 0)) or \
            int(float(params.get("model.process.num_timesteps", 1000) or 1000))
        model = "ddpm model" if v == "ddpm" or v.startswith("ddim-") else v
        label = (f"{model}: DDIM, eta {params.get('eval.eta', '?')}, {params.get('eval.spacing', '?')}"
                 if sampler == "ddim" else f"{model}: DDPM ancestral")
        rows.append({"protocol": a["protocol"], "series": label, "steps": steps, "fid": a["fid_mean"],
                     "fid_std": a["fid_std"], "variant": v})
    return pd.DataFrame(rows, columns=["protocol", "series", "steps", "fid", "fid_std", "variant"])


def plot_ddim_steps(agg: pd.DataFrame, path: Path, published: dict | None = None) -> Path | None:
    """FID against the number of sampling steps; the published CIFAR-10 curves only on CIFAR-10 panels."""
    pts = _ddim_points(agg)
    if pts.empty:
        return None
    pub = (published or load_published())["tables"]["ddim"]["rows"]
    groups = [(p, pts[pts["protocol"].map(lambda q: q.key() == p.key())]) for p in query.protocols(pts)]
    series = sorted(set(pts["series"]))
    colors = dict(zip(series, sns.color_palette("deep", len(series))))
    fig, axes = _panels(len(groups))
    handles = [Line2D([], [], marker="o", color=colors[s], label=s) for s in series]
    for ax, (p, g) in zip(axes, groups):
        for s, r in g.groupby("series"):
            r = r.sort_values("steps")
            ax.errorbar(r["steps"], r["fid"], yerr=r["fid_std"].fillna(0), marker="o", color=colors[s], capsize=3,
                        linestyle="-" if len(r) > 1 else "")
        if p.dataset == "cifar10" and p.backbone == "inception-vgg16":
            for key, style, label in (("fid_eta0", "--", "published CIFAR-10, eta = 0 (DDIM Table 1)"),
                                      ("fid_eta1", ":", "published CIFAR-10, eta = 1 (DDIM Table 1)")):
                ax.plot([r["steps"] for r in pub], [r[key] for r in pub], linestyle=style, color="grey")
                if label not in [h.get_label() for h in handles]:
                    handles.append(Line2D([], [], linestyle=style, color="grey", label=label))
        else:
            # A text-only legend: "best" keeps the note off the data points.
            note = "published curves (CIFAR-10, Inception) not drawn:\nother data set / backbone"
            ax.legend(handles=[Line2D([], [], linestyle="none", label=note)], loc="best", fontsize=7,
                      handlelength=0, handletextpad=0, frameon=False, labelcolor="grey")
        ax.set_xscale("log")
        ticks = sorted(set(g["steps"]) | {10, 20, 50, 100, 1000})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps S (network calls per sample, log scale)")
        ax.set_ylabel(f"FID ({p.backbone}, {p.samples} samples)")
        ax.set_title(_title(p), fontsize=9)
    return _finish(fig, path, handles)


def plot_gflops(agg: pd.DataFrame, path: Path) -> Path | None:
    """GFLOPs per generated sample (whole sampler) per variant; one panel per data set and scale."""
    d = agg[np.isfinite(agg["gflops_per_sample_mean"].astype(float))].copy()
    if d.empty:
        return None
    d["panel"] = d["dataset"] + ", scale " + d["scale"]
    # FLOPs do not depend on the metric backbone or the timing device: one bar per variant and panel.
    d = d.groupby(["panel", "variant", "family"], as_index=False)["gflops_per_sample_mean"].mean()
    panels = sorted(set(d["panel"]), key=query.natural_key)
    families = sorted(set(d["family"]))
    deep = sns.color_palette("deep", 10)
    fixed = {"gan": deep[2], "diffusion": deep[0], "dvdp": deep[1]}
    others = iter(deep[3:])
    colors = {f: fixed.get(f) or next(others) for f in families}
    fig, axes = _panels(len(panels), width=max(6.0, 0.5 * d.groupby("panel").size().max() + 2))
    for ax, panel in zip(axes, panels):
        g = d[d["panel"] == panel].sort_values("gflops_per_sample_mean")
        sns.barplot(data=g, x="variant", y="gflops_per_sample_mean", hue="family", palette=colors, dodge=False,
                    ax=ax, legend=False)
        for i, v in enumerate(g["gflops_per_sample_mean"]):
            ax.text(i, v, f"{v:.3g}" if v < 1000 else f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("variant")
        ax.set_ylabel("GFLOPs per sample (log scale)")
        ax.set_title(f"{panel}; whole sampler, FLOPs = 2 x multiply-adds", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=8)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[f], label=f"family: {f}") for f in families]
    return _finish(fig, path, handles)


def rank_comparison(agg: pd.DataFrame) -> list[dict]:
    """Per protocol and DINOv2 model, the variants whose runs logged both FID and FD-DINOv2 (the FID of those same
    runs), ranked by each (1 = lowest = best; ties share their mean rank), and Kendall's tau between the two
    rankings (``scipy.stats.kendalltau``, tau-b). A panel needs two variants. Each dict: protocol, model, points
    (variant, fid, fd_dinov2, rank_fid, rank_fd_dinov2), tau, p."""
    panels = []
    for p, g in _groups(agg):
        by_model: dict[str, list] = {}
        for _, a in g.iterrows():
            for model, st in (a["dinov2"] or {}).items():
                if np.isfinite(st["fid_mean"]) and np.isfinite(st["fd_dinov2_mean"]):
                    by_model.setdefault(model, []).append((a["variant"], st["fid_mean"], st["fd_dinov2_mean"]))
        for model, pts in sorted(by_model.items()):
            if len(pts) < 2:
                continue
            d = pd.DataFrame(sorted(pts, key=lambda t: query.natural_key(t[0])),
                             columns=["variant", "fid", "fd_dinov2"])
            d["rank_fid"], d["rank_fd_dinov2"] = rankdata(d["fid"]), rankdata(d["fd_dinov2"])
            tau, pval = kendalltau(d["fid"], d["fd_dinov2"])
            panels.append({"protocol": p, "model": model, "points": d, "tau": float(tau), "p": float(pval)})
    return panels


def _tau_text(panel: dict, digits: int = 2) -> str:
    n = len(panel["points"])
    if not np.isfinite(panel["tau"]):
        return f"Kendall's tau undefined (one ranking is all ties), {n} variants"
    return f"Kendall's tau = {panel['tau']:.{digits}f} (p = {panel['p']:.2g}, {n} variants)"


def plot_rank_fid_vs_fd_dinov2(panels: list[dict], path: Path) -> Path | None:
    """Slope chart, one panel per protocol and DINOv2 model (:func:`rank_comparison`): each variant's FID rank
    (left) joined to its FD-DINOv2 rank (right), rank 1 = best at the top, values beside the names; a variant
    whose rank changes is a solid line, one that keeps it dashed; Kendall's tau in the title."""
    if not panels:
        return None
    palette = _palette([v for panel in panels for v in panel["points"]["variant"]])
    n_max = max(len(panel["points"]) for panel in panels)
    fig, axes = _panels(len(panels), width=6.4, height=max(3.8, 0.42 * n_max + 2.6))
    fid_fmt, fd_fmt = MEASURES["fid"].fmt, DINOV2_MEASURES["fd_dinov2"].fmt
    for ax, panel in zip(axes, panels):
        p, d = panel["protocol"], panel["points"]
        for r in d.itertuples():
            moved = r.rank_fid != r.rank_fd_dinov2
            ax.plot([0, 1], [r.rank_fid, r.rank_fd_dinov2], marker="o", color=palette[r.variant],
                    linewidth=2.2 if moved else 1.2, linestyle="-" if moved else "--")
            ax.annotate(f"{r.variant}  {fid_fmt(r.fid)}", (0, r.rank_fid), xytext=(-8, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=7)
            ax.annotate(f"{fd_fmt(r.fd_dinov2)}  {r.variant}", (1, r.rank_fd_dinov2), xytext=(8, 0),
                        textcoords="offset points", ha="left", va="center", fontsize=7)
        ax.set_xlim(-1.1, 2.1)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([f"FID rank\n({p.backbone})", f"FD-DINOv2 rank\n({panel['model']})"], fontsize=8)
        ax.set_ylim(len(d) + 0.6, 0.4)
        ax.set_yticks(range(1, len(d) + 1))
        ax.set_ylabel("rank (1 = lowest = best)")
        ax.grid(axis="x", visible=False)
        ax.set_title(f"{_title(p)}\n{_tau_text(panel)}", fontsize=9)
    handles = [Line2D([], [], color="grey", linewidth=2.2, label="rank changes"),
               Line2D([], [], color="grey", linewidth=1.2, linestyle="--", label="same rank")]
    meta = {"Description": "; ".join(f"{panel['protocol'].label()} | {panel['model']}: Kendall tau = "
                                     f"{panel['tau']!r}, p = {panel['p']!r}" for panel in panels)}
    return _finish(fig, path, handles, metadata=meta)


# ============================================================================================== driver

def make_plots(experiment: str | None = None, datasets: list[str] | None = None, out_dir: str | Path = OUT_DIR,
               filter_string: str | None = None, uri: str | None = None) -> dict[str, Path | None]:
    """Renders every plot; a plot with nothing to show is skipped (None) with the reason printed."""
    runs = query.select_latest(query.load_runs(experiment, datasets=datasets, filter_string=filter_string, uri=uri))
    agg = query.aggregate(runs)
    suffix = "-".join(datasets) if datasets else "all"
    out = Path(out_dir)
    sns.set_theme(style="whitegrid", context="notebook")
    if runs.empty:
        print(f"no FINISHED runs in {query.scope_label(experiment)}"
              + (f" on {', '.join(datasets)}" if datasets else "") + ": nothing to plot (make demo, or "
              "python -m bench.run --grid experiments/<grid>.yaml)", file=sys.stderr)
        return {k: None for k in PLOTS}
    result = {
        "fid_vs_time": plot_fid_vs_time(agg, out / f"fid_vs_time-{suffix}.png"),
        "convergence": plot_convergence(query.convergence(runs, uri), out / f"convergence-{suffix}.png"),
        "fid_vs_ddim_steps": plot_ddim_steps(agg, out / f"fid_vs_ddim_steps-{suffix}.png"),
        "gflops": plot_gflops(agg, out / f"gflops-{suffix}.png"),
    }
    ranks = rank_comparison(agg)
    result["rank_fid_vs_fd_dinov2"] = plot_rank_fid_vs_fd_dinov2(ranks, out / f"rank_fid_vs_fd_dinov2-{suffix}.png")
    for panel in ranks:
        print(f"FID rank vs FD-DINOv2 rank, {panel['protocol'].label()}, {panel['model']}: {_tau_text(panel, 3)}")
    why = {"fid_vs_time": "no run logged both fid and sampling_s_per_batch_mean",
           "convergence": "no run logged fid or fid_intermediate with train_wall_clock_s at the same step",
           "fid_vs_ddim_steps": f"no ddpm / ddim-N runs (fill with: {DDIM_FILL})",
           "gflops": "no run logged gflops_per_sample",
           "rank_fid_vs_fd_dinov2": "no protocol has two variants whose runs logged fid and the dinov2 metric set "
                                    "(eval.metrics.sets: [paper, dinov2])"}
    for k, v in result.items():
        if v is None:
            print(f"skipped {k}: {why[k]}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.plots", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default=None, help="only runs on this data set (default: all)")
    ap.add_argument("--experiment", default=None,
                    help="only this MLflow experiment (default: every experiment of the store but perf)")
    ap.add_argument("--out", default=str(OUT_DIR), help="directory the PNG files are written to")
    ap.add_argument("--filter", default=None, help="extra MLflow filter, e.g. \"tags.grid = 'demo'\"")
    ap.add_argument("--log", action="store_true", help="also log the PNGs to the experiment's 'report' run")
    args = ap.parse_args(argv)
    result = make_plots(args.experiment, [args.dataset] if args.dataset else None, args.out, args.filter)
    written = [p for p in result.values() if p is not None]
    for p in written:
        print(p)
    if args.log and written:
        query.log_report_and_say(written, args.experiment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
