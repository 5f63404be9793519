"""The training loop every family shares (budgets, data order, logging, checkpoints, resume, NaN rule, progress),
and what the families' training steps build on (precision, memory format, compilation, EMA, schedules). Each
family's own step is in its module: ``bench.families.gan.train_gan`` (DDGAN / WaveDiff: non-saturating adversarial
loss, lazy R1, reconstruction term, EMA of G), ``bench.families.diffusion.train_diffusion`` (DDPM-family
denoisers: MSE + image-space smooth-L1, AdamW, grad clip, warm-up + cosine, optional EMA).

Checkpoints hold the state of every module, optimiser and scheduler, the RNGs and the step, plus the resolved
config and a format version; they are written atomically (temp file + rename) and a corrupt latest checkpoint
falls back to the previous one. Resuming from a checkpoint gives the same next step as not stopping.

No step waits for the device: the updates return their losses as device tensors, summed on the device and read
(one host synchronisation) every ``train.log_every`` steps, before every checkpoint and at the end; the NaN rule
and, with several ranks, the wall-clock budget and stop requests are checked at those reads. Options for GPUs
(all part of the training hash): ``precision: bf16`` (autocast for the forward passes, fp32 master weights,
losses and R1 in fp32; :class:`TrainAutocast` casts each network's weights once per optimiser step, as one
flat cast, instead of autocast's cast of every weight in every call), ``channels_last`` and ``compile``;
in-memory data sets live on the device; Adam is fused on CUDA; the EMA is one foreach call over parameter
lists made once.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from bench.data import InMemoryImages, to_signed_unit
from bench.distributed import SINGLE, DistContext
from bench.schema import PRECISIONS
from bench.tracking import TrackingError

__all__ = ["TrainResult", "NonFiniteLoss", "Checkpointer", "BatchStream", "run_loop", "CHECKPOINT_VERSION",
           "EMA", "PRECISIONS", "autocast", "TrainAutocast", "LowPrecisionWeights", "check_train_config",
           "prepare_modules", "batch_format", "compiled", "lr_lambda", "total_steps"]


CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    step: int                         # optimisation steps done in total
    epoch: float                      # epochs done in total
    wall_clock_s: float               # training time, summed over resumptions
    images_per_s: float               # throughput of this session's steps
    resumed_from: int | None = None   # step of the checkpoint this session started from
    interrupted: bool = False         # stopped by a request (preemption), not by the budget
    history: dict = field(default_factory=dict)


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf: the run is stopped and marked FAILED with this message."""


def check_train_config(t) -> list[str]:
    """Problems with the device options of a training config (either family)."""
    if t.precision not in PRECISIONS:
        return [f"train.precision={t.precision!r}; valid: {', '.join(PRECISIONS)}"]
    return []


def autocast(device: torch.device, precision: str, enabled: bool = True, cache: bool = True):
    """The autocast context of ``precision`` (one of :data:`bench.schema.PRECISIONS`; a no-op for fp32 or
    ``enabled=False``), for training's forward passes and evaluation's sampler alike. ``cache=False`` keeps no
    weight casts (a CUDA graph would capture them, then they would be freed)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp32" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


class _AttachWeights(torch.autograd.Function):
    """Hands one call the low-precision copies of the weights (views of one flat tensor, made without autograd)
    and routes their gradients back to the fp32 weights: one cast of all of them (one flat bf16 buffer filled
    by one foreach copy, then one cast), where autocast would cast each weight's gradient on its own."""

    @staticmethod
    def forward(ctx, owner: "LowPrecisionWeights", flat: torch.Tensor, *params: torch.Tensor):
        ctx.owner = owner
        return tuple(flat[o:o + p.numel()].view(p.shape) for p, o in zip(params, owner.offsets))

    @staticmethod
    def backward(ctx, *grads):
        owner = ctx.owner
        present = [(g, o) for g, o in zip(grads, owner.offsets) if g is not None]
        buf = (owner.flat.new_empty if len(present) == len(grads) else owner.flat.new_zeros)(owner.param_numel)
        torch._foreach_copy_([buf[o:o + g.numel()].view(g.shape) for g, o in present], [g for g, _ in present])
        full = buf.to(owner.params[0].dtype)
        return (None, None, *(full[o:o + p.numel()].view(p.shape) for p, o in zip(owner.params, owner.offsets)))


class LowPrecisionWeights:
    """The bf16 copies of a network's convolution and linear weights that autocast would make in every call, made
    once: one flat bf16 buffer, filled by one foreach copy (the same round-to-nearest cast), again only when a weight
    has changed (its version counter), so once per optimiser step, and in place, so a CUDA graph that reads the
    copies reads the new values. Inside :meth:`attached` each call of the network sees them in place of its weights
    (a forward pre-hook swaps them in, the forward hook back). With autograd recording, the gradients reach the
    fp32 weights through :class:`_AttachWeights` as autocast's casts would give them: with ``per_call``, one node
    per call (as autocast regions of one call each: each call's gradient cast, the calls summed in fp32); without,
    one node for the whole region (as one autocast region whose cached casts every call shares: the calls'
    gradients summed in bf16, then cast once). The values are autocast's own: the same casts, the same bf16 ops.
    Training (:class:`TrainAutocast`) and evaluation's sampler (``bench.sampling.EvalSampler``) use it alike.

    Which weights: those of ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.Linear`` and of modules that list
    names in ``autocast_weights``: parameters, and buffers (constants such as the FIR filters, copied the same way,
    without gradients), that only ever enter autocast's bf16 ops; contiguous fp32 ones only (channels-last weights
    are left to autocast). A tensor replaced by a new one (not changed in place, e.g. by ``module.to``) is found
    again at the next :meth:`refresh`."""

    TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.module, self.dtype = module, dtype
        self.flat: torch.Tensor | None = None
        self._region_views: tuple[torch.Tensor, ...] | None = None  # the region's attached views (not per_call)
        self._collect()

    def _collect(self) -> None:
        # (module, its parameters or buffers dict, name): the parameters first, then the buffers
        slots: tuple[list, list] = ([], [])
        for m in self.module.modules():
            names = ("weight", "bias") if isinstance(m, self.TYPES) else getattr(m, "autocast_weights", ())
            for name in names:
                for kind, store in enumerate((m._parameters, m._buffers)):
                    t = store.get(name)
                    if t is not None and t.dtype == torch.float32 and t.is_contiguous():
                        slots[kind].append((m, store, name))
        self.slots = slots[0] + slots[1]
        self.tensors = [store[name] for _, store, name in self.slots]
        self.params = self.tensors[:len(slots[0])]
        sizes = [t.numel() for t in self.tensors]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.param_numel = sum(sizes[:len(self.params)])
        self.flat, self.views, self._buffer_views, self._versions = None, [], [], None

    def refresh(self) -> None:
        """Recast when a weight has changed since the last cast (or was never cast), in place."""
        if any(store.get(name) is not t for (_, store, name), t in zip(self.slots, self.tensors)):
            self._collect()  # a parameter or buffer was replaced
        if not self.tensors:
            return
        if self.flat is None or self.flat.device != self.tensors[0].device:
            self.flat = torch.empty(sum(t.numel() for t in self.tensors), dtype=self.dtype,
                                    device=self.tensors[0].device)
            self.views = [self.flat[o:o + t.numel()].view(t.shape) for t, o in zip(self.tensors, self.offsets)]
            n = len(self.params)
            self._buffer_views = list(zip(self.slots[n:], self.views[n:]))  # made once, not per call
            self._versions = None
        versions = [t._version for t in self.tensors]
        if versions != self._versions:
            with torch.no_grad():
                torch._foreach_copy_(self.views, self.tensors)
            self._versions = versions

    def _recording(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.params)

    def _swap_in(self, module, args) -> None:
        if not self._recording():
            views = self.views  # the parameters' and the buffers' copies
        else:
            views = (self._region_views if self._region_views is not None
                     else _AttachWeights.apply(self, self.flat, *self.params))  # the parameters', with gradients
            for (_, store, name), v in self._buffer_views:  # constants: no gradient to route
                store[name] = v
        for (_, store, name), v in zip(self.slots, views):
            store[name] = v

    def _swap_out(self, *_) -> None:
        for (_, store, name), t in zip(self.slots, self.tensors):
            store[name] = t

    @contextlib.contextmanager
    def attached(self, per_call: bool = True, refresh: bool = True):
        """The copies in place of the weights for every call of the module within; ``refresh=False``: as they are
        (the caller refreshed them, e.g. outside a CUDA graph that replays this)."""
        if refresh or self.flat is None:
            self.refresh()
        if not self.tensors:
            yield
            return
        if not per_call and self._recording():
            self._region_views = _AttachWeights.apply(self, self.flat, *self.params)
        hooks = (self.module.register_forward_pre_hook(self._swap_in), self.module.register_forward_hook(self._swap_out))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            self._swap_out()
            self._region_views = None


class TrainAutocast:
    """The training steps' precision context: ``amp(*networks, enabled=True)`` is one autocast region (as
    :func:`autocast`) in which each network's convolution and linear weights are cast to bf16 once per optimiser
    step (:class:`LowPrecisionWeights`), not in every call. ``cast_once=False`` leaves all casting to autocast
    (compiled networks: the compiled graph fuses its casts). ``per_call``: the gradients as autocast gives them
    with one region per network call (the GAN losses' reference) or, when False, with one region around all the
    calls (the diffusion loss's)."""

    def __init__(self, device: torch.device, precision: str, cast_once: bool = True, per_call: bool = True):
        self.device, self.precision, self.cast_once, self.per_call = device, precision, cast_once, per_call
        self._weights: dict[int, LowPrecisionWeights] = {}

    def weights(self, network: nn.Module) -> LowPrecisionWeights:
        module = getattr(network, "module", network)  # a DDP wrapper's module (its calls run the module's hooks)
        if id(module) not in self._weights:
            self._weights[id(module)] = LowPrecisionWeights(module, torch.bfloat16)
        return self._weights[id(module)]

    @contextlib.contextmanager
    def __call__(self, *networks: nn.Module, enabled: bool = True):
        with autocast(self.device, self.precision, enabled), contextlib.ExitStack() as stack:
            if enabled and self.precision != "fp32":
                for net in networks:
                    if self.cast_once:
                        stack.enter_context(self.weights(net).attached(self.per_call))
                    if self.per_call:  # what autocast still casts (all, or channels-last weights) cast per call
                        stack.callback(net.register_forward_pre_hook(_clear_autocast_cache).remove)
            yield


def _clear_autocast_cache(*_) -> None:
    torch.clear_autocast_cache()


def prepare_modules(modules: dict[str, nn.Module], t) -> None:
    """Memory format of the networks (channels-last when asked)."""
    if t.channels_last:
        for m in modules.values():
            m.to(memory_format=torch.channels_last)


def batch_format(x: torch.Tensor, t) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if t.channels_last and x.dim() == 4 else x


def compiled(module: nn.Module, t) -> nn.Module:
    """The module the training forward passes call: compiled when asked (it shares the module's parameters)."""
    return torch.compile(module) if t.compile else module


# ============================================================================================== checkpoints

class Checkpointer:
    """``<workdir>/ckpt-<step>.pt``, atomic writes, keeps the newest ``keep``; falls back past corrupt files."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        self.dir = Path(workdir)
        self.keep = keep

    def paths(self) -> list[Path]:
        return sorted(self.dir.glob("ckpt-*.pt"))

    def save(self, state: dict, step: int) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"ckpt-{step:09d}.pt"
        tmp = self.dir / f".{path.name}.{os.getpid()}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, path)
        for old in self.paths()[:-self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, map_location="cpu") -> dict | None:
        for path in reversed(self.paths()):
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as e:  # truncated or corrupt: warn and fall back to the previous one
                warnings.warn(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                              "falling back to the previous one")
        return None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(obj):
    """numpy RNG state -> lists/ints so the checkpoint loads with weights_only=True."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, tuple):
        return tuple(_to_plain(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(o) for o in obj]
    return obj


def _from_plain_numpy(state: tuple) -> tuple:
    return tuple(s.numpy() if isinstance(s, torch.Tensor) else s for s in state)


# ============================================================================================== data order

class BatchStream:
    """Deterministic batches: epoch e uses a permutation seeded by (seed, e); step k is batch k mod
    steps_per_epoch of its epoch, so a resumed run sees exactly the batches it would have seen.

    With several ranks, ``batch_size`` is the global batch and rank r gets its r-th contiguous slice: the data
    order, the flips and the images per step do not depend on the number of ranks.

    In-memory data sets can live on the training device (:meth:`to`): batches are then gathered there from an
    epoch's permutation and flips, moved once per epoch, so a step copies nothing from the host and never
    waits for the device. The batches are the same as on the CPU."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(dataset) < batch_size:
            raise ValueError(f"train.batch_size={batch_size} exceeds the training split ({len(dataset)} images)")
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} is not divisible by processes={world_size}")
        self.ds, self.bs, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = len(dataset) // batch_size
        self.images = dataset.images if isinstance(dataset, InMemoryImages) else None
        self._epoch: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def to(self, device: torch.device) -> "BatchStream":
        """Hold an in-memory data set on ``device`` (uint8, as stored); other data sets stay where they are."""
        if self.images is not None:
            self.images = self.images.to(device)
            self._epoch = None
        return self

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.ds), generator=g)

    def _flips(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 7_919 + step)
        return torch.rand(self.bs, generator=g) < 0.5

    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This epoch's permutation and per-step flips, on the images' device (computed and moved once)."""
        if self._epoch is None or self._epoch[0] != epoch:
            perm = self._perm(epoch)
            flips = None
            if self.ds.hflip:
                first = epoch * self.steps_per_epoch
                flips = torch.stack([self._flips(first + k) for k in range(self.steps_per_epoch)])
            dev = self.images.device
            self._epoch = (epoch, perm.to(dev), None if flips is None else flips.to(dev))
        return self._epoch[1], self._epoch[2]

    def batch(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        per_rank = self.bs // self.world_size
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        if self.images is not None:
            perm, flips = self._epoch_plan(epoch)
            idx = perm[k * self.bs:(k + 1) * self.bs][mine]
            x = to_signed_unit(self.images[idx])
            if flips is not None:  # a select, not a masked assignment: no host synchronisation
                x = torch.where(flips[k][mine].view(-1, 1, 1, 1), x.flip(-1), x)
            return x
        idx = self._perm(epoch)[k * self.bs:(k + 1) * self.bs]
        loader = DataLoader(torch.utils.data.Subset(self.ds, idx[mine].tolist()), batch_size=per_rank,
                            num_workers=self.num_workers)
        return next(iter(loader))[0]


# ============================================================================================== shared loop

class EMA:
    """ema <- decay * ema + (1 - decay) * model for every parameter, one foreach call over lists made once (the
    training loops hold one for their whole run: the modules keep their tensors, state dicts load in place);
    buffers copied."""

    def __init__(self, ema: nn.Module, model: nn.Module, decay: float):
        self.decay = decay
        self.ema_params, self.params = list(ema.parameters()), list(model.parameters())
        self.ema_buffers, self.buffers = list(ema.buffers()), list(model.buffers())

    def update(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, self.params, 1.0 - self.decay)
            if self.ema_buffers:
                torch._foreach_copy_(self.ema_buffers, self.buffers)


def total_steps(t, steps_per_epoch: int) -> int | None:
    """The step horizon of the LR schedule, when the budget fixes one."""
    horizons = []
    if t.max_steps is not None:
        horizons.append(t.max_steps)
    if t.max_epochs is not None:
        horizons.append(int(math.ceil(t.max_epochs * steps_per_epoch)))
    return min(horizons) if horizons else None


class _Window:
    """The losses of the steps since the last read: summed where they live (device tensors stay on the device;
    floats are checked for NaN at once, being free to look at)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}
        self.first_step: int | None = None
        self.steps = 0

    def add(self, losses: dict, step: int) -> None:
        if self.first_step is None:
            self.first_step = step
        self.steps += 1
        for k, v in losses.items():
            if torch.is_tensor(v):
                v = v.detach().float()
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
            else:
                v = float(v)
                if not math.isfinite(v):
                    raise NonFiniteLoss(f"non-finite loss at step {step}: {k}={v}")
                self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def read(self, dist: DistContext, device: torch.device, flags: tuple[bool, ...] = ()
             ) -> tuple[dict[str, float], tuple[bool, ...]]:
        """The mean of each loss over the window (and over ranks), the flags OR-ed over ranks: one host
        synchronisation and, with several ranks, one collective. Raises :class:`NonFiniteLoss` (on every rank
        alike, since a NaN anywhere makes the mean NaN everywhere). Empties the window."""
        keys = sorted(self.sums)
        vec = [self.sums[k].double() if torch.is_tensor(self.sums[k]) else
               torch.tensor(self.sums[k], dtype=torch.float64) for k in keys]
        vec = [v.to(device) for v in vec] + [torch.tensor(float(f), dtype=torch.float64, device=device)
                                             for f in flags]
        values = torch.stack(vec) if vec else torch.zeros(0, dtype=torch.float64)
        if dist.enabled:
            values = dist.all_reduce(values)
        values = values.tolist()
        means = {k: values[i] / self.counts[k] / dist.world_size for i, k in enumerate(keys)}
        bad = {k: v for k, v in means.items() if not math.isfinite(v)}
        if bad:
            last = self.first_step + self.steps - 1
            where = f"step {last}" if self.steps <= 1 else f"steps {self.first_step}-{last} (read every log_every)"
            raise NonFiniteLoss(f"non-finite loss at {where}: " + ", ".join(f"{k}={v}" for k, v in bad.items()))
        agreed = tuple(v > 0 for v in values[len(keys):])
        self.__init__()
        return means, agreed


def run_loop(cfg, *, modules: dict[str, nn.Module], optimizers: dict, schedulers: dict,
             update: Callable[[torch.Tensor, int], dict], stream: BatchStream, tracker, workdir: str | Path,
             device: torch.device, should_stop: Callable[[], bool] | None = None,
             progress: bool = True, on_step: Callable[[int, float], None] | None = None,
             dist: DistContext = SINGLE) -> TrainResult:
    """The loop every family shares. ``update(batch, step)`` does one optimisation step and returns its losses
    (device tensors, or floats); everything else (budgets, resume, checkpoints, logging, NaN rule) happens here.

    The device is never waited for at an ordinary step: losses are read every ``train.log_every`` steps (and at
    step 1), before every checkpoint and at the end, and what is logged at a read is each loss's mean over the
    steps since the previous read. The NaN rule applies at the reads; a checkpoint is never written from
    non-finite losses. Training time is host time between steps, exact at every read (which waits for the
    device). ``on_step(step, training_seconds)`` runs after every step (e.g. periodic evaluation; its time is not
    training time); if it has an attribute ``every``, the losses are read before it at multiples of ``every``,
    so the training time it receives then is exact. With several ranks (``dist``) every rank runs this loop:
    step budgets are the same everywhere, and the ranks agree on the wall-clock budget and on stop requests at
    each read; rank 0 writes the checkpoints (with every rank's RNG state)."""
    t = cfg.train
    ckpt = Checkpointer(workdir)
    stream.to(device)

    # Resume from the latest readable checkpoint of this training hash.
    step, elapsed, resumed_from = 0, 0.0, None
    state = ckpt.load_latest()
    if state is not None:
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
        for name, o in optimizers.items():
            o.load_state_dict(state["optimizers"][name])
        for name, s in schedulers.items():
            s.load_state_dict(state["schedulers"][name])
        per_rank = state.get("rng_ranks") or [state["rng"]]
        if len(per_rank) != dist.world_size:
            raise RuntimeError(f"checkpoint written by {len(per_rank)} process(es), resumed with {dist.world_size}")
        rng = per_rank[dist.rank]
        rng["numpy"] = _from_plain_numpy(rng["numpy"])
        _set_rng_state(rng)
        step, elapsed, resumed_from = state["step"], state["elapsed_s"], state["step"]
        tracker.set_tags({"resumed_from_step": step})

    def save() -> None:
        rngs = dist.gather(_to_plain(_rng_state()))
        if dist.is_main:
            ckpt.save({
                "version": CHECKPOINT_VERSION,
                "config": _config_dict(cfg),
                "step": step,
                "elapsed_s": elapsed,
                "modules": {n: m.state_dict() for n, m in modules.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in schedulers.items()},
                "rng": rngs[0],
                **({"rng_ranks": rngs} if dist.enabled else {}),
            }, step)
        dist.barrier()  # no rank goes on (or is killed) before the checkpoint is complete

    step_limit = total_steps(t, stream.steps_per_epoch)   # max_steps / max_epochs: the same on every rank

    def out_of_time() -> bool:
        return t.max_minutes is not None and elapsed >= t.max_minutes * 60

    def stop_requested() -> bool:
        return should_stop is not None and bool(should_stop())

    bar = tqdm(total=step_limit, initial=step, disable=not (progress and dist.is_main), desc=cfg.variant,
               mininterval=2.0, file=sys.stderr, unit="step")
    session_steps, session_time, interrupted = 0, 0.0, False
    history: dict[str, list] = {}
    last_ckpt = step
    every = int(getattr(on_step, "every", 0) or 0)
    window = _Window()
    read_step, read_elapsed = step, elapsed
    agreed = (False, False)
    if dist.enabled:  # several ranks agree at the start, then at every read
        agreed = dist.sync_step({}, (out_of_time(), stop_requested()), device)[1]
    while True:
        if step_limit is not None and step >= step_limit:
            break
        if not dist.enabled:  # one process: host-side checks, free at every step
            agreed = (out_of_time(), stop_requested())
        if agreed[0]:
            break
        if agreed[1]:
            interrupted = True
            break
        t0 = time.perf_counter()
        x = stream.batch(step)
        if x.device != device:
            x = x.to(device, non_blocking=True)
        window.add(update(x, step), step)
        step += 1
        for sched in schedulers.values():
            sched.step()
        log_now = step % t.log_every == 0 or step == 1
        ckpt_now = step - last_ckpt >= t.checkpoint_every
        read_now = log_now or ckpt_now or bool(every and step % every == 0)
        if read_now:  # waits for the device; with several ranks, also where they agree on time and stop
            flags = (elapsed + time.perf_counter() - t0 >= t.max_minutes * 60 if t.max_minutes is not None else False,
                     stop_requested()) if dist.enabled else ()
            losses, flags = window.read(dist, device, flags)
            if dist.enabled:
                agreed = flags
        dt = time.perf_counter() - t0
        elapsed += dt
        session_steps += 1
        session_time += dt
        try:
            if log_now:
                lr = {f"lr_{n}": o.param_groups[0]["lr"] for n, o in optimizers.items()}
                per_step = (elapsed - read_elapsed) / max(1, step - read_step)
                tracker.log_metrics({**losses, **lr, "train_s_per_step": per_step,
                                     "epoch": step / stream.steps_per_epoch}, step=step)
                for k, v in losses.items():
                    history.setdefault(k, []).append((step, v))
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
            if read_now:
                read_step, read_elapsed = step, elapsed
            bar.update(1)
            if ckpt_now:  # the store has every value up to a checkpoint (or the job stops here, keeping both)
                tracker.flush()
                save()
                last_ckpt = step
            if on_step is not None:
                on_step(step, elapsed)
        except TrackingError:
            # The store failed, training did not: keep this step when its losses were read (the NaN rule) and
            # one process trains (with several ranks, the last checkpoint is what is kept).
            if not dist.enabled and read_now and last_ckpt != step:
                save()
            raise
    bar.close()
    if window.sums:  # the steps since the last read: no checkpoint from non-finite losses
        window.read(dist, device)
    save()
    tracker.flush()
    # images of all ranks (the global batch) per second of this session's training
    ips = session_steps * t.batch_size / session_time if session_time > 0 else float("nan")
    return TrainResult(step=step, epoch=step / stream.steps_per_epoch, wall_clock_s=elapsed, images_per_s=ips,
                       resumed_from=resumed_from, interrupted=interrupted, history=history)


def _config_dict(cfg) -> dict:
    from bench.config import to_dict

    return to_dict(cfg)


def lr_lambda(horizon: int | None, warmup: int, floor_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor_ratio`` over the horizon."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if horizon is None or horizon <= warmup:
            return 1.0
        p = min(1.0, (step - warmup) / (horizon - warmup))
        return floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f
