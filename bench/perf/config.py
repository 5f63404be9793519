"""The benchmark's configuration, its sections' names, and the reference figures printed beside (never mixed with)
the measurements."""
from __future__ import annotations

from dataclasses import dataclass

from bench.tracking import REPO_ROOT

__all__ = ["PerfConfig", "quick_config", "SECTIONS", "REFERENCES", "OUT_DEFAULT", "ARM_OPTIONS", "arm_options"]

SECTIONS = ("haar", "sampling", "training", "overhead", "ops")

OUT_DEFAULT = REPO_ROOT / "reports" / "out" / "perf.md"

# A training or op-count arm: a precision, then options after '+', each a GAN training switch.
ARM_PRECISIONS = ("fp32", "bf16")
ARM_OPTIONS = {"graphs": "cuda_graphs", "fast_sums": "fast_sums"}


def arm_options(arm: str) -> dict[str, object]:
    """The training-config overrides of an arm such as ``bf16+graphs+fast_sums``: ``{"precision": "bf16",
    "cuda_graphs": True, "fast_sums": True}``; a ValueError naming the valid parts for anything else."""
    precision, *options = arm.split("+")
    bad = [o for o in options if o not in ARM_OPTIONS] + ([precision] if precision not in ARM_PRECISIONS else [])
    if bad or len(set(options)) != len(options):
        raise ValueError(f"arm {arm!r}: a precision ({', '.join(ARM_PRECISIONS)}) then any of "
                         f"{', '.join('+' + o for o in ARM_OPTIONS)}, each once")
    return {"precision": precision, **{ARM_OPTIONS[o]: True for o in options}}


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
    train_warmup: int = 1             # untimed training steps per arm, once (optimiser state, allocator; >= 1)
    train_steps: int = 2              # timed training steps per arm and round, rounded up to whole step cycles
                                      #   (a GAN's lazy_reg: its R1 steps are timed too)
    profile: str | None = None        # training: folder for a torch.profiler kernel table per arm (None: off)
    haar_repeats: int = 30            # timed interleaved rounds of section 1
    haar_min_time_s: float = 0.02     # each transform measurement loops until it lasts at least this long
    overhead_batch: int = 64          # tiny training step of section 4 (the CPU demo's batch)
    overhead_warmup: int = 2          # untimed steps per arm and round (run creation excluded)
    overhead_steps: int = 20          # timed steps per arm and round (~10 values per step: one buffered flush
                                      #   inside, plus the flush that ends the window)
    metrics_samples: int = 1000       # generated samples per compute_metrics call (digits)
    extraction_images: int = 200      # images per timed feature extraction of section 4c (Inception-v3 on 2 CPU
                                      #   cores: about 0.1 s per image), reported per 1,000
    threads: int | None = None        # torch.set_num_threads (None: leave as is, e.g. OMP_NUM_THREADS)
    train_precisions: tuple[str, ...] = ("fp32",)  # training arms (fp32 and bf16 on GPUs)
    ddpm_loop_steps: int = 50         # denoiser calls of the DDPM loop timed with and without CUDA graphs


def quick_config(**over) -> PerfConfig:
    """The ``--quick`` preset: every code path, at sizes that run in well under a minute on 2 CPU cores."""
    base = dict(quick=True, scale="tiny", repeats=2, sampler_repeats=2, warmup=1, sample_batch=8, train_batch=4,
                train_warmup=1, train_steps=2, haar_repeats=5, haar_min_time_s=0.005, overhead_batch=8,
                overhead_warmup=1, overhead_steps=5, metrics_samples=200, extraction_images=16, ddpm_loop_steps=5)
    base.update(over)
    return PerfConfig(**base)


