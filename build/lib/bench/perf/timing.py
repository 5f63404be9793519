"""The one measurement loop of the benchmark and what every section shares: synchronised timing, interleaved
rounds, summaries and ratios, the devices' published peak throughput, number formatting for the report."""
from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Callable

import torch

from bench.evaluate import synchronize

__all__ = ["time_call", "calibrate", "rounds", "interleaved", "wall_time", "summarize", "paired_ratio", "versus",
           "device_peak", "DEVICE_PEAKS", "say", "fmt", "stat", "ratio"]


def say(msg: str) -> None:
    print(f"[perf] {msg}", file=sys.stderr, flush=True)


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


# Dense peak throughput in TFLOP/s from NVIDIA's data sheets (their tensor-core figures are "with sparsity":
# dense is half), by a substring of torch.cuda.get_device_name (first match wins). fp32 convolutions run at the
# tf32 figure under PyTorch's defaults (cuDNN TF32 on); bf16 autocast at the bf16 one.
DEVICE_PEAKS: tuple[tuple[str, dict[str, float], str], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}, "NVIDIA H200 NVL data sheet"),
    ("H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}, "NVIDIA H200 SXM data sheet"),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5}, "NVIDIA H100 PCIe data sheet"),
    ("H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5}, "NVIDIA H100 SXM data sheet"),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}, "NVIDIA A100 data sheet"),
)


def device_peak(device_name: str, numerics: str) -> tuple[float | None, str]:
    """(peak dense TFLOP/s for ``numerics`` = fp32 | tf32 | bf16, its source) of a GPU; (None, why) otherwise."""
    for key, peaks, source in DEVICE_PEAKS:
        if key in device_name:
            return peaks[numerics], f"{source}, dense {numerics}"
    return None, f"no published peak on record for {device_name!r}"


# ---------------------------------------------------------------------------------------------- report format

def fmt(x: float, digits: int = 3) -> str:
    if x == 0 or not math.isfinite(x):
        return str(x)
    mag = math.floor(math.log10(abs(x)))
    return f"{x:.{max(0, digits - 1 - mag)}f}" if mag < 6 else f"{x:.3g}"


def stat(s: dict, scale: float = 1.0, digits: int = 3) -> str:
    """median [min-max]"""
    return f"{fmt(s['median'] * scale, digits)} [{fmt(s['min'] * scale, digits)}-{fmt(s['max'] * scale, digits)}]"


def ratio(s: dict) -> str:
    """paired median [min-max], and the ratio of the minima"""
    return f"{fmt(s['median'])}x [{fmt(s['min'])}-{fmt(s['max'])}], minima {fmt(s['of_minima'])}x"
