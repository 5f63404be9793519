"""Performance benchmark (``make bench-perf``): the suite's speed claims, measured as ratios within one run.

    python -m bench.perf [--quick] [--device auto|cpu|cuda] [--out reports/out/perf.md] [--no-mlflow]
                         [--repeats N] [--sample-batch N] [--train-batch N] [--scale paper|tiny]
                         [--sections haar,sampling,training,overhead,ops] [--threads N]
                         [--train-warmup N] [--train-steps N] [--profile] [--json FILE] [--write-budgets]

Sections:

1. ``haar``: round trip ``haar_dwt`` + ``haar_idwt`` vs pytorch_wavelets ``DWTForward``/``DWTInverse`` (haar, J=1;
   an optional bench-only dependency, skipped with a note when absent) vs ``x.clone()`` (the memory floor).
2. ``sampling``: at the papers' CIFAR-10 configurations: the whole T=4 sampler of ddgan / wavediff / wavediff-wg
   as evaluation runs it (batch 100, fixed x_T; CUDA graphs on a GPU); one denoiser call ("per step") of ddpm /
   wddm-unet-l1/-l2 / wddm-ukan-l1/-l2; dvdp vs ddpm per sample; on CUDA, CUDA graphs vs eager for the GAN samplers
   and the DDPM denoiser loop. Achieved TFLOP/s and share of the GPU's published peak.
3. ``training``: images/s of the suite's own training loops, one trainer per arm kept across the rounds, each round
   timing whole step cycles (a GAN's lazy_reg: R1 steps included) after warm-up, per training precision (fp32, and
   bf16 on GPUs), with FLOPs per step and achieved TFLOP/s (share of the GPU's peak); ``--profile`` writes a
   torch.profiler kernel table per arm to ``<out>-profiles/``.
4. ``overhead``: a training step with MLflow logging every step (real SQLite store, buffered ``Tracker``) vs
   ``NullTracker``; ``compute_metrics`` time per 1,000 digit samples; feature extraction per 1,000 images for each
   metric backbone whose weights are available (CPU, and the GPU when there is one).

5. ``ops``: aten ops dispatched per training step (plain and R1) and per sampling-network call, fp32 and bf16,
   counted on the CPU through the suite's own trainers and sampler (bench/perf/ops.py says exactly what is
   counted); ``--json FILE`` writes ``{variant: {precision: {"plain_step", "r1_step", "sampler_call"}}}``,
   ``--write-budgets`` makes the counts the committed budgets (bench/perf/op_budgets.json) that
   tests/test_op_budget.py holds every count to (+5%).

Each section is a module of this package with ``run(pc, device)``, ``render(section, result)`` and
``metrics(section)``; this module runs them, writes the report and logs the MLflow run.

Protocol: every figure is the median and min-max of interleaved rounds (A B C A B C ...) after warm-up, with
device synchronisation (CUDA events on GPU); ratios are taken per round between arms of the same round and
summarised the same way. FLOPs are counted on the meta device (no arithmetic) as 2 x multiply-adds.

Duration on 2 CPU cores: ``--quick`` (tiny networks, batch 8) 25-40 s before the ops section, 53 s with it under
heavy load (ops 11 s); the full run (3 rounds, 2 for the whole GAN samplers) about 10 minutes on an idle machine
and 15-17 under heavy load before the ops section (about 2 minutes) and before the GANs' training windows became
whole lazy_reg cycles (15 steps instead of 2: not remeasured), dominated by the paper-size DDGAN sampler at batch
100 (about 30 s per call) and the paper-size DDPM denoiser call (about 11 s at batch 100).
``--repeats``, ``--sample-batch`` and ``--sections`` bound it. On CUDA the full run uses 10 warm-up and 20 timed
rounds unless ``--repeats`` is given. On a shared CPU, ``--threads 1`` avoids stalls between threads.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from bench import registry
from bench.evaluate import device_description, resolve_device
from bench.perf import haar, ops, overhead, sampling, training
from bench.perf.config import OUT_DEFAULT, REFERENCES, SECTIONS, PerfConfig, arm_options, quick_config
from bench.perf.haar import HAAR_SHAPES, load_pytorch_wavelets
from bench.perf.overhead import OVERHEAD_VARIANT
from bench.perf.sampling import DVDP_VARIANT, GAN_GROUP, STEP_GROUP
from bench.perf.timing import interleaved, paired_ratio, rounds, summarize, versus, wall_time
from bench.perf.training import TRAIN_ARMS, TRAIN_GROUPS
from bench.tracking import Tracker, flatten, git_commit

__all__ = ["PerfConfig", "quick_config", "run_benchmark", "render", "rounds", "interleaved", "wall_time", "summarize",
           "paired_ratio", "versus", "load_pytorch_wavelets", "main", "SECTIONS", "GAN_GROUP", "STEP_GROUP",
           "DVDP_VARIANT", "TRAIN_GROUPS", "HAAR_SHAPES", "OVERHEAD_VARIANT", "REFERENCES"]

MODULES = {"haar": haar, "sampling": sampling, "training": training, "overhead": overhead, "ops": ops}


def run_benchmark(pc: PerfConfig, on_section: Callable[[dict], None] | None = None) -> dict:
    """Run the configured sections; returns every measurement (what the report and MLflow are made from).
    ``on_section`` gets the results so far after each section but the last (``res["unfinished"]`` names the
    sections still to run), so a run that is cut short keeps what it measured."""
    unknown = [s for s in pc.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    threads = torch.get_num_threads()
    if pc.threads:
        torch.set_num_threads(pc.threads)
    try:
        return _run_sections(pc, on_section)
    finally:
        torch.set_num_threads(threads)


def _run_sections(pc: PerfConfig, on_section: Callable[[dict], None] | None = None) -> dict:
    device = resolve_device(pc.device)
    res: dict = {
        "config": asdict(pc), "device": device_description(device), "git_commit": git_commit(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "load_start": _load(),
        "cpu_pressure_start": _cpu_pressure(),
    }
    if device.type == "cuda":
        res["device"]["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        res["device"]["tf32_conv"] = torch.backends.cudnn.allow_tf32
        res["device"]["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    t0 = time.perf_counter()
    todo = [name for name in SECTIONS if name in pc.sections]
    for i, name in enumerate(todo):
        ts = time.perf_counter()
        res[name] = MODULES[name].run(pc, device)
        res[name]["section_wall_s"] = time.perf_counter() - ts
        res.update(wall_s=time.perf_counter() - t0, load_end=_load(), cpu_pressure_end=_cpu_pressure())
        if on_section is not None and i + 1 < len(todo):
            on_section({**res, "unfinished": todo[i + 1:]})
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
    if res.get("unfinished"):
        L += ["", f"**Partial report**, written after each section: still to run when this was written: "
                  f"{', '.join(res['unfinished'])} (a run that ended here was cut short)."]
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

    for name in SECTIONS:
        if name in res:
            L += MODULES[name].render(res[name], res)
    L.append("")
    return "\n".join(L)


# ============================================================================================== MLflow

def _flat_metrics(res: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for name in SECTIONS:
        if name in res:
            m.update(MODULES[name].metrics(res[name]))
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
    ap = argparse.ArgumentParser(prog="python -m bench.perf", description=(__doc__ or "").split("\n")[0])
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
    ap.add_argument("--train-precisions", help="training arms, comma-separated: a precision (fp32, bf16) with any of "
                                               "+graphs (train.cuda_graphs), +fast_sums (train.fast_sums), e.g. "
                                               "bf16+graphs+fast_sums (default fp32; on CUDA: "
                                               + ", ".join(TRAIN_ARMS) + ")")
    ap.add_argument("--train-warmup", type=int, help="untimed training steps per arm and round (default 1; a GAN's "
                                                      "are whole lazy_reg cycles)")
    ap.add_argument("--train-steps", type=int, help="timed training steps per arm and round (default 2; a GAN's are "
                                                     "rounded up to whole lazy_reg cycles, R1 steps included)")
    ap.add_argument("--profile", action="store_true", help="training: write a torch.profiler kernel table per "
                                                           "variant and precision to <out>-profiles/ (e.g. "
                                                           "reports/out/perf-profiles/)")
    ap.add_argument("--json", help="ops section: write {variant: {arm: {plain_step, r1_step, sampler_call}}} "
                                   "to this file (arms: fp32, bf16 and, for the GANs, fp32+fast_sums, bf16+fast_sums)")
    ap.add_argument("--write-budgets", action="store_true", help="ops section: write its counts as the committed "
                                                                 "budgets (bench/perf/op_budgets.json)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    over = {"device": args.device, "seed": args.seed}
    for key in ("repeats", "sample_batch", "train_batch", "scale", "threads", "train_warmup", "train_steps"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.repeats is not None:
        over["sampler_repeats"] = args.repeats
    if resolve_device(args.device).type == "cuda":
        over["train_precisions"] = TRAIN_ARMS  # mixed precision and CUDA graphs are GPU options
        if not args.quick:
            # A GPU affords the papers' protocol more closely (they use 10 warm-up + 300 timed runs).
            over.setdefault("repeats", 20)
            over.setdefault("sampler_repeats", over["repeats"])
            over["warmup"] = 10
    if args.train_precisions:
        over["train_precisions"] = tuple(p.strip() for p in args.train_precisions.split(",") if p.strip())
        if not over["train_precisions"]:
            ap.error("--train-precisions is empty; e.g. fp32,bf16+graphs+fast_sums")
        for arm in over["train_precisions"]:
            try:
                arm_options(arm)
            except ValueError as e:
                ap.error(f"--train-precisions: {e} (+graphs, +fast_sums: GAN variants only)")
    if args.sections:
        over["sections"] = tuple(s.strip() for s in args.sections.split(",") if s.strip())
        bad = [s for s in over["sections"] if s not in SECTIONS]
        if bad:
            ap.error(f"unknown section(s) {', '.join(bad)}; valid: {', '.join(SECTIONS)}")
    if (args.repeats is not None and args.repeats < 1) or any(
            over.get(k, 1) < 1 for k in ("sample_batch", "train_batch", "threads", "train_steps")):
        ap.error("--repeats, --sample-batch, --train-batch, --train-steps and --threads must be >= 1")
    if args.train_warmup is not None and args.train_warmup < 1:
        ap.error("--train-warmup must be >= 1 (the first step builds the optimiser state)")
    out = Path(args.out)
    if args.profile:
        over["profile"] = str(out.parent / f"{out.stem}-profiles")
    if (args.json or args.write_budgets) and "ops" not in over.get("sections", SECTIONS):
        ap.error("--json and --write-budgets need the ops section (--sections ...,ops)")
    if args.write_budgets and (args.quick or over.get("scale", "paper") != "paper"):
        ap.error("--write-budgets counts the paper configurations: drop --quick / --scale")
    pc = quick_config(**over) if args.quick else PerfConfig(**over)

    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")

    def write(res: dict) -> str:
        text = render(res)
        out.write_text(text)
        json_path.write_text(json.dumps(res, indent=2, default=str))
        return text

    res = run_benchmark(pc, on_section=write)
    text = write(res)
    print(text)
    print(f"written: {out} and {json_path}")
    if args.json:
        Path(args.json).write_text(json.dumps(res["ops"]["table"], indent=2) + "\n")
        print(f"written: {args.json}")
    if args.write_budgets:
        print(f"written: {ops.write_budgets(res['ops']['table'])}")
    if not args.no_mlflow:
        run_id = log_mlflow(res, out, json_path)
        print(f"MLflow run {run_id} (experiment 'perf')")
    return 0

