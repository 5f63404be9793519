"""Section 3, ``training``: images/s of the suite's own training loops (bench.train) over whole step cycles after
warm-up, at each training precision asked for (fp32 and bf16 on GPUs), with the FLOPs of a step and the achieved
TFLOP/s (and share of the GPU's published peak).

Each arm (variant x precision) is ONE trainer, built once with its system and run in its own thread across the
rounds (:class:`TrainSession`): the rounds stay interleaved (A B C A B C) while optimiser state, data order and
allocator carry over, as in a real run. A round times ``--train-steps`` steps rounded up to whole step cycles
(:meth:`bench.families.Family.step_cycle`: a GAN's lazy_reg steps), so a GAN's images/s include its R1 steps.
``--profile`` runs one more window per arm under torch.profiler and writes its kernel table (top kernels by self
time, kernel launches per step; on the CPU, aten op events per step) next to the report."""
from __future__ import annotations

import math
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench import registry
from bench.data import InMemoryImages, dataset_channels
from bench.evaluate import synchronize, train_flops_per_step
from bench.perf.config import REFERENCES, PerfConfig, arm_options
from bench.perf.sampling import DVDP_VARIANT, GAN_GROUP, STEP_GROUP, _of_peak, _peak_cell, build, config
from bench.perf.timing import fmt, paired_ratio, ratio, rounds, say, stat, summarize, versus
from bench.tracking import NullTracker
from bench.train import BatchStream

__all__ = ["TRAIN_GROUPS", "TRAIN_ARMS", "run", "render", "metrics", "train_round",
           "step_flops_per_image", "TrainSession",
           "timed_steps", "kernel_table"]

TRAIN_GROUPS = (GAN_GROUP, STEP_GROUP + (DVDP_VARIANT,))
# Training arms on CUDA by default: a precision, with the whole step as CUDA graphs (+graphs: train.cuda_graphs) and
# with fewer ops per step (+fast_sums: train.fast_sums), both GAN options (bench.perf.config.arm_options).
TRAIN_ARMS = ("fp32", "bf16", "fp32+graphs", "bf16+graphs", "fp32+fast_sums", "bf16+graphs+fast_sums")


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
    """FLOPs (2 x multiply-adds, forward and backward) per image of one training step, averaged over a step cycle
    (a GAN's R1 step included): :func:`bench.evaluate.train_flops_per_step`, the count the demo's budgets use."""
    return train_flops_per_step(cfg, batch=2, cycle="mean") / cfg.train.batch_size


def timed_steps(cfg, steps: int) -> int:
    """``steps`` rounded up to whole step cycles of ``cfg`` (a GAN's lazy_reg): every timed window then holds the
    same share of costly steps as training does."""
    n = max(1, registry.family(cfg).step_cycle(cfg))
    return n * math.ceil(steps / n)


class TrainSession:
    """One arm's trainer (its family's, through bench.train.run_loop), built once and run in its own thread: the
    constructor runs ``warmup`` steps; each :meth:`round` runs the next ``steps`` steps and returns their
    wall-clock seconds per step (device-synchronised at both ends); :meth:`profile` runs ``steps`` more under
    torch.profiler; :meth:`close` stops the trainer (no checkpoint is written). One thread runs at a time: the
    caller waits while the trainer steps, and the trainer waits between windows."""

    def __init__(self, cfg, system, images: torch.Tensor, device: torch.device, warmup: int, steps: int,
                 windows: int, seed: int):
        if warmup < 1 or steps < 1:
            raise ValueError(f"warmup ({warmup}) and steps ({steps}) must be >= 1")
        self.device, self.warmup, self.steps = device, warmup, steps
        t = replace(cfg.train, max_steps=warmup + windows * steps, max_epochs=None, max_minutes=None,
                    checkpoint_every=10**9)
        self.cfg = replace(cfg, train=t)
        self._args = (self.cfg, system, BatchStream(InMemoryImages(images, torch.zeros(len(images),
                                                                                    dtype=torch.long)),
                                                    t.batch_size, seed))
        self._go, self._back = threading.Semaphore(0), threading.Semaphore(0)
        self._stop, self._error, self._prof = False, None, None
        self._t0 = self._t1 = 0.0
        self._profiling = False
        self._thread = threading.Thread(target=self._train, name=f"train-{cfg.variant}", daemon=True)
        self._thread.start()
        self._wait()  # the warm-up steps

    def _train(self) -> None:
        cfg, system, stream = self._args
        try:
            with tempfile.TemporaryDirectory() as workdir:
                registry.family(cfg).trainer(cfg, system, stream, NullTracker(), workdir, self.device,
                                             progress=False, on_step=self._on_step)
        except _Enough:
            pass
        except BaseException as e:  # handed to the caller
            self._error = e
        self._stop = True
        self._back.release()

    def _on_step(self, step: int, _elapsed: float) -> None:
        if step < self.warmup or (step - self.warmup) % self.steps:
            return
        synchronize(self.device)  # the end of a window
        self._t1 = time.perf_counter()
        if self._prof is not None:
            self._prof.stop()
        self._back.release()
        self._go.acquire()
        if self._stop:
            raise _Enough
        if self._profiling:
            self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if self.device.type == "cuda" else []))
            self._prof.start()
        synchronize(self.device)
        self._t0 = time.perf_counter()

    def _wait(self) -> None:
        self._back.acquire()
        if self._error is not None:
            raise self._error
        if self._stop:
            raise RuntimeError(f"{self.cfg.variant}: the trainer stopped before its last window")

    def round(self) -> float:
        """Seconds per step over the next ``steps`` steps."""
        self._go.release()
        self._wait()
        return (self._t1 - self._t0) / self.steps

    def profile(self) -> torch.profiler.profile:
        """The profiler of the next ``steps`` steps."""
        self._profiling = True
        self.round()
        self._profiling = False
        prof, self._prof = self._prof, None
        return prof

    def close(self) -> None:
        if self._thread.is_alive():
            self._stop = True
            self._go.release()
            self._thread.join()


def kernel_table(prof: torch.profiler.profile, steps: int, device: torch.device, title: str, rows: int = 25) -> str:
    """The profiler's table of the top ops / kernels by self time, headed by kernel launches per step (CUDA) or
    aten op events per step (CPU; nested calls included)."""
    events = prof.events()
    if device.type == "cuda":
        n = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        what, sort = "CUDA kernel launches (and memcpy / memset) per step", "self_device_time_total"
    else:
        n = sum(1 for e in events if e.name.startswith("aten::"))
        what, sort = "aten op events per step (nested calls included; no kernels on the CPU)", "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=rows)
    return f"# {title}\n\n{what}: {n / steps:.0f} ({n} over {steps} steps)\n\n{table}\n"


def run(pc: PerfConfig, device: torch.device) -> dict:
    B = pc.train_batch
    out: dict = {"batch": B, "rounds": pc.repeats, "warmup_steps": pc.train_warmup, "timed_steps": pc.train_steps,
                 "scale": pc.scale, "precisions": list(pc.train_precisions), "groups": [], "profiles": []}
    for group in TRAIN_GROUPS:
        cfgs, flops, steps, sessions = {}, {}, {}, {}
        # arms with GAN options (train.cuda_graphs, train.fast_sums) only where every variant of the group has them
        arms = [a for a in pc.train_precisions
                if all(hasattr(config(n, pc).train, k) for n in group for k in arm_options(a))]
        for name in group:
            cfg = config(name, pc)
            if pc.quick:  # the smoke run: a two-step cycle (a GAN's R1 every 2 steps), so its windows stay short
                cfg = registry.family(cfg).with_short_cycle(cfg)
            for arm in arms:
                cfgs[name, arm] = replace(cfg, train=replace(cfg.train, batch_size=B, **arm_options(arm)))
            flops[name] = step_flops_per_image(cfgs[name, arms[0]])
            steps[name] = timed_steps(cfg, pc.train_steps)
        windows = pc.repeats + bool(pc.profile)
        say(f"training: {', '.join(group)} x {', '.join(arms)} (batch {B}, {pc.repeats} rounds of "
            f"{pc.train_warmup} + " + ", ".join(f"{steps[n]}" for n in group) + " steps; one trainer per arm)")
        try:
            for (name, prec), cfg in cfgs.items():  # one system and trainer per arm, for every round
                images = _train_images(cfg, B, pc.train_warmup + windows * steps[name], pc.seed)
                sessions[name, prec] = TrainSession(cfg, build(cfg, pc, device), images, device, pc.train_warmup,
                                                    steps[name], windows, pc.seed)
            per_step = rounds({arm: s.round for arm, s in sessions.items()}, pc.repeats)  # s / step, per round
            if pc.profile:
                folder = Path(pc.profile)
                folder.mkdir(parents=True, exist_ok=True)
                for (name, prec), s in sessions.items():
                    path = folder / f"{name}-{prec}.txt"
                    path.write_text(kernel_table(s.profile(), steps[name], device,
                                                 f"{name}, {prec}, batch {B}, {steps[name]} steps, {device}"))
                    out["profiles"].append(str(path))
        finally:
            for s in sessions.values():
                s.close()
        rows = []
        for arm in arms:
            precision = arm_options(arm)["precision"]
            mine = {name: per_step[name, arm] for name in group}
            for name, (s, speedup) in versus(mine, group[0]).items():
                ips = summarize([B / t for t in mine[name]])
                row = {"variant": name, "precision": arm, "images_per_s": ips, "s_per_step": s,
                       "timed_steps": steps[name], "speedup_vs_baseline": speedup,
                       "gflops_per_image": flops[name] / 1e9,
                       **_of_peak(flops[name] * ips["median"] / 1e9, device,
                                  None if precision == "fp32" else precision)}
                if arm != arms[0]:
                    row["vs_" + arms[0]] = paired_ratio(per_step[name, arms[0]], per_step[name, arm])
                rows.append(row)
        out["groups"].append({"baseline": group[0], "rows": rows})
        sessions.clear()  # free the networks before the next group
    return out


def render(tr: dict, res: dict) -> list[str]:
    L: list[str] = []
    L += ["", "## 3. Training throughput", ""]
    L.append(f"The suite's own training loops (bench.train: optimiser step, EMA, R1 every lazy_reg steps for the "
             f"GANs, WDDM's image-space term), scale {tr['scale']}, batch {tr['batch']}, random uint8 images of "
             f"CIFAR-10 shape. One trainer per arm, built once: {tr['warmup_steps']} untimed steps, then in each "
             f"of {tr['rounds']} interleaved rounds the next {tr['timed_steps']} steps rounded up to whole step "
             f"cycles (column 'steps': a GAN's lazy_reg, so its R1 steps are in the window), device-synchronised "
             f"at both ends." + (" Quick mode: step cycles cut to 2 steps (R1 every 2nd step)." if res["config"][
                 "quick"] else ""))
    first = tr["precisions"][0]
    for grp in tr["groups"]:
        base = grp["baseline"]
        L += ["", f"| variant | precision | steps | images / s | s / step | speedup vs {base} (same precision) | "
              f"GFLOPs / image | achieved (share of peak) | vs {first} |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for v in grp["rows"]:
            vs = ratio(v[f"vs_{first}"]) if f"vs_{first}" in v else "-"
            L.append(f"| {v['variant']} | {v['precision']} | {v['timed_steps']} | {stat(v['images_per_s'])} | "
                     f"{stat(v['s_per_step'])} | {ratio(v['speedup_vs_baseline'])} | {fmt(v['gflops_per_image'])} "
                     f"| {_peak_cell(v)} | {vs} |")
    L.append("")
    L.append("- GFLOPs / image: one training step averaged over a step cycle (forward and backward of every network "
             "it runs, a GAN's R1 double backward included), counted with torch FlopCounterMode at batch 2; "
             "achieved = GFLOPs / image x images / s. bf16 rows: autocast forward passes with fp32 weights, losses "
             "and R1 (train.precision: bf16); +graphs rows: the whole step as CUDA graphs (train.cuda_graphs; off "
             "CUDA the same buffers without capture); +fast_sums rows: fewer ops per step, rounded in another order "
             "(train.fast_sums).")
    if tr.get("profiles"):
        L.append("")
        L.append(f"- torch.profiler kernel tables (one more window per arm after the timed rounds): "
                 f"{', '.join(Path(p).name for p in tr['profiles'])} in {Path(tr['profiles'][0]).parent}.")
    L.append("")
    L.append(f"- **reference**: {REFERENCES['wddm_claim']}.")
    return L


def metrics(tr: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for grp in tr["groups"]:
        for v in grp["rows"]:
            suffix = "" if v["precision"] == "fp32" else "_" + v["precision"].replace("+", "_")
            m[f"train_{v['variant']}_images_per_s{suffix}"] = v["images_per_s"]["median"]
            m[f"train_{v['variant']}_speedup_vs_{grp['baseline']}{suffix}"] = v["speedup_vs_baseline"]["median"]
            if v.get("pct_of_peak") is not None:
                m[f"train_{v['variant']}_pct_of_peak{suffix}"] = v["pct_of_peak"]
            for k, r in v.items():
                if k.startswith("vs_"):
                    m[f"train_{v['variant']}{suffix}_{k.replace('+', '_')}"] = r["median"]
    return m
