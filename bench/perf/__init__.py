"""Performance benchmark (``make bench-perf``): the suite's speed claims, measured as ratios within one run.

    python -m bench.perf [--quick] [--device auto|cpu|cuda] [--out reports/out/perf.md] [--no-mlflow]
                         [--repeats N] [--sample-batch N] [--train-batch N] [--scale paper|tiny]
                         [--sections haar,sampling,training,overhead] [--threads N]

Sections:

1. ``haar``: round trip ``haar_dwt`` + ``haar_idwt`` vs pytorch_wavelets ``DWTForward``/``DWTInverse`` (haar, J=1;
   an optional bench-only dependency, skipped with a note when absent) vs ``x.clone()`` (the memory floor).
2. ``sampling``: at the papers' CIFAR-10 configurations: the whole T=4 sampler of ddgan / wavediff / wavediff-wg
   (batch 100, fixed x_T); one denoiser call ("per step") of ddpm / wddm-unet-l1/-l2 / wddm-ukan-l1/-l2; dvdp vs
   ddpm per sample (one call at each stage resolution, weighted by the sampler's number of calls per stage).
3. ``training``: images/s of the suite's own training loops over a fixed number of steps after warm-up.
4. ``overhead``: a training step with MLflow logging every step (real SQLite store, buffered ``Tracker``) vs
   ``NullTracker``; ``compute_metrics`` time per 1,000 digit samples.

Protocol: every figure is the median and min-max of interleaved rounds (A B C A B C ...) after warm-up, with
device synchronisation (CUDA events on GPU); ratios are taken per round between arms of the same round and
summarised the same way. FLOPs are counted on the meta device (no arithmetic) as 2 x multiply-adds.

Duration on 2 CPU cores: ``--quick`` (tiny networks, batch 8) 25-40 s; the full run (3 rounds, 2 for the whole
GAN samplers) about 10 minutes on an idle machine and 15-17 under heavy load, dominated by the paper-size DDGAN
sampler at batch 100 (about 30 s per call) and the paper-size DDPM denoiser call (about 11 s at batch 100).
``--repeats``, ``--sample-batch`` and ``--sections`` bound it. On CUDA the full run uses 10 warm-up and 20 timed
rounds unless ``--repeats`` is given. On a shared CPU, ``--threads 1`` avoids stalls between threads.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import importlib.resources
import json
import math
import os
import statistics
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from bench import registry
from bench.data import InMemoryImages, dataset_channels, load_dataset, reference_uint8
from bench.evaluate import count_flops, device_description, resolve_device, synchronize
from bench.tracking import REPO_ROOT, NullTracker, Tracker, flatten, git_commit
from bench.train import BatchStream, train_diffusion, train_gan
from models.wavelet import haar_dwt, haar_idwt

__all__ = ["PerfConfig", "quick_config", "run_benchmark", "render", "rounds", "interleaved", "wall_time", "summarize",
           "paired_ratio", "versus", "load_pytorch_wavelets", "main", "SECTIONS"]

SECTIONS = ("haar", "sampling", "training", "overhead")
HAAR_SHAPES = ((256, 3, 32, 32), (16, 3, 256, 256))
GAN_GROUP = ("ddgan", "wavediff", "wavediff-wg")                  # baseline first
STEP_GROUP = ("ddpm", "wddm-unet-l1", "wddm-unet-l2", "wddm-ukan-l1", "wddm-ukan-l2")
DVDP_VARIANT = "dvdp"
TRAIN_GROUPS = (GAN_GROUP, STEP_GROUP + (DVDP_VARIANT,))
OVERHEAD_VARIANT = "wavediff"                                      # the CPU demo's training step (tiny, digits)
OUT_DEFAULT = REPO_ROOT / "reports" / "out" / "perf.md"

# Published and previously measured figures, printed beside ours as references (PAPERS.md section 2, TOOLS.md).
REFERENCES = {
    "paper_gpu": "WaveDiff paper (CVPR 2023), 1 A100, batch 100, T=4, 300 trials: DDGAN 0.21 s, WaveDiff 0.08 s per "
                 "batch; claim \"2.5x faster than DDGAN\"",
    "public_cpu": "public implementations on these 2-core machines (random weights, fp32, 2 threads, batch 100, T=4): "
                  "DDGAN 33-34 s, WaveDiff 5.1-5.5 s (ratio 6.2-6.3), WaveDiff + W-Generator 3.9 s (ratio 8.5-8.8); "
                  "FLOP ratio 4.2; FIR up/down-sampling is about 42% of DDGAN's and 27% of WaveDiff's CPU time",
    "ddpm_table": "WaveDiff paper's CIFAR-10 table: DDPM 1000 NFE, 80.5 s per batch of 100 on an A100 "
                  "(0.08 s per step)",
    "wddm_claim": "WDDM claims up to 3x faster training at level 1 (paper tables UNVERIFIED)",
    # s per batch of 100 beside our GAN table: (public code, 2 CPU threads here; paper, A100)
    "gan_table": {"ddgan": ("33-34", "0.21"), "wavediff": ("5.1-5.5", "0.08"), "wavediff-wg": ("3.9", "-")},
    "haar_cpu": "TOOLS.md, 2 threads: x.clone() 0.04 / 0.14 ms per pass; pytorch_wavelets forward + inverse about "
                "1.0 + 3.7-4.6 ms at (256,3,32,32) and 16 + 120-134 ms at (16,3,256,256)",
}


@dataclass
class PerfConfig:
    quick: bool = False               # CI smoke: tiny networks, small batches, few rounds
    device: str = "auto"              # auto (CUDA when available) | cpu | cuda | cuda:N
    scale: str = "paper"              # network sizes of sections 2-3: paper (CIFAR-10 configs) | tiny
    sections: tuple[str, ...] = SECTIONS  # which sections to run
    seed: int = 0                     # weights, x_T and data of every section
    repeats: int = 3                  # timed interleaved rounds of sections 2-4
    sampler_repeats: int = 2          # timed rounds of the whole GAN samplers (10-60 s per call at batch 100 on CPU)
    warmup: int = 1                   # untimed rounds before them (sections 2 and 4b)
    sample_batch: int = 100           # images per timed sampler / denoiser call (the papers: 100)
    train_batch: int = 8              # images per timed training step (paper batches do not fit a CPU)
    train_warmup: int = 1             # untimed training steps per arm and round (optimiser state, allocator)
    train_steps: int = 2              # timed training steps per arm and round
    haar_repeats: int = 30            # timed interleaved rounds of section 1
    haar_min_time_s: float = 0.02     # each transform measurement loops until it lasts at least this long
    overhead_batch: int = 64          # tiny training step of section 4 (the CPU demo's batch)
    overhead_warmup: int = 2          # untimed steps per arm and round (run creation excluded)
    overhead_steps: int = 20          # timed steps per arm and round (~10 values per step: one buffered flush
                                      #   inside, plus the flush that ends the window)
    metrics_samples: int = 1000       # generated samples per compute_metrics call (digits)
    threads: int | None = None        # torch.set_num_threads (None: leave as is, e.g. OMP_NUM_THREADS)


def quick_config(**over) -> PerfConfig:
    """The ``--quick`` preset: every code path, at sizes that run in well under a minute on 2 CPU cores."""
    base = dict(quick=True, scale="tiny", repeats=2, sampler_repeats=2, warmup=1, sample_batch=8, train_batch=4,
                train_warmup=1, train_steps=2, haar_repeats=5, haar_min_time_s=0.005, overhead_batch=8,
                overhead_warmup=1, overhead_steps=5, metrics_samples=200)
    base.update(over)
    return PerfConfig(**base)


def _say(msg: str) -> None:
    print(f"[perf] {msg}", file=sys.stderr, flush=True)


# ============================================================================================== timing

def time_call(fn: Callable[[], object], device: torch.device, number: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``number`` back-to-back calls, device-synchronised."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / number
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calibrate(fn: Callable[[], object], device: torch.device, min_time_s: float, cap: int = 100_000) -> int:
    """Calls per measurement so that one measurement lasts at least ``min_time_s``."""
    number = 1
    while number < cap:
        t = time_call(fn, device, number) * number
        if t >= min_time_s:
            break
        number = min(cap, max(2 * number, int(number * 1.2 * min_time_s / max(t, 1e-9))))
    return number


def rounds(arms: dict[str, Callable[[], float]], n: int, warmup: int = 0) -> dict[str, list[float]]:
    """The one measurement loop: ``warmup + n`` rounds A B C A B C ..., each arm returning its own measurement
    (seconds); the first ``warmup`` rounds are run but not kept."""
    out: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(warmup + n):
        for k, arm in arms.items():
            value = arm()
            if r >= warmup:
                out[k].append(value)
    return out


def interleaved(fns: dict[str, Callable[[], object]], device: torch.device, rounds_: int, warmup: int = 1,
                number: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Seconds per call of every arm (``number[arm]`` calls per measurement, device-synchronised, no autograd),
    in interleaved rounds; the first ``warmup`` rounds are not kept."""
    number = number or {}
    timed = {k: (lambda f, m: lambda: time_call(f, device, m))(fn, number.get(k, 1)) for k, fn in fns.items()}
    with torch.no_grad():
        return rounds(timed, rounds_, warmup)


def wall_time(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``fn`` between two device synchronisations (host work included)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def summarize(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def paired_ratio(num: list[float], den: list[float]) -> dict:
    """num / den per round (both measured in the same round), summarised; ``of_minima`` = min(num) / min(den),
    the estimate least sensitive to load from other processes (which only ever adds time)."""
    return {**summarize([a / b for a, b in zip(num, den)]), "of_minima": min(num) / min(den)}


def versus(times: dict[str, list[float]], base: str) -> dict[str, tuple[dict, dict]]:
    """Per arm: (summary of its seconds, per-round speedup of ``base`` over it: base time / arm time)."""
    return {k: (summarize(v), paired_ratio(times[base], v)) for k, v in times.items()}


# ============================================================================================== 1. Haar

def load_pytorch_wavelets() -> tuple[tuple | None, str]:
    """(DWTForward, DWTInverse) and a note; (None, why) when the bench-only extra is not installed.

    pytorch_wavelets 1.3.0 imports ``pkg_resources.resource_stream``, which setuptools >= 81 no longer ships:
    a minimal stand-in is provided for the import only and removed afterwards."""
    shim = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        mod = types.ModuleType("pkg_resources")
        mod.resource_stream = lambda pkg, res: importlib.resources.files(pkg).joinpath(res).open("rb")
        sys.modules["pkg_resources"] = mod
        shim = True
    try:
        from pytorch_wavelets import DWTForward, DWTInverse
    except ImportError as e:
        return None, f"pytorch_wavelets is not installed ({e}); its column is skipped"
    finally:
        if shim:
            sys.modules.pop("pkg_resources", None)
    try:
        from importlib.metadata import version
        v = version("pytorch_wavelets")
    except Exception:
        v = "unknown version"
    return (DWTForward, DWTInverse), f"pytorch_wavelets {v}" + (" (pkg_resources shim)" if shim else "")


def bench_haar(pc: PerfConfig, device: torch.device) -> dict:
    ptw, note = load_pytorch_wavelets()
    _say(f"haar: {note}")
    rows = []
    g = torch.Generator().manual_seed(pc.seed)
    for shape in HAAR_SHAPES:
        x = torch.randn(shape, generator=g).to(device)
        fns: dict[str, Callable[[], object]] = {"clone": lambda: x.clone(), "ours": lambda: haar_idwt(haar_dwt(x))}
        errors = {"ours": (haar_idwt(haar_dwt(x)) - x).abs().max().item()}
        if ptw is not None:
            fwd = ptw[0](J=1, wave="haar", mode="zero").to(device)
            inv = ptw[1](wave="haar", mode="zero").to(device)
            fns["pytorch_wavelets"] = lambda: inv(fwd(x))
            with torch.no_grad():
                errors["pytorch_wavelets"] = (inv(fwd(x)) - x).abs().max().item()
        with torch.no_grad():
            number = {k: calibrate(fn, device, pc.haar_min_time_s) for k, fn in fns.items()}
        times = interleaved(fns, device, pc.haar_repeats, warmup=1, number=number)
        row = {"shape": list(shape), "ms": {k: summarize([t * 1e3 for t in v]) for k, v in times.items()},
               "calls_per_measurement": number, "max_roundtrip_error": errors,
               "ours_over_clone": paired_ratio(times["ours"], times["clone"])}
        if ptw is not None:
            row["speedup_vs_pytorch_wavelets"] = paired_ratio(times["pytorch_wavelets"], times["ours"])
        rows.append(row)
        _say(f"haar {shape}: " + ", ".join(f"{k} {row['ms'][k]['median']:.3f} ms" for k in fns))
    return {"pytorch_wavelets": note, "available": ptw is not None, "rows": rows,
            "rounds": pc.haar_repeats, "min_time_s": pc.haar_min_time_s}


# ============================================================================================== 2. sampling

def _config(name: str, pc: PerfConfig, dataset: str = "cifar10"):
    return registry.resolve({"variant": name, "dataset": dataset, "scale": pc.scale}, check_paths=False)


def _build(cfg, pc: PerfConfig, device: torch.device):
    torch.manual_seed(pc.seed)
    return registry.build(cfg).to(device)


def _meta_flops(cfg, fn: Callable) -> int:
    """FLOPs of ``fn(system)`` with the system built on the meta device (shapes only, no arithmetic)."""
    with torch.device("meta"):
        return fn(registry.build(cfg))


def _net_call_flops(system, shape: tuple[int, ...]) -> int:
    x, t = torch.zeros(shape), torch.zeros(shape[0], dtype=torch.long)
    return count_flops(system.sampling_network, x, t)


def _dvdp_schedule(system, image_size: int) -> dict[int, int]:
    """Network calls of one DVDP sampling run per state resolution (side), from the sampler's own timesteps."""
    proc = system.process
    steps = None if system.sampler == "ddpm" else system.steps
    seq = proc.timesteps(system.sampler, steps, system.sampler_kwargs.get("spacing", "linear"))
    return dict(collections.Counter(proc.resolution_at(t, image_size) for t in seq))


def bench_sampling(pc: PerfConfig, device: torch.device) -> dict:
    B = pc.sample_batch
    out: dict = {"batch": B, "rounds": pc.repeats, "sampler_rounds": pc.sampler_repeats, "warmup": pc.warmup,
                 "scale": pc.scale}

    # (a) GAN samplers: the whole T-step sampler including the final inverse transform, fixed x_T and noise.
    fns, info = {}, {}
    for name in GAN_GROUP:
        cfg = _config(name, pc)
        system = _build(cfg, pc, device)
        g = torch.Generator(device=device).manual_seed(pc.seed)
        x_T = torch.randn(system.state_shape(B), generator=g, device=device)
        fns[name] = (lambda s, x: lambda: s.sample(x, rng=torch.Generator(device=device).manual_seed(pc.seed)))(
            system, x_T)
        flops = _meta_flops(cfg, lambda s: count_flops(s.sample, torch.zeros(s.state_shape(1))))
        info[name] = {"gflops_per_sample": flops / 1e9, "nfe": system.nfe, "state": list(system.state_shape(1)[1:]),
                      "params_generator": sum(p.numel() for p in system.G.parameters())}
    _say(f"sampling: {', '.join(GAN_GROUP)} (whole sampler, batch {B}, {pc.warmup} + {pc.sampler_repeats} rounds)")
    base = GAN_GROUP[0]
    for name, (s, speedup) in versus(interleaved(fns, device, pc.sampler_repeats, pc.warmup), base).items():
        info[name].update(seconds=s, gflops_per_s=info[name]["gflops_per_sample"] * B / s["median"],
                          speedup_vs_baseline=speedup)
    out["gan"] = {"baseline": base, "variants": info, "rounds": pc.sampler_repeats}
    del fns

    # (b) one denoiser call (one sampler step) of ddpm / WDDM, and DVDP's calls at each stage resolution.
    fns, info = {}, {}
    systems = {}
    for name in STEP_GROUP:
        cfg = _config(name, pc)
        system = systems[name] = _build(cfg, pc, device)
        net = system.sampling_network.eval()
        shape = system.state_shape(B)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(pc.seed)).to(device)
        t = torch.full((B,), system.diffusion.num_timesteps // 2, dtype=torch.long, device=device)
        fns[name] = (lambda n, a, b: lambda: n(a, b))(net, x, t)
        flops = _meta_flops(cfg, lambda s: _net_call_flops(s, s.state_shape(1)))
        info[name] = {"gflops_per_call_per_sample": flops / 1e9, "nfe": system.nfe, "state": list(shape[1:]),
                      "params_denoiser": sum(p.numel() for p in net.parameters())}
    cfg = _config(DVDP_VARIANT, pc)
    dvdp = _build(cfg, pc, device)
    dnet = dvdp.sampling_network.eval()
    size, ch = cfg.model.denoiser.image_size, cfg.model.denoiser.in_channels
    calls = _dvdp_schedule(dvdp, size)
    stage_flops = _meta_flops(cfg, lambda s: {r: _net_call_flops(s, (1, ch, r, r)) for r in calls})
    for r in sorted(calls, reverse=True):
        x = torch.randn((B, ch, r, r), generator=torch.Generator().manual_seed(pc.seed)).to(device)
        t = torch.full((B,), dvdp.diffusion.num_timesteps // 2, dtype=torch.long, device=device)
        fns[f"{DVDP_VARIANT}@{r}"] = (lambda n, a, b: lambda: n(a, b))(dnet, x, t)
    _say(f"sampling: one denoiser call of {', '.join(fns)} (batch {B}, {pc.warmup} + {pc.repeats} rounds)")
    times = interleaved(fns, device, pc.repeats, pc.warmup)
    base = STEP_GROUP[0]
    for name, (s, speedup) in versus({n: times[n] for n in STEP_GROUP}, base).items():
        info[name].update(seconds=s, gflops_per_s=info[name]["gflops_per_call_per_sample"] * B / s["median"],
                          speedup_vs_baseline=speedup, projected_sampler_s=info[name]["nfe"] * s["median"])
    out["step"] = {"baseline": base, "variants": info}

    # (c) DVDP vs DDPM per sample: sum over resolutions of (calls at that resolution) x (seconds per call) / B.
    ddpm_nfe = systems[base].nfe
    per_round_dvdp = [sum(n * times[f"{DVDP_VARIANT}@{r}"][i] for r, n in calls.items()) / B
                      for i in range(pc.repeats)]
    per_round_ddpm = [ddpm_nfe * t / B for t in times[base]]
    dvdp_flops = sum(n * stage_flops[r] for r, n in calls.items())
    ddpm_flops = ddpm_nfe * info[base]["gflops_per_call_per_sample"] * 1e9
    out["dvdp"] = {
        "calls_per_resolution": {str(r): n for r, n in sorted(calls.items(), reverse=True)},
        "seconds_per_call": {str(r): summarize(times[f"{DVDP_VARIANT}@{r}"]) for r in calls},
        "gflops_per_call_per_sample": {str(r): f / 1e9 for r, f in stage_flops.items()},
        "dvdp_s_per_sample": summarize(per_round_dvdp), "ddpm_s_per_sample": summarize(per_round_ddpm),
        "dvdp_gflops_per_sample": dvdp_flops / 1e9, "ddpm_gflops_per_sample": ddpm_flops / 1e9,
        "ddpm_nfe": ddpm_nfe, "sampler": dvdp.sampler, "turning_points": [list(tp) for tp in
                                                                           cfg.model.process.turning_points],
        "speedup_vs_ddpm": paired_ratio(per_round_ddpm, per_round_dvdp),
        "flop_ratio": ddpm_flops / dvdp_flops,
    }
    return out


# ============================================================================================== 3. training

class _TimedTracker:
    """Forwards every call to a tracker and adds up the wall-clock spent inside them (``seconds``)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        return timed


class _Enough(Exception):
    """Raised from ``on_step`` once the timed steps are done: the loop stops before writing its final checkpoint."""


def _train_round(cfg, system, images: torch.Tensor, device: torch.device, warmup: int, steps: int, tracker,
                 seed: int, window: dict | None = None) -> list[float]:
    """Wall-clock seconds of each of ``steps`` training steps after ``warmup`` steps, through the suite's loop.

    The tracker's buffer is flushed just before the first and the last timestamp of the timed window, so the
    window holds the full cost of writing its own metrics. ``window["tracker_s"]`` receives the seconds spent
    inside the tracker during the window (a :class:`_TimedTracker`'s count)."""
    t = replace(cfg.train, max_steps=warmup + steps, max_epochs=None, max_minutes=None, checkpoint_every=10**9)
    cfg = replace(cfg, train=t)
    stream = BatchStream(InMemoryImages(images, torch.zeros(len(images), dtype=torch.long)), t.batch_size, seed)
    trainer = train_gan if registry.VARIANTS[cfg.variant].family == "gan" else train_diffusion
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


def bench_training(pc: PerfConfig, device: torch.device) -> dict:
    B = pc.train_batch
    out: dict = {"batch": B, "rounds": pc.repeats, "warmup_steps": pc.train_warmup, "timed_steps": pc.train_steps,
                 "scale": pc.scale, "groups": []}
    for group in TRAIN_GROUPS:
        cfgs, systems = {}, {}
        for name in group:
            cfg = _config(name, pc)
            cfgs[name] = replace(cfg, train=replace(cfg.train, batch_size=B))
            systems[name] = _build(cfgs[name], pc, device)
        images = _train_images(cfgs[group[0]], B, pc.train_warmup + pc.train_steps, pc.seed)
        _say(f"training: {', '.join(group)} (batch {B}, {pc.repeats} rounds of {pc.train_warmup} + "
             f"{pc.train_steps} steps)")
        arms = {name: (lambda n: lambda: statistics.fmean(_train_round(
            cfgs[n], systems[n], images, device, pc.train_warmup, pc.train_steps, NullTracker(), pc.seed)))(name)
            for name in group}
        per_step = rounds(arms, pc.repeats)  # mean seconds per timed step, per arm and round
        base = group[0]
        info = {name: {"images_per_s": summarize([B / t for t in per_step[name]]), "s_per_step": s,
                       "speedup_vs_baseline": speedup}
                for name, (s, speedup) in versus(per_step, base).items()}
        out["groups"].append({"baseline": base, "variants": info})
        del systems
    return out


# ============================================================================================== 4. overhead

def bench_overhead(pc: PerfConfig, device: torch.device) -> dict:
    from mlflow.tracking import MlflowClient

    from bench.metrics import MetricsConfig, compute_metrics

    out: dict = {}
    # (a) the same tiny training step with a real MLflow Tracker (log_every=1) vs NullTracker.
    cfg = registry.resolve({"variant": OVERHEAD_VARIANT, "dataset": "digits", "scale": "tiny"}, check_paths=False)
    cfg = replace(cfg, train=replace(cfg.train, batch_size=pc.overhead_batch, log_every=1))
    system = _build(cfg, pc, device)
    data = load_dataset(cfg.data, "train")
    images = reference_uint8(data)
    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{Path(d) / 'mlflow.db'}"
        client = MlflowClient(uri)
        client.create_experiment("perf-overhead", artifact_location=(Path(d) / "artifacts").as_uri())
        _say(f"overhead: {OVERHEAD_VARIANT} tiny step, batch {pc.overhead_batch}, MLflow every step vs none "
             f"({pc.repeats} rounds of {pc.overhead_warmup} + {pc.overhead_steps} steps)")
        logged, flush_every, inside = 0, None, []

        def step_s(tracker, window: dict | None = None) -> float:
            dts = _train_round(cfg, system, images, device, pc.overhead_warmup, pc.overhead_steps, tracker,
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
    _say(f"overhead: compute_metrics on {n} digit samples ({warm} + {pc.repeats} calls)")
    times = rounds({"metrics": lambda: wall_time(
        lambda: compute_metrics(gen, ref, dataset="digits", cfg=mcfg, device=str(device)), device)},
        pc.repeats, warm)["metrics"]
    out["metrics"] = {"samples": n, "reference": len(ref), "rounds": pc.repeats, "warmup": warm,
                      "s_per_call": summarize(times), "s_per_1000": summarize([t * 1000 / n for t in times]),
                      "scaled": n != 1000, "kid_subsets": mcfg.kid_subsets}
    return out


# ============================================================================================== driver

def run_benchmark(pc: PerfConfig) -> dict:
    """Run the configured sections; returns every measurement (what the report and MLflow are made from)."""
    unknown = [s for s in pc.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    threads = torch.get_num_threads()
    if pc.threads:
        torch.set_num_threads(pc.threads)
    try:
        return _run_sections(pc)
    finally:
        torch.set_num_threads(threads)


def _run_sections(pc: PerfConfig) -> dict:
    device = resolve_device(pc.device)
    res: dict = {
        "config": asdict(pc), "device": device_description(device), "git_commit": git_commit(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "load_start": _load(),
        "cpu_pressure_start": _cpu_pressure(),
    }
    if device.type == "cuda":
        res["device"]["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        res["device"]["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    t0 = time.perf_counter()
    runners = {"haar": bench_haar, "sampling": bench_sampling, "training": bench_training,
               "overhead": bench_overhead}
    for name in SECTIONS:
        if name in pc.sections:
            ts = time.perf_counter()
            res[name] = runners[name](pc, device)
            res[name]["section_wall_s"] = time.perf_counter() - ts
    res["wall_s"] = time.perf_counter() - t0
    res["load_end"] = _load()
    res["cpu_pressure_end"] = _cpu_pressure()
    return res


def _cpu_pressure() -> float | None:
    """Linux PSI: % of the last 60 s in which some runnable task waited for a CPU (other load on the machine)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(kv.split("=") for kv in line.split()[1:])["avg60"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ============================================================================================== report

def _f(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    mag = math.floor(math.log10(abs(x)))
    return f"{x:.{max(0, digits - 1 - mag)}f}" if mag < 6 else f"{x:.3g}"


def _s(stat: dict, scale: float = 1.0, digits: int = 3) -> str:
    """median [min-max]"""
    return f"{_f(stat['median'] * scale, digits)} [{_f(stat['min'] * scale, digits)}-{_f(stat['max'] * scale, digits)}]"


def _r(stat: dict) -> str:
    """paired median [min-max], and the ratio of the minima"""
    return f"{_f(stat['median'])}x [{_f(stat['min'])}-{_f(stat['max'])}], minima {_f(stat['of_minima'])}x"


def render(res: dict) -> str:
    d, pc = res["device"], res["config"]
    L = ["# wavebench performance benchmark", ""]
    L.append(f"Protocol: device {d['device']} ({d['device_name']}), {d['torch_threads']} torch threads, "
             f"{d['cpu_count']} CPUs, torch {d['torch_version']}; mode {'quick' if pc['quick'] else 'full'}, "
             f"network scale {pc['scale']}; every figure is median [min-max] over interleaved rounds (A B C A B C) "
             f"after warm-up, device-synchronised; ratios are per round between arms of the same round. "
             f"Load average at start / end: {res['load_start']} / {res['load_end']}, CPU pressure (PSI some avg60, "
             f"% of time a task waited for a CPU) {res.get('cpu_pressure_start')} / {res.get('cpu_pressure_end')}; "
             f"commit {res['git_commit']}; "
             f"{res['started']}; total {res['wall_s']:.0f} s.")
    busy = [p for p in (res.get("cpu_pressure_start"), res.get("cpu_pressure_end")) if p is not None and p >= 10]
    if busy and d["device"] == "cpu":
        L.append("")
        L.append(f"**Warning**: other processes competed for the CPU during this run (CPU pressure up to "
                 f"{max(busy):.0f}%): absolute times are inflated and ratios distorted. Rerun on an idle machine, "
                 f"or with --threads 1 to avoid stalls between threads.")
    L.append("")
    L.append("References (not measurements of this run) are labelled **reference**. On a shared CPU, other load "
             "stalls every multi-threaded operator (threads wait for a core), which penalises networks made of many "
             "small operators more than large convolutions: read the ratios with the load figures above, and prefer "
             "ratios to absolute seconds.")

    if "haar" in res:
        h = res["haar"]
        L += ["", "## 1. Haar transform round trip (haar_dwt + haar_idwt)", ""]
        L.append(f"{h['rounds']} rounds, each measurement a loop of at least {h['min_time_s'] * 1e3:.0f} ms; "
                 f"{h['pytorch_wavelets']}. pytorch_wavelets: DWTForward(J=1, 'haar', mode='zero') + DWTInverse.")
        L.append("")
        head = "| shape | x.clone() ms | ours ms |"
        sep = "|---|---:|---:|"
        if h["available"]:
            head += " pytorch_wavelets ms | ours vs pytorch_wavelets (target >= 5x) |"
            sep += "---:|---:|"
        head += " ours / clone (floor) | max round-trip error |"
        sep += "---:|---:|"
        L += [head, sep]
        for row in h["rows"]:
            shape = "(" + ",".join(map(str, row["shape"])) + ")"
            line = f"| {shape} | {_s(row['ms']['clone'])} | {_s(row['ms']['ours'])} |"
            if h["available"]:
                sp = row["speedup_vs_pytorch_wavelets"]
                line += f" {_s(row['ms']['pytorch_wavelets'])} | {_r(sp)} {'met' if sp['median'] >= 5 else 'MISSED'} |"
            err = ", ".join(f"{k} {v:.1e}" for k, v in row["max_roundtrip_error"].items())
            line += f" {_r(row['ours_over_clone'])} | {err} |"
            L.append(line)
        L.append("")
        L.append(f"- **reference**: {REFERENCES['haar_cpu']}.")

    if "sampling" in res:
        s = res["sampling"]
        B = s["batch"]
        L += ["", "## 2. Sampling", ""]
        L.append(f"CIFAR-10 configurations at scale {s['scale']}, batch {B}, fixed x_T and noise, "
                 f"{s['warmup']} warm-up + {s['rounds']} timed rounds ({s['sampler_rounds']} for the whole GAN "
                 f"samplers). GFLOPs = 2 x multiply-adds (torch "
                 f"FlopCounterMode on the meta device; convolutions and matrix products only).")
        gan = s["gan"]
        comparable = s["scale"] == "paper" and B == 100  # the references' configuration
        L += ["", f"### Whole sampler (T=4, final inverse transform included), seconds per batch of {B}", "",
              "| variant | NFE | s / batch | speedup vs ddgan | GFLOPs / sample | achieved GFLOP/s | G params |"
              + (" **reference** public code, 2 CPU threads, s / batch | **reference** paper, A100, s / batch |"
                 if comparable else ""),
              "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if comparable else "")]
        for name, v in gan["variants"].items():
            cpu_ref, gpu_ref = REFERENCES["gan_table"].get(name, ("-", "-"))
            L.append(f"| {name} | {v['nfe']} | {_s(v['seconds'])} | {_r(v['speedup_vs_baseline'])} | "
                     f"{_f(v['gflops_per_sample'])} | {_f(v['gflops_per_s'])} | {v['params_generator'] / 1e6:.2f}M |"
                     + (f" {cpu_ref} | {gpu_ref} |" if comparable else ""))
        gv = gan["variants"]
        if "wavediff" in gv and "ddgan" in gv:
            L.append("")
            L.append(f"- measured here: ddgan / wavediff = {_r(gv['wavediff']['speedup_vs_baseline'])} "
                     f"(FLOP ratio {gv['ddgan']['gflops_per_sample'] / gv['wavediff']['gflops_per_sample']:.2f}); "
                     f"ddgan / wavediff-wg = {_r(gv['wavediff-wg']['speedup_vs_baseline'])}.")
        if not comparable:
            L.append(f"- the references below are for the paper configurations at batch 100 (this run: scale "
                     f"{s['scale']}, batch {B}): compare ratios only.")
        L.append(f"- **reference**: {REFERENCES['paper_gpu']}.")
        L.append(f"- **reference**: {REFERENCES['public_cpu']}.")

        st = s["step"]
        L += ["", f"### DDPM vs WDDM: per step (one denoiser call at batch {B}; NOT the whole sampler)", "",
              "| variant | state | s / step (batch) | speedup vs ddpm | GFLOPs / call / sample | achieved GFLOP/s | "
              "NFE | projected s / batch, all NFE | params |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, v in st["variants"].items():
            L.append(f"| {name} | {'x'.join(map(str, v['state']))} | {_s(v['seconds'])} | "
                     f"{_r(v['speedup_vs_baseline'])} | {_f(v['gflops_per_call_per_sample'])} | "
                     f"{_f(v['gflops_per_s'])} | {v['nfe']} | {_f(v['projected_sampler_s'])} | "
                     f"{v['params_denoiser'] / 1e6:.2f}M |")
        L.append("")
        L.append("- per step = one network call at t = T/2 (the sampler's elementwise update is not included); "
                 "the projected column is NFE x the median step, not a measurement of the whole sampler.")
        L.append(f"- **reference**: {REFERENCES['ddpm_table']}.")

        dv = s["dvdp"]
        calls = ", ".join(f"{n} calls at {r}x{r}" for r, n in dv["calls_per_resolution"].items())
        L += ["", "### DVDP vs DDPM, per sample", ""]
        L.append(f"DVDP ({dv['sampler']} sampler, turning points {dv['turning_points']}) makes {calls}; DDPM makes "
                 f"{dv['ddpm_nfe']} calls at full resolution. Per-sample cost = sum over resolutions of (calls) x "
                 f"(seconds of one call at batch {B} at that resolution) / {B}, each call measured in the same "
                 f"rounds as DDPM's (the lift at the turning point and the elementwise updates are not included).")
        L += ["", "| | s / sample | GFLOPs / sample | speedup vs ddpm | FLOP ratio |", "|---|---:|---:|---:|---:|",
              f"| ddpm | {_s(dv['ddpm_s_per_sample'])} | {_f(dv['ddpm_gflops_per_sample'])} | 1 | 1 |",
              f"| dvdp | {_s(dv['dvdp_s_per_sample'])} | {_f(dv['dvdp_gflops_per_sample'])} | "
              f"{_r(dv['speedup_vs_ddpm'])} | {_f(dv['flop_ratio'])} |"]
        L.append("")
        L.append("Seconds per call at each resolution: " + "; ".join(
            f"{r}x{r}: {_s(v)} s" for r, v in dv["seconds_per_call"].items()) + ".")

    if "training" in res:
        tr = res["training"]
        L += ["", "## 3. Training throughput", ""]
        L.append(f"The suite's own training loops (bench.train: optimiser step, EMA, R1 every lazy_reg steps for the "
                 f"GANs, WDDM's image-space term), scale {tr['scale']}, batch {tr['batch']}, random uint8 images of "
                 f"CIFAR-10 shape; each arm in each of {tr['rounds']} rounds runs {tr['warmup_steps']} untimed + "
                 f"{tr['timed_steps']} timed steps (wall-clock between steps). With the warm-up covering step 0, "
                 f"the GANs' timed steps hold no R1 step (R1 costs 1/lazy_reg of a step extra on average).")
        for grp in tr["groups"]:
            base = grp["baseline"]
            L += ["", f"| variant | images / s | s / step | speedup vs {base} |", "|---|---:|---:|---:|"]
            for name, v in grp["variants"].items():
                L.append(f"| {name} | {_s(v['images_per_s'])} | {_s(v['s_per_step'])} | "
                         f"{_r(v['speedup_vs_baseline'])} |")
        L.append("")
        L.append(f"- **reference**: {REFERENCES['wddm_claim']}.")

    if "overhead" in res:
        o = res["overhead"]
        lg, m = o["logging"], o["metrics"]
        pct, direct = lg["overhead_pct"], lg["direct_overhead_pct"]
        L += ["", "## 4. Suite overhead", ""]
        L.append(f"Training step of {lg['variant']} ({lg['scale']}, {lg['dataset']}, batch {lg['batch']}) with "
                 f"MLflow logging every step (bench.tracking.Tracker on a fresh SQLite store, buffered, flushed every "
                 f"{lg['flush_every']} values) vs NullTracker; {lg['rounds']} rounds of {lg['warmup_steps']} + "
                 f"{lg['timed_steps']} steps per arm (mean wall-clock per step per round).")
        L += ["", "| s / step, no logging | s / step, MLflow every step | difference % | time inside the Tracker, "
              "ms / step | direct overhead % (target < 2%) |", "|---:|---:|---:|---:|---:|",
              f"| {_s(lg['s_per_step_null'])} | {_s(lg['s_per_step_mlflow'])} | "
              f"{_f(pct['median'], 2)} [{_f(pct['min'], 2)} to {_f(pct['max'], 2)}] | "
              f"{_s(lg['tracker_s_per_step'], 1e3)} | {_s(direct, 1.0, 2)} "
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
                 f"{_s(m['s_per_1000'])} s per 1,000 generated samples ({how}; {m['warmup']} warm-up + "
                 f"{m['rounds']} calls).")
    L.append("")
    return "\n".join(L)


# ============================================================================================== MLflow

def _flat_metrics(res: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    if "haar" in res:
        for row in res["haar"]["rows"]:
            key = "x".join(map(str, row["shape"]))
            for impl, st in row["ms"].items():
                m[f"haar_{key}_{impl}_ms"] = st["median"]
            m[f"haar_{key}_ours_over_clone"] = row["ours_over_clone"]["median"]
            if "speedup_vs_pytorch_wavelets" in row:
                m[f"haar_{key}_speedup_vs_pytorch_wavelets"] = row["speedup_vs_pytorch_wavelets"]["median"]
    if "sampling" in res:
        s = res["sampling"]
        for name, v in s["gan"]["variants"].items():
            m[f"sample_{name}_s_per_batch"] = v["seconds"]["median"]
            m[f"sample_{name}_speedup"] = v["speedup_vs_baseline"]["median"]
            m[f"sample_{name}_gflops_per_sample"] = v["gflops_per_sample"]
            m[f"sample_{name}_gflops_per_s"] = v["gflops_per_s"]
        for name, v in s["step"]["variants"].items():
            m[f"step_{name}_s"] = v["seconds"]["median"]
            m[f"step_{name}_speedup"] = v["speedup_vs_baseline"]["median"]
            m[f"step_{name}_gflops_per_call_per_sample"] = v["gflops_per_call_per_sample"]
            m[f"step_{name}_gflops_per_s"] = v["gflops_per_s"]
        dv = s["dvdp"]
        m["dvdp_s_per_sample"] = dv["dvdp_s_per_sample"]["median"]
        m["dvdp_ddpm_s_per_sample"] = dv["ddpm_s_per_sample"]["median"]
        m["dvdp_speedup_vs_ddpm"] = dv["speedup_vs_ddpm"]["median"]
        m["dvdp_gflops_per_sample"] = dv["dvdp_gflops_per_sample"]
    if "training" in res:
        for grp in res["training"]["groups"]:
            for name, v in grp["variants"].items():
                m[f"train_{name}_images_per_s"] = v["images_per_s"]["median"]
                m[f"train_{name}_speedup_vs_{grp['baseline']}"] = v["speedup_vs_baseline"]["median"]
    if "overhead" in res:
        o = res["overhead"]
        m["overhead_logging_pct"] = o["logging"]["overhead_pct"]["median"]
        m["overhead_step_s_null"] = o["logging"]["s_per_step_null"]["median"]
        m["overhead_step_s_mlflow"] = o["logging"]["s_per_step_mlflow"]["median"]
        m["metrics_s_per_1000"] = o["metrics"]["s_per_1000"]["median"]
    m["wall_s"] = res["wall_s"]
    return m


def log_mlflow(res: dict, md_path: Path, json_path: Path, experiment: str = "perf") -> str:
    pc = res["config"]
    tracker = Tracker.start(experiment, run_name=f"perf-{'quick' if pc['quick'] else 'full'}-{res['device']['device']}",
                            tags={"mode": "quick" if pc["quick"] else "full", "device": res["device"]["device"],
                                  "device_name": res["device"]["device_name"],
                                  "torch_threads": res["device"]["torch_threads"]})
    try:
        tracker.log_params(flatten({**pc, "sections": ",".join(pc["sections"])}))
        tracker.log_metrics(_flat_metrics(res))
        tracker.log_artifact(md_path)
        tracker.log_artifact(json_path)
        tracker.end()
    except BaseException as e:
        tracker.fail(f"{type(e).__name__}: {e}")
        raise
    return tracker.run_id


# ============================================================================================== CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI smoke: tiny networks, small batches, few rounds")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--out", default=str(OUT_DEFAULT), help="Markdown report (a .json with every measurement "
                                                            "is written next to it)")
    ap.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run (experiment 'perf')")
    ap.add_argument("--repeats", type=int, help="timed interleaved rounds of sections 2-4 (default 3; 2 for the "
                                                 "whole GAN samplers; 20 on CUDA)")
    ap.add_argument("--sample-batch", type=int, help="batch of the timed sampler / denoiser calls (default 100)")
    ap.add_argument("--train-batch", type=int, help="batch of the timed training steps")
    ap.add_argument("--scale", choices=registry.SCALES, help="network sizes of sections 2-3")
    ap.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    over = {"device": args.device, "seed": args.seed}
    for key in ("repeats", "sample_batch", "train_batch", "scale", "threads"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.repeats is not None:
        over["sampler_repeats"] = args.repeats
    if not args.quick and resolve_device(args.device).type == "cuda":
        # A GPU affords the papers' protocol more closely (they use 10 warm-up + 300 timed runs).
        over.setdefault("repeats", 20)
        over.setdefault("sampler_repeats", over["repeats"])
        over["warmup"] = 10
    if args.sections:
        over["sections"] = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        bad = [s for s in over["sections"] if s not in SECTIONS]
        if bad:
            ap.error(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(SECTIONS)}")
    if (args.repeats is not None and args.repeats < 1) or any(
            (over.get(k) or 1) < 1 for k in ("sample_batch", "train_batch", "threads")):
        ap.error("--repeats, --sample-batch, --train-batch and --threads must be >= 1")
    pc = quick_config(**over) if args.quick else PerfConfig(**over)

    res = run_benchmark(pc)
    text = render(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(res, indent=2, default=str))
    print(text)
    print(f"written: {out} and {json_path}")
    if not args.no_mlflow:
        run_id = log_mlflow(res, out, json_path)
        print(f"MLflow run {run_id} (experiment 'perf')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
