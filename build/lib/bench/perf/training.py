"""Section 3, ``training``: images/s of the suite's own training loops (bench.train) over a fixed number of
steps after warm-up, at each training precision asked for (fp32 and bf16 on GPUs), with the FLOPs of a step and
the achieved TFLOP/s (and share of the GPU's published peak)."""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace

import torch

from bench import registry
from bench.data import InMemoryImages, dataset_channels
from bench.evaluate import synchronize, train_flops_per_step
from bench.perf.config import REFERENCES, PerfConfig
from bench.perf.sampling import DVDP_VARIANT, GAN_GROUP, STEP_GROUP, _of_peak, _peak_cell, build, config
from bench.perf.timing import fmt, paired_ratio, ratio, rounds, say, stat, summarize, versus
from bench.tracking import NullTracker
from bench.train import BatchStream

__all__ = ["TRAIN_GROUPS", "run", "render", "metrics", "train_round", "step_flops_per_image"]

TRAIN_GROUPS = (GAN_GROUP, STEP_GROUP + (DVDP_VARIANT,))


class _Enough(Exception):
    """Raised from ``on_step`` once the timed steps are done: the loop stops before writing its final checkpoint."""


def train_round(cfg, system, images: torch.Tensor, device: torch.device, warmup: int, steps: int, tracker,
                 seed: int, window: dict | None = None) -> list[float]:
    """Wall-clock seconds of each of ``steps`` training steps after ``warmup`` steps, through the suite's loop.

    The tracker's buffer is flushed just before the first and the last timestamp of the timed window, so the
    window holds the full cost of writing its own metrics. ``window["tracker_s"]`` receives the seconds spent
    inside the tracker during the window (a :class:`_TimedTracker`'s count)."""
    t = replace(cfg.train, max_steps=warmup + steps, max_epochs=None, max_minutes=None, checkpoint_every=10**9)
    cfg = replace(cfg, train=t)
    stream = BatchStream(InMemoryImages(images, torch.zeros(len(images), dtype=torch.long)), t.batch_size, seed)
    trainer = registry.family(cfg).trainer
    stamps: list[float] = []
    marks: list[float] = [0.0]

    def on_step(step: int, _elapsed: float) -> None:
        if step in (warmup, warmup + steps):  # the timed window starts empty and ends with everything written
            tracker.flush()
            synchronize(device)
            marks.append(getattr(tracker, "seconds", 0.0))
        stamps.append(time.perf_counter())
        if step >= warmup + steps:
            raise _Enough

    with tempfile.TemporaryDirectory() as workdir:
        synchronize(device)
        stamps.append(time.perf_counter())
        try:
            trainer(cfg, system, stream, tracker, workdir, device, progress=False, on_step=on_step)
        except _Enough:
            pass
    if window is not None:
        window["tracker_s"] = marks[-1] - marks[-2]
    return [b - a for a, b in zip(stamps[warmup:-1], stamps[warmup + 1:])]


def _train_images(cfg, batch: int, steps: int, seed: int) -> torch.Tensor:
    c = dataset_channels(cfg.data)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch * steps, c, cfg.data.resolution, cfg.data.resolution), generator=g,
                         dtype=torch.uint8)


def step_flops_per_image(cfg) -> float:
    """FLOPs (2 x multiply-adds, forward and backward) per image of one plain training step (no R1):
    :func:`bench.evaluate.train_flops_per_step`, the count the demo's budgets use."""
    return train_flops_per_step(cfg, batch=2, cycle="plain") / cfg.train.batch_size


def run(pc: PerfConfig, device: torch.device) -> dict:
    B = pc.train_batch
    out: dict = {"batch": B, "rounds": pc.repeats, "warmup_steps": pc.train_warmup, "timed_steps": pc.train_steps,
                 "scale": pc.scale, "precisions": list(pc.train_precisions), "groups": []}
    for group in TRAIN_GROUPS:
        cfgs, systems, flops = {}, {}, {}
        for name in group:
            cfg = config(name, pc)
            for prec in pc.train_precisions:
                cfgs[name, prec] = replace(cfg, train=replace(cfg.train, batch_size=B, precision=prec))
            systems[name] = build(cfgs[name, pc.train_precisions[0]], pc, device)
            flops[name] = step_flops_per_image(cfgs[name, pc.train_precisions[0]])
        images = _train_images(cfgs[group[0], pc.train_precisions[0]], B, pc.train_warmup + pc.train_steps, pc.seed)
        say(f"training: {', '.join(group)} x {', '.join(pc.train_precisions)} (batch {B}, {pc.repeats} rounds of "
            f"{pc.train_warmup} + {pc.train_steps} steps)")
        arms = {(name, prec): (lambda n, p: lambda: statistics.fmean(train_round(
            cfgs[n, p], systems[n], images, device, pc.train_warmup, pc.train_steps, NullTracker(), pc.seed)))(
            name, prec) for name in group for prec in pc.train_precisions}
        per_step = rounds(arms, pc.repeats)  # mean seconds per timed step, per arm and round
        rows = []
        for prec in pc.train_precisions:
            mine = {name: per_step[name, prec] for name in group}
            for name, (s, speedup) in versus(mine, group[0]).items():
                ips = summarize([B / t for t in mine[name]])
                row = {"variant": name, "precision": prec, "images_per_s": ips, "s_per_step": s,
                       "speedup_vs_baseline": speedup, "gflops_per_image": flops[name] / 1e9,
                       **_of_peak(flops[name] * ips["median"] / 1e9, device, None if prec == "fp32" else prec)}
                if prec != pc.train_precisions[0]:
                    row["vs_" + pc.train_precisions[0]] = paired_ratio(per_step[name, pc.train_precisions[0]],
                                                                       per_step[name, prec])
                rows.append(row)
        out["groups"].append({"baseline": group[0], "rows": rows})
        systems.clear()  # free the networks before the next group
    return out


def render(tr: dict, res: dict) -> list[str]:
    L: list[str] = []
    L += ["", "## 3. Training throughput", ""]
    L.append(f"The suite's own training loops (bench.train: optimiser step, EMA, R1 every lazy_reg steps for the "
             f"GANs, WDDM's image-space term), scale {tr['scale']}, batch {tr['batch']}, random uint8 images of "
             f"CIFAR-10 shape; each arm in each of {tr['rounds']} rounds runs {tr['warmup_steps']} untimed + "
             f"{tr['timed_steps']} timed steps (wall-clock between steps). With the warm-up covering step 0, "
             f"the GANs' timed steps hold no R1 step (R1 costs 1/lazy_reg of a step extra on average).")
    first = tr["precisions"][0]
    for grp in tr["groups"]:
        base = grp["baseline"]
        L += ["", f"| variant | precision | images / s | s / step | speedup vs {base} (same precision) | "
              f"GFLOPs / image | achieved (share of peak) | vs {first} |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for v in grp["rows"]:
            vs = ratio(v[f"vs_{first}"]) if f"vs_{first}" in v else "-"
            L.append(f"| {v['variant']} | {v['precision']} | {stat(v['images_per_s'])} | {stat(v['s_per_step'])} | "
                     f"{ratio(v['speedup_vs_baseline'])} | {fmt(v['gflops_per_image'])} | {_peak_cell(v)} | {vs} |")
    L.append("")
    L.append("- GFLOPs / image: one training step without R1 (forward and backward of every network it runs), "
             "counted with torch FlopCounterMode at batch 2; achieved = GFLOPs / image x images / s. bf16 rows: "
             "autocast forward passes with fp32 weights, losses and R1 (train.precision: bf16).")
    L.append("")
    L.append(f"- **reference**: {REFERENCES['wddm_claim']}.")
    return L


def metrics(tr: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for grp in tr["groups"]:
        for v in grp["rows"]:
            suffix = "" if v["precision"] == "fp32" else f"_{v['precision']}"
            m[f"train_{v['variant']}_images_per_s{suffix}"] = v["images_per_s"]["median"]
            m[f"train_{v['variant']}_speedup_vs_{grp['baseline']}{suffix}"] = v["speedup_vs_baseline"]["median"]
            if v.get("pct_of_peak") is not None:
                m[f"train_{v['variant']}_pct_of_peak{suffix}"] = v["pct_of_peak"]
            for k, r in v.items():
                if k.startswith("vs_"):
                    m[f"train_{v['variant']}{suffix}_{k}"] = r["median"]
    return m
