"""Section 4, ``overhead``: (a) a training step with MLflow logging every step (real SQLite store, buffered
``Tracker``) vs ``NullTracker``; (b) ``compute_metrics`` time per 1,000 digit samples; (c) feature extraction per
1,000 images for every metric backbone (digit classifier, Inception-v3, VGG16, DINOv2) whose weights are
available, so users can budget evaluation."""
from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench import registry
from bench.data import load_dataset, reference_uint8
from bench.metrics import EXTRACTORS, MetricsConfig, MetricsError, extraction_seconds_per_1000
from bench.perf.config import PerfConfig
from bench.perf.sampling import build
from bench.perf.timing import fmt, rounds, say, stat, summarize, wall_time
from bench.perf.training import train_round
from bench.tracking import NullTracker, Tracker

__all__ = ["OVERHEAD_VARIANT", "run", "render", "metrics"]

OVERHEAD_VARIANT = "wavediff"                                      # the CPU demo's training step (tiny, digits)


class _TimedTracker:
    """Forwards every call to a tracker and adds up the wall-clock spent inside them (``seconds``)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            import time

            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


def run(pc: PerfConfig, device: torch.device) -> dict:
    from mlflow.tracking import MlflowClient

    from bench.metrics import MetricsConfig, compute_metrics

    out: dict = {}
    # (a) the same tiny training step with a real MLflow Tracker (log_every=1) vs NullTracker.
    cfg = registry.resolve({"variant": OVERHEAD_VARIANT, "dataset": "digits", "scale": "tiny"}, check_paths=False)
    cfg = replace(cfg, train=replace(cfg.train, batch_size=pc.overhead_batch, log_every=1))
    system = build(cfg, pc, device)
    data = load_dataset(cfg.data, "train")
    images = reference_uint8(data)
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{Path(d) / 'mlflow.db'}"
        client = MlflowClient(uri)
        client.create_experiment("perf-overhead", artifact_location=(Path(d) / "artifacts").as_uri())
        say(f"overhead: {OVERHEAD_VARIANT} tiny step, batch {pc.overhead_batch}, MLflow every step vs none "
             f"({pc.repeats} rounds of {pc.overhead_warmup} + {pc.overhead_steps} steps)")
        logged, flush_every, inside = 0, None, []

        def step_s(tracker, window: dict | None = None) -> float:
            dts = train_round(cfg, system, images, device, pc.overhead_warmup, pc.overhead_steps, tracker,
                               pc.seed, window)
            tracker.end()
            return statistics.fmean(dts)

        def mlflow_arm() -> float:
            nonlocal logged, flush_every
            tracker, window = _TimedTracker(Tracker.start("perf-overhead", uri=uri)), {}
            s = step_s(tracker, window)
            logged = len(client.get_metric_history(tracker.run_id, "loss_g"))
            flush_every = tracker.flush_every
            # Direct: time inside the tracker per step, relative to the rest of the same steps.
            log_s = window["tracker_s"] / pc.overhead_steps
            inside.append((log_s, 100.0 * log_s / (s - log_s)))
            return s

        per_step = rounds({"null": lambda: step_s(NullTracker()), "mlflow": mlflow_arm}, pc.repeats)
    out["logging"] = {
        "variant": OVERHEAD_VARIANT, "scale": "tiny", "dataset": "digits", "batch": pc.overhead_batch,
        "rounds": pc.repeats, "warmup_steps": pc.overhead_warmup, "timed_steps": pc.overhead_steps,
        "flush_every": flush_every, "loss_g_values_logged_per_run": logged,
        "s_per_step_null": summarize(per_step["null"]), "s_per_step_mlflow": summarize(per_step["mlflow"]),
        "overhead_pct": summarize([100.0 * (m / n - 1.0) for m, n in zip(per_step["mlflow"], per_step["null"])]),
        "tracker_s_per_step": summarize([a for a, _ in inside]),
        "direct_overhead_pct": summarize([b for _, b in inside]),
        "target_pct": 2.0,
    }

    # (b) compute_metrics on digits: generated = a random subset of the train split, reference = the train split.
    ref = images
    n = pc.metrics_samples
    g = torch.Generator().manual_seed(pc.seed)
    gen = ref[torch.randint(0, len(ref), (n,), generator=g)]
    mcfg = MetricsConfig(num_samples=n)
    warm = 1  # the first call builds the cached reference features
    say(f"overhead: compute_metrics on {n} digit samples ({warm} + {pc.repeats} calls)")
    times = rounds({"metrics": lambda: wall_time(
        lambda: compute_metrics(gen, ref, dataset="digits", cfg=mcfg, device=str(device)), device)},
        pc.repeats, warm)["metrics"]
    out["metrics"] = {"samples": n, "reference": len(ref), "rounds": pc.repeats, "warmup": warm,
                      "s_per_call": summarize(times), "s_per_1000": summarize([t * 1000 / n for t in times]),
                      "scaled": n != 1000, "kid_subsets": mcfg.kid_subsets}
    out["extraction"] = _extraction(gen[:pc.extraction_images], device, pc)
    return out


def _extraction(images: torch.Tensor, device: torch.device, pc: PerfConfig) -> dict:
    """Feature extraction alone, seconds per 1,000 images, for every backbone whose weights are here (the others
    are listed with what is missing); on the CPU and, where the run's device is a GPU, on it too."""
    devices = ["cpu"] + ([str(device)] if device.type == "cuda" else [])
    rows = []
    for backbone in EXTRACTORS:
        for dev in devices:
            try:
                s = extraction_seconds_per_1000(backbone, images, MetricsConfig(), dev, repeats=pc.repeats)
                rows.append({"backbone": backbone, "device": dev, "s_per_1000": s})
            except MetricsError as e:
                rows.append({"backbone": backbone, "device": dev, "missing": str(e).splitlines()[0][:300]})
                break  # the same weights are missing on every device
            say(f"overhead: {backbone} feature extraction on {dev}: {s:.3f} s per 1,000 images")
    return {"images": len(images), "resolution": list(images.shape[1:]), "rows": rows}




def render(o: dict, res: dict) -> list[str]:
    L: list[str] = []
    lg, m = o["logging"], o["metrics"]
    pct, direct = lg["overhead_pct"], lg["direct_overhead_pct"]
    L += ["", "## 4. Suite overhead", ""]
    L.append(f"Training step of {lg['variant']} ({lg['scale']}, {lg['dataset']}, batch {lg['batch']}) with "
             f"MLflow logging every step (bench.tracking.Tracker on a fresh SQLite store, buffered, flushed every "
             f"{lg['flush_every']} values) vs NullTracker; {lg['rounds']} rounds of {lg['warmup_steps']} + "
             f"{lg['timed_steps']} steps per arm (mean wall-clock per step per round).")
    L += ["", "| s / step, no logging | s / step, MLflow every step | difference % | time inside the Tracker, "
          "ms / step | direct overhead % (target < 2%) |", "|---:|---:|---:|---:|---:|",
          f"| {stat(lg['s_per_step_null'])} | {stat(lg['s_per_step_mlflow'])} | "
          f"{fmt(pct['median'], 2)} [{fmt(pct['min'], 2)} to {fmt(pct['max'], 2)}] | "
          f"{stat(lg['tracker_s_per_step'], 1e3)} | {stat(direct, 1.0, 2)} "
          f"{'met' if direct['median'] < lg['target_pct'] else 'MISSED'} |"]
    L.append("")
    L.append(f"- difference %: the two arms' step times compared round by round (sensitive to other load); "
             f"direct: the wall-clock spent inside Tracker calls (log_metrics + buffered log_batch flushes) per "
             f"step, relative to the rest of the same steps. Each MLflow run logged "
             f"{lg['loss_g_values_logged_per_run']} values of loss_g (one per step).")
    L.append("")
    how = f"measured on {m['samples']} samples and scaled linearly" if m["scaled"] else "measured"
    L.append(f"Metric evaluation (compute_metrics: FID, KID with {m['kid_subsets']} subsets, precision/recall; "
             f"digits classifier backbone, cached reference features; {m['reference']} reference images): "
             f"{stat(m['s_per_1000'])} s per 1,000 generated samples ({how}; {m['warmup']} warm-up + "
             f"{m['rounds']} calls).")
    ex = o.get("extraction")
    if ex:
        L += ["", f"Feature extraction alone (torch-fidelity's path: resize, network, copy back; {ex['images']} images "
              f"of {'x'.join(map(str, ex['resolution']))}, median of the calls after a warm-up batch):", "",
              "| backbone | device | s per 1,000 images |", "|---|---|---:|"]
        for r in ex["rows"]:
            L.append(f"| {r['backbone']} | {r['device']} | " + (fmt(r["s_per_1000"]) if "s_per_1000" in r else
                                                               f"not measured: {r['missing']}") + " |")
    return L


def metrics(o: dict) -> dict[str, float]:
    m = {"overhead_logging_pct": o["logging"]["overhead_pct"]["median"],
         "overhead_step_s_null": o["logging"]["s_per_step_null"]["median"],
         "overhead_step_s_mlflow": o["logging"]["s_per_step_mlflow"]["median"],
         "metrics_s_per_1000": o["metrics"]["s_per_1000"]["median"]}
    for r in o.get("extraction", {}).get("rows", []):
        if "s_per_1000" in r:
            m[f"extract_{r['backbone']}_{r['device'].replace(':', '')}_s_per_1000"] = r["s_per_1000"]
    return m
