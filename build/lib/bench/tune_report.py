"""What a tuning study reports (bench.tune): the table ``python -m bench.tune`` prints, the summary metrics and tags
of the study's parent MLflow run, and its artifacts: the optimisation history, the objective against lambda_rec
(PNG) and trials.csv."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.tune_study import TuneConfig

__all__ = ["finished_trials", "count_states", "best_trial", "summary_table", "log_summary", "write_artifacts",
           "plot_history", "plot_lambda", "write_trials_csv"]

ARTIFACTS = ("optimization_history.png", "lambda_rec_vs_objective.png", "trials.csv")


# ============================================================================================== the study's numbers

def finished_trials(trials, interrupted: set[int]) -> list:
    """COMPLETE, PRUNED and FAIL trials, less those a stopped driver interrupted (they run again)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in trials if t.state in done and t.number not in interrupted]


def count_states(trials) -> dict[str, int]:
    from optuna.trial import TrialState

    return {s.name: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                TrialState.FAIL)}


def best_trial(study):
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def summary_table(study, tc: TuneConfig) -> str:
    head = f"{'trial':>5s} {'state':8s} {'lambda_rec':>10s} {tc.objective.metric:>12s}  run id"
    lines = [head, "-" * len(head)]
    for t in study.trials:
        lam = t.user_attrs.get("lambda_rec")
        lines.append(f"{t.number:>5d} {t.state.name:8s} {'-' if lam is None else format(lam, '10.4g'):>10s} "
                     f"{'-' if t.value is None else format(t.value, '12.4f'):>12s}  {t.user_attrs.get('run_id', '-')}")
    return "\n".join(lines)


# ============================================================================================== the parent run

def log_summary(parent, study, interrupted: set[int]) -> None:
    """The study so far as metrics of its parent run (stepped by finished trials): trials per state, the best."""
    trials = study.trials
    counts = count_states([t for t in trials if t.number not in interrupted])
    m = {f"n_{k.lower()}": v for k, v in counts.items()}
    m["n_interrupted"] = len(interrupted)
    best = best_trial(study)
    if best is not None:
        m.update(best_value=best.value, best_lambda_rec=best.user_attrs["lambda_rec"], best_trial=best.number)
        parent.set_tags({"best_trial": best.number, "best_lambda_rec": best.user_attrs["lambda_rec"]})
    parent.log_metrics(m, step=len(finished_trials(trials, set())))
    parent.flush()


def write_artifacts(parent, trials, tc: TuneConfig) -> None:
    """The two plots and trials.csv, as artifacts of the parent run."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        plot_history(trials, tc, d / ARTIFACTS[0])
        plot_lambda(trials, tc, d / ARTIFACTS[1])
        write_trials_csv(trials, tc, d / ARTIFACTS[2])
        for name in ARTIFACTS:
            parent.log_artifact(d / name)


# ============================================================================================== plots

def _running_best(values: list[float], direction: str) -> list[float]:
    out, cur = [], None
    for v in values:
        cur = v if cur is None else (min(cur, v) if direction == "minimize" else max(cur, v))
        out.append(cur)
    return out


def plot_history(trials, tc: TuneConfig, path: Path) -> None:
    """Objective per COMPLETE trial and the best so far; PRUNED and FAIL trials as ticks along the bottom."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    if done:
        x, y = [t.number for t in done], [t.value for t in done]
        ax.scatter(x, y, s=22, color="tab:blue", zorder=3, label=f"trial ({tc.objective.metric})")
        ax.step(x, _running_best(y, tc.direction), where="post", color="tab:red", label="best so far")
    for state, color, marker in ((TrialState.PRUNED, "tab:orange", "|"), (TrialState.FAIL, "black", "x")):
        xs = [t.number for t in trials if t.state == state]
        if xs:
            ax.plot(xs, [0.02] * len(xs), marker, color=color, markersize=10, linestyle="none",
                    transform=ax.get_xaxis_transform(), label=f"{state.name.lower()} ({len(xs)})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{tc.objective.metric} ({tc.direction})")
    ax.set_title(f"{tc.study}: optimisation history ({len(done)} complete of {len(trials)})", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_lambda(trials, tc: TuneConfig, path: Path) -> None:
    """Objective against lambda_rec on a log axis (symmetric-log, linear below ``low``, when 0 was tried; the
    0 trial's value is also a dashed line), coloured by trial number; the best trial starred; the paper's
    lambda_rec = 1 dotted; PRUNED trials as ticks along the bottom."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and "lambda_rec" in t.user_attrs]
    pruned = [t.user_attrs["lambda_rec"] for t in trials if t.state == TrialState.PRUNED and
              "lambda_rec" in t.user_attrs]
    low, high = tc.lambda_rec.low, tc.lambda_rec.high
    zero = any(t.user_attrs["lambda_rec"] == 0 for t in done) or 0.0 in pruned
    fig = Figure(figsize=(6.4, 4.0), dpi=120)
    ax = fig.add_subplot()
    if zero:
        ax.set_xscale("symlog", linthresh=low, linscale=0.5)
        ax.set_xlim(-0.3 * low, high * 1.5)
    else:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.5, high * 1.5)
    if done:
        sc = ax.scatter([t.user_attrs["lambda_rec"] for t in done], [t.value for t in done],
                        c=[t.number for t in done], cmap="viridis", s=30, zorder=3)
        fig.colorbar(sc, ax=ax, label="trial").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        best = min(done, key=lambda t: t.value if tc.direction == "minimize" else -t.value)
        ax.scatter([best.user_attrs["lambda_rec"]], [best.value], marker="*", s=220, facecolor="none",
                   edgecolor="tab:red", linewidth=1.5, zorder=4,
                   label=f"best: lambda_rec={best.user_attrs['lambda_rec']:.3g}")
        for t in done:
            if t.user_attrs["lambda_rec"] == 0:
                ax.axhline(t.value, color="grey", linestyle="--", linewidth=1, label="lambda_rec = 0")
                break
    if low <= 1.0 <= high:
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1, label="paper (lambda_rec = 1)")
    if pruned:
        ax.plot(pruned, [0.02] * len(pruned), "|", color="tab:orange", markersize=10, linestyle="none",
                transform=ax.get_xaxis_transform(), label=f"pruned ({len(pruned)})")
    ax.set_xlabel("lambda_rec" + (f" (symlog: linear below {low:.3g})" if zero else " (log)"))
    ax.set_ylabel(f"{tc.objective.metric} ({tc.direction})")
    ax.set_title(f"{tc.study}: {tc.variant}, {tc.objective.metric} vs lambda_rec", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_trials_csv(trials, tc: TuneConfig, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", "lambda_rec", tc.objective.metric, "last_intermediate_step",
                    "run_id", "duplicate_of", "fail_reason"])
        for t in trials:
            last = max(t.intermediate_values) if t.intermediate_values else ""
            w.writerow([t.number, t.state.name, t.user_attrs.get("lambda_rec", ""),
                        "" if t.value is None else t.value, last, t.user_attrs.get("run_id", ""),
                        t.user_attrs.get("duplicate_of", ""), t.user_attrs.get("fail_reason", "")])

