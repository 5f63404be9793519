"""Section 5, ``ops``: how many aten ops the host dispatches per training step and per sampling-network call.

On a GPU these 32 x 32 networks are limited by the host, not by arithmetic: a training step's time follows the
number of ops it dispatches (issue 24). This section counts them on the CPU, in seconds, through the suite's own
code: the family's trainer (``bench.train.run_loop`` driving the family's ``update``) and the evaluation's
sampler (:class:`bench.sampling.EvalSampler`), at fp32 and under bf16 autocast.

What is counted (:class:`OpCounter`, a ``TorchDispatchMode``): every aten op call that reaches the dispatcher's
Python mode, forward and backward (autograd's own ops included; other namespaces, such as the profiler markers
around optimiser calls, are not aten ops), except

- views and other metadata-only ops (``func.is_view``, and ``aten._unsafe_view``): they launch no kernel. Every
  op, views included, is in ``all_ops`` of the section's JSON;
- the optimisers' ``step()`` calls (counted apart, ``optimizer_ops``): on CUDA the trainers use fused Adam / AdamW
  (a couple of ops per optimiser); on the CPU PyTorch loops over the parameters, which says nothing about the GPU
  step.

So ``plain_step`` is one iteration of the training loop: the batch (indexing and scaling the stored images), the
forward and backward passes of every network, the EMA, and the loop's loss window (two ops per loss). ``r1_step``
is the costly step of a step cycle (a GAN's lazy R1 step, steady state); ``null`` for families without one.
``sampler_call`` is ONE call of the sampling network as evaluation makes it (no grad; bf16 autocast, weights cast
once, for ``bf16``), after a first call, so the whole sampler costs NFE x this plus its glue. The GANs are also
counted with ``train.fast_sums`` (arms ``fp32+fast_sums``, ``bf16+fast_sums``): the same steps in fewer ops, their
sums rounded in another order.

bf16 is counted under CPU autocast, whose cast policy is not CUDA's: CUDA autocast runs more ops in fp32 (group
and layer norm, softmax, exp, ...) and so adds casts that the CPU count does not have. Dropout in training (the DDPM
family's denoisers, p > 0) is four ops on the CPU (``empty_like``, ``bernoulli_``, ``div_``, ``mul``) and one fused
``native_dropout`` kernel on CUDA: the CPU count has three more per dropout layer (51 of a ddpm step's).

Counts do not depend on the batch (counted at batch 2; DVDP at 16, :data:`COUNT_BATCH_OF`). They depend on the layer structure and, for the R1 step,
on the discriminator's width (PyTorch's double backward of a depthwise convolution loops over its groups): the
budget test (tests/test_op_budget.py) recounts at :data:`NARROW`, narrower networks whose counts equal the paper
configurations' (checked by ``tests/test_op_budget.py -m slow``).
"""
from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from bench import registry
from bench.data import InMemoryImages, dataset_channels
from bench.perf.config import PerfConfig, arm_options
from bench.perf.timing import say
from bench.sampling import EvalSampler
from bench.tracking import REPO_ROOT, NullTracker
from bench.train import BatchStream

__all__ = ["OpCounter", "OPS_VARIANTS", "OPS_PRECISIONS", "OPS_OPTION_ARMS", "ops_arms", "PLAIN_STEP_TARGETS", "FIELDS", "NARROW", "BUDGETS_PATH", "BUDGET_TOLERANCE",
           "count_training_steps", "count_sampler_call", "count_variant", "ops_config", "table", "over_budget",
           "write_budgets", "run", "render", "metrics"]

OPS_VARIANTS = ("ddgan", "wavediff", "wavediff-wg", "ddpm", "wddm-unet-l1", "wddm-ukan-l1", "dvdp")
OPS_PRECISIONS = ("fp32", "bf16")
# Also counted where the variant's trainer has the option (the GANs): train.fast_sums, fewer ops in another rounding.
OPS_OPTION_ARMS = ("fp32+fast_sums", "bf16+fast_sums")
FIELDS = ("plain_step", "r1_step", "sampler_call")
BUDGETS_PATH = REPO_ROOT / "bench" / "perf" / "op_budgets.json"
BUDGET_TOLERANCE = 0.05   # a count may exceed its budget by this fraction before the budget test fails
# Plain-step targets of the GANs' fastest fp32 arm (train.fast_sums): what a step may dispatch for the host not to
# hold a GPU back at the papers' CIFAR-10 configurations (from 1,824 / 2,434 / 2,151 ops before any cut).
PLAIN_STEP_TARGETS = {("wavediff", "fp32+fast_sums"): 1200, ("ddgan", "fp32+fast_sums"): 1600,
                      ("wavediff-wg", "fp32+fast_sums"): 1400}
COUNT_BATCH = 2           # images per counted step / call (counts do not depend on it) ...
# ... except DVDP's step, which calls the network once per stage present in the batch: 16 images hold both
# stages (as a training batch does) but with probability 2^-15.
COUNT_BATCH_OF = {"dvdp": 16}

# The narrowest networks with the paper configurations' op counts (layer structure kept, widths cut): what the
# budget test recounts. The discriminators keep their paper width: the R1 step's count grows with it.
_GAN_NARROW = {"model.generator.nf": 16, "model.generator.z_emb_dim": 32, "model.generator.nz": 16}
NARROW: dict[str, dict] = {
    "ddgan": _GAN_NARROW, "wavediff": _GAN_NARROW, "wavediff-wg": _GAN_NARROW,
    "ddpm": {"model.denoiser.block_out_channels": [32, 64, 64]},
    "wddm-unet-l1": {"model.denoiser.block_out_channels": [32, 64, 64]},
    "wddm-ukan-l1": {"model.denoiser.ch": 16},
    "dvdp": {"model.denoiser.block_out_channels": [32, 64, 64]},
}

_METADATA_ONLY = {torch.ops.aten._unsafe_view.default}


class OpCounter(TorchDispatchMode):
    """Counts aten op calls while active (see the module docstring): ``ops`` (views and other metadata-only ops
    excluded), ``all_ops`` (every op) and ``by_op`` (per op overload, excluded ones too); ops inside an
    optimiser's ``step()`` go to ``optimizer_ops`` instead."""

    def __init__(self):
        super().__init__()
        self.ops = self.all_ops = self.optimizer_ops = 0
        self.by_op: collections.Counter = collections.Counter()
        self._in_step = 0
        self._hooks: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "aten":  # e.g. the profiler's record_function markers around optimiser calls
            pass
        elif self._in_step:
            self.optimizer_ops += 1
        else:
            self.all_ops += 1
            self.by_op[str(func)] += 1
            if not (func.is_view or func in _METADATA_ONLY):
                self.ops += 1
        return func(*args, **(kwargs or {}))

    def _step(self, delta: int):
        def hook(*_):
            self._in_step += delta
        return hook

    def __enter__(self):
        self._hooks = [register_optimizer_step_pre_hook(self._step(1)),
                       register_optimizer_step_post_hook(self._step(-1))]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return super().__exit__(*exc)

    def snapshot(self) -> dict:
        return {"ops": self.ops, "all_ops": self.all_ops, "optimizer_ops": self.optimizer_ops,
                "by_op": collections.Counter(self.by_op)}


def _between(a: dict, b: dict) -> dict:
    return {"ops": b["ops"] - a["ops"], "all_ops": b["all_ops"] - a["all_ops"],
            "optimizer_ops": b["optimizer_ops"] - a["optimizer_ops"], "casts": _casts(b["by_op"] - a["by_op"])}


def _casts(by_op: collections.Counter) -> int:
    return by_op.get(str(torch.ops.aten._to_copy.default), 0)


class _Enough(Exception):
    """Raised from ``on_step`` after the counted steps: the loop stops before writing its final checkpoint."""


def ops_config(variant: str, scale: str = "paper", narrow: bool = False):
    """The CIFAR-10 config whose ops are counted: the variant's at ``scale``, or at :data:`NARROW` widths."""
    over = NARROW[variant] if narrow else {}
    return registry.resolve({"variant": variant, "dataset": "cifar10", "scale": scale, **over}, check_paths=False)


def ops_arms(variant: str) -> tuple[str, ...]:
    """The arms counted for ``variant``: :data:`OPS_PRECISIONS`, and :data:`OPS_OPTION_ARMS` where its training
    config has their options."""
    train = ops_config(variant).train
    return OPS_PRECISIONS + tuple(a for a in OPS_OPTION_ARMS if all(hasattr(train, k) for k in arm_options(a)))


def count_training_steps(cfg, precision: str, batch: int = COUNT_BATCH, seed: int = 0):
    """Ops of one plain step and of the costly step of the cycle (``None`` without one) of ``cfg`` at
    ``precision`` (or an arm, ``bf16+fast_sums``: :func:`bench.perf.config.arm_options`), through its family's
    trainer on the CPU: three steps of the loop with a two-step cycle
    (:meth:`bench.families.Family.with_short_cycle`: steps 0 and 2 costly, 1 plain), counting steps 1 and 2
    (optimiser state exists by then). Returns ``({"plain_step": {...}, "r1_step": {...} | None}, system)``: the
    system after training, for the sampler count."""
    family = registry.family(cfg)
    cyclic = family.step_cycle(cfg) > 1
    cfg = family.with_short_cycle(cfg)
    steps = 3
    cfg = replace(cfg, device="cpu", processes=1,
                  train=replace(cfg.train, batch_size=batch, max_steps=steps, max_epochs=None, max_minutes=None,
                                checkpoint_every=10**9, log_every=10**9, compile=False, **arm_options(precision)))
    torch.manual_seed(seed)
    system = registry.build(cfg)
    g = torch.Generator().manual_seed(seed)
    side = cfg.data.resolution
    images = torch.randint(0, 256, (batch * steps, dataset_channels(cfg.data), side, side), generator=g,
                           dtype=torch.uint8)
    stream = BatchStream(InMemoryImages(images, torch.zeros(len(images), dtype=torch.long)), batch, seed)
    snaps: list[dict] = []
    counter = OpCounter()

    def on_step(step: int, _elapsed: float) -> None:
        snaps.append(counter.snapshot())
        if step >= steps:
            raise _Enough

    with tempfile.TemporaryDirectory() as workdir, counter:
        try:
            family.trainer(cfg, system, stream, NullTracker(), workdir, torch.device("cpu"), progress=False,
                           on_step=on_step)
        except _Enough:
            pass
    plain, costly = _between(snaps[0], snaps[1]), _between(snaps[1], snaps[2])
    if not cyclic and plain["ops"] != costly["ops"]:
        raise RuntimeError(f"{cfg.variant}: two plain steps dispatched {plain['ops']} and {costly['ops']} ops")
    return {"plain_step": plain, "r1_step": costly if cyclic else None}, system


def count_sampler_call(system, precision: str, batch: int = COUNT_BATCH) -> dict:
    """Ops of one call of the sampling network as evaluation makes it (:class:`EvalSampler` at ``precision`` on
    the CPU), after a first call (which builds the bf16 weight copies); ``casts_per_call_uncached``: the casts of
    one call of the bare network under the same autocast (what every call, and every CUDA-graph replay, cast
    before the weights were cast once)."""
    sampler = EvalSampler(system, torch.device("cpu"), arm_options(precision)["precision"])
    net = sampler.network()
    args = system.network_inputs(batch)
    with sampler.numerics():
        net(*args)
    with sampler.numerics(), OpCounter() as c:
        net(*args)
    with sampler.numerics(), OpCounter() as plain:  # the network itself: every weight cast at every call
        system.sampling_network(*args)
    s = c.snapshot()
    return {"ops": s["ops"], "all_ops": s["all_ops"], "optimizer_ops": 0, "casts": _casts(s["by_op"]),
            "casts_per_call_uncached": _casts(plain.by_op)}


def count_variant(variant: str, scale: str = "paper", narrow: bool = False,
                  precisions: tuple[str, ...] | None = None) -> dict:
    """``{arm: {field: {"ops", "all_ops", "optimizer_ops", "casts"} | None}}`` of one variant, for ``precisions``
    (default :func:`ops_arms`)."""
    cfg = ops_config(variant, scale, narrow)
    out = {}
    for prec in precisions or ops_arms(variant):
        steps, system = count_training_steps(cfg, prec, batch=COUNT_BATCH_OF.get(variant, COUNT_BATCH))
        out[prec] = {**steps, "sampler_call": count_sampler_call(system, prec)}
    return out


def table(counts: dict) -> dict:
    """``{variant: {precision: {field: ops}}}`` (``--json``, the budget file) from :func:`count_variant`'s."""
    return {v: {p: {f: (None if c is None else c["ops"]) for f, c in fields.items()} for p, fields in precs.items()}
            for v, precs in counts.items()}


def over_budget(counts: dict, budgets: dict, tolerance: float = BUDGET_TOLERANCE) -> list[str]:
    """Every count of ``counts`` (:func:`table`'s form) above its budget by more than ``tolerance``, or without a
    budget, as one line each naming variant, precision, field and both numbers."""
    bad = []
    for v, precs in counts.items():
        for p, fields in precs.items():
            for f, n in fields.items():
                if n is None:
                    continue
                budget = budgets.get(v, {}).get(p, {}).get(f)
                if budget is None:
                    bad.append(f"{v} {p} {f}: {n} ops, no budget in {BUDGETS_PATH.name}")
                elif n > budget * (1 + tolerance):
                    bad.append(f"{v} {p} {f}: {n} ops > budget {budget} + {tolerance:.0%} "
                               f"({n / budget - 1:+.1%})")
    return bad


def write_budgets(counts: dict, path: Path = BUDGETS_PATH) -> Path:
    """Write :func:`table`'s counts as the committed budgets (``python -m bench.perf --sections ops
    --write-budgets``, after a change that lowers them)."""
    path.write_text(json.dumps(counts, indent=2) + "\n")
    return path


# ============================================================================================== section

def run(pc: PerfConfig, device: torch.device) -> dict:
    """Counted on the CPU whatever ``device`` is (the ops a step dispatches are the host's work), on one thread
    (counts do not depend on it; on a shared CPU two threads stall each other)."""
    counts = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in OPS_VARIANTS:
            say(f"ops: {name} ({', '.join(ops_arms(name))}, scale {pc.scale})")
            counts[name] = count_variant(name, pc.scale)
    finally:
        torch.set_num_threads(threads)
    return {"scale": pc.scale, "batch": COUNT_BATCH, "precisions": list(OPS_PRECISIONS), "counts": counts,
            "table": table(counts)}


def _n(c: dict | None, key: str = "ops") -> str:
    return "-" if c is None else f"{c[key]:,}"


def render(sec: dict, res: dict) -> list[str]:
    L = ["", "## 5. Aten ops per training step and per sampling-network call", ""]
    L.append(f"Counted on the CPU with a dispatch-mode counter (bench/perf/ops.py), scale {sec['scale']}, batch "
             f"{sec['batch']} (counts do not depend on it; dvdp at 16: one network call per stage present). A step is one iteration of the suite's training loop "
             f"(bench.train.run_loop + the family's update): batch, forward and backward of every network, EMA, "
             f"loss window; **optimiser step() calls excluded** (fused on CUDA; counted apart below) and views "
             f"excluded (no kernel). R1 step: a GAN's lazy-R1 step ('-': no such step). Sampler call: one call "
             f"of the sampling network as evaluation makes it (bf16: weights cast once). +fast_sums rows (GAN "
             f"variants): train.fast_sums, D's real and fake passes as one call and each projection bank's "
             f"gradients in one matmul (the same mathematics in another rounding; the sampler call is unchanged). "
             f"bf16 uses CPU autocast's cast policy (CUDA's casts more). Casts: aten._to_copy among the ops; in brackets, the casts of "
             f"one sampling-network call with its weights cast at every call (as before bf16 weights were made "
             f"once).")
    L += ["", "| variant | precision | plain step | R1 step | sampler call | casts (plain / R1 / sampler) | "
              "all ops incl. views (plain) | optimiser ops on CPU (excluded) |",
          "|---|---|---:|---:|---:|---:|---:|---:|"]
    for v, precs in sec["counts"].items():
        for p, f in precs.items():
            L.append(f"| {v} | {p} | {_n(f['plain_step'])} | {_n(f['r1_step'])} | {_n(f['sampler_call'])} | "
                     f"{_n(f['plain_step'], 'casts')} / {_n(f['r1_step'], 'casts')} / "
                     f"{_n(f['sampler_call'], 'casts')} ({_n(f['sampler_call'], 'casts_per_call_uncached')}) | "
                     f"{_n(f['plain_step'], 'all_ops')} | "
                     f"{_n(f['plain_step'], 'optimizer_ops')} |")
    checks = [(v, arm, target, sec["table"][v][arm]["plain_step"]) for (v, arm), target in PLAIN_STEP_TARGETS.items()
              if arm in sec["table"].get(v, {})]
    if checks and sec["scale"] == "paper":  # the targets are the papers' CIFAR-10 configurations
        L += ["", "Plain-step targets: " + "; ".join(
            f"{v} {arm} {n:,} <= {target:,}: {'met' if n <= target else 'NOT met'}" for v, arm, target, n in checks)
            + "."]
    return L


def metrics(sec: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for v, precs in sec["table"].items():
        for p, fields in precs.items():
            for f, n in fields.items():
                if n is not None:
                    m[f"ops_{v}_{p}_{f}"] = float(n)
    return m
