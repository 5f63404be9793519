"""Cost metrics: parameter counts, FLOPs, NFE (counted, never copied from config) and sampling time.

FLOPs are counted by torch's ``FlopCounterMode`` at the aten level as 2 x multiply-adds (convolutions and
matrix products; norms, activations and resampling are not counted). ``scaled_dot_product_attention`` on CPU
is counted with torch's own SDPA formula, so attention is included on every device.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = [
    "FlopCounter", "count_flops", "train_flops_per_step", "count_params", "NFECounter", "TimingConfig", "time_sampler", "device_description",
    "resolve_device", "synchronize", "no_cuda_reason",
]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


_CUSTOM_FLOPS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _CUSTOM_FLOPS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


class FlopCounter(FlopCounterMode):
    """The suite's one FLOP counter: torch's ``FlopCounterMode`` with the CPU attention kernel counted, and without
    its per-module attribution, whose autograd hooks make ``torch.autograd.grad`` on a leaf fail (a GAN's R1
    penalty): every count goes to the global total, ``get_total_flops()``, readable while it counts."""

    def __init__(self):
        super().__init__(display=False, custom_mapping=_CUSTOM_FLOPS)

    def __enter__(self):
        from torch.utils.flop_counter import _FlopCounterMode

        self.flop_counts.clear()
        self.mode = _FlopCounterMode(self)
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        done, self.mode = self.mode.__exit__(*exc), None
        return done


def count_flops(fn: Callable, *args, **kwargs) -> int:
    """FLOPs (2 x MACs) of one call ``fn(*args, **kwargs)``, counted under ``torch.no_grad``."""
    with torch.no_grad(), FlopCounter() as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def train_flops_per_step(cfg, batch: int = 4, cycle: str = "mean") -> float:
    """FLOPs of one optimisation step of ``cfg`` at its ``train.batch_size``, as its family's training step runs
    it: every forward and backward pass of every network (a GAN's R1 double backward included), on random images
    of the data set's shape, on the CPU, in fp32. ``cycle``: ``mean`` averages one cycle of the step schedule
    (:meth:`bench.families.Family.step_cycle`: a GAN's first step in ``lazy_reg`` adds R1, so (first + (lazy_reg
    - 1) x second) / lazy_reg); ``full`` counts every step of the cycle (the tests check both agree); ``plain`` is
    a step without R1. Counted on ``batch`` images per step and scaled to the batch size: every counted operation
    is linear in it. The demo's equal-FLOPs budgets and bench.perf's TFLOP/s both come from here."""
    import tempfile
    from dataclasses import replace

    from bench import registry
    from bench.data import InMemoryImages, dataset_channels
    from bench.tracking import NullTracker
    from bench.train import BatchStream

    if cycle not in ("mean", "full", "plain"):
        raise ValueError(f"cycle={cycle!r}; valid: mean, full, plain")
    family = registry.family(cfg)
    t = cfg.train
    n = max(1, family.step_cycle(cfg))
    steps = 2 if cycle == "plain" else (n if cycle == "full" else min(n, 2))
    small = replace(cfg, device="cpu", processes=1,
                    train=replace(t, batch_size=batch, max_steps=steps, max_epochs=None, max_minutes=None,
                                  checkpoint_every=10 ** 9, log_every=10 ** 9, compile=False, precision="fp32"))
    if cycle == "plain":
        small = family.without_step_extras(small)
    torch.manual_seed(cfg.seed)
    system = registry.build(small)
    side = cfg.data.resolution
    g = torch.Generator().manual_seed(cfg.seed)
    images = torch.randint(0, 256, (batch * steps, dataset_channels(cfg.data), side, side), generator=g,
                           dtype=torch.uint8)
    stream = BatchStream(InMemoryImages(images, torch.zeros(len(images), dtype=torch.long)), batch, cfg.seed)
    totals: list[int] = []
    with tempfile.TemporaryDirectory() as workdir, FlopCounter() as counter:
        family.trainer(small, system, stream, NullTracker(), workdir, torch.device("cpu"), progress=False,
                       on_step=lambda step, secs: totals.append(counter.get_total_flops()))
    per_step = [b - a for a, b in zip([0] + totals[:-1], totals)]
    if cycle == "plain":
        mean = per_step[1]
    elif cycle == "full" or n == 1:
        mean = sum(per_step) / len(per_step)
    else:
        mean = (per_step[0] + (n - 1) * per_step[1]) / n
    return mean * t.batch_size / batch


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class NFECounter:
    """Counts forward calls of a network (a forward pre-hook); use as a context manager.

    >>> with NFECounter(net) as nfe: sampler(...)
    >>> nfe.calls / batches  # network function evaluations per sampling run
    """

    def __init__(self, module: nn.Module):
        self.module, self.calls, self._handle = module, 0, None

    def _hook(self, module, inputs):
        self.calls += 1

    def __enter__(self) -> "NFECounter":
        self.calls = 0
        self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def no_cuda_reason() -> str:
    """Why torch sees no CUDA device in this process, in words a user can act on."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of torch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return ("CUDA_VISIBLE_DEVICES is empty in this process: the executor gave the job no GPU (on SLURM, set "
                "gpus_per_node in the cluster profile)")
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU"
            + (f" among CUDA_VISIBLE_DEVICES={visible!r}" if visible else "") + " (is the NVIDIA driver loaded?)")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else is passed to torch (a clear error if unavailable)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} was asked for but CUDA is not available: {no_cuda_reason()}; "
                               "use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={device!r}: this process sees {torch.cuda.device_count()} GPU(s) "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict:
    """What every logged timing names: device, its model and the thread count."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
    }


@dataclass
class TimingConfig:
    batch_size: int = 100     # images per timed sampler call (the papers: 100; 25 at CelebA-HQ 512/1024)
    warmup: int = 10          # untimed runs first (the papers: 10)
    repeats: int = 300        # timed runs (the papers: 300 on an A100)


def time_sampler(sample: Callable[[torch.Tensor], torch.Tensor], x_T: torch.Tensor, cfg: TimingConfig,
                 device: torch.device) -> dict:
    """Seconds per batch of the whole sampler (fixed initial noise ``x_T``; the final inverse transform inside
    ``sample``), after ``cfg.warmup`` untimed runs, with device synchronisation (CUDA events on GPU)."""
    times: list[float] = []
    with torch.no_grad():
        for _ in range(cfg.warmup):
            sample(x_T)
        synchronize(device)
        for _ in range(cfg.repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                sample(x_T)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1000.0)
            else:
                t0 = time.perf_counter()
                sample(x_T)
                times.append(time.perf_counter() - t0)
    return {
        "time_mean_s": statistics.fmean(times),
        "time_std_s": statistics.pstdev(times) if len(times) > 1 else 0.0,
        "time_median_s": statistics.median(times),
        "time_min_s": min(times),
        "time_max_s": max(times),
        "time_batch_size": int(x_T.shape[0]),
        "time_warmup": cfg.warmup,
        "time_repeats": cfg.repeats,
        **device_description(device),
    }


@contextlib.contextmanager
def eval_mode(*modules: nn.Module):
    """Puts modules in eval mode and restores their previous mode afterwards."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, w in zip(modules, was):
            m.train(w)
