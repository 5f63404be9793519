"""A whole training step as CUDA graphs (``train.cuda_graphs``): the host launches one graph per step instead of
thousands of kernels, which is what bounds a small model's step time on a GPU.

:class:`StepGraphs` wraps a step function ``fn(x, kind) -> dict of tensors`` (``kind``: which step it is, e.g. the
GAN's plain step or its R1 step; each kind has its own graph, all in one memory pool). The batch is copied into one
static input buffer; the first ``warmup`` steps of each kind run eagerly (on a side stream, as PyTorch's
whole-network capture recipe asks: it lets autograd and the optimisers allocate their state), the next one is
captured and replayed, and every later step of that kind is a replay. Replays overwrite the outputs: read (or
accumulate) them before the next step. A resumed run builds a new :class:`StepGraphs`, so it captures again.

What the step may do inside a graph: the optimisers must read their learning rate from a tensor (``lr`` a 0-d
tensor on the device, ``capturable=True``: :func:`graph_optimizer_options`), random numbers must come from the
device's default generator (graph-safe: each replay draws fresh numbers), and nothing may synchronise with the
host. Off a CUDA device (``emulate``) the same buffers and calls run eagerly, step by step, with no capture: the
logic is tested on CPU, and N steps with and without it give bit-identical weights there.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable

import torch

__all__ = ["StepGraphs", "graph_optimizer_options"]


def graph_optimizer_options(lr: float, device: torch.device, graphs: bool) -> dict:
    """Adam's options for a step that CUDA graphs capture: the learning rate as a device tensor (a scheduler
    updates it in place: a replay reads the current value) and ``capturable`` state; the plain float elsewhere (on
    CPU a tensor learning rate would only round differently)."""
    if graphs and device.type == "cuda":
        return {"lr": torch.tensor(lr, device=device), "capturable": True}
    return {"lr": lr}


class StepGraphs:
    """``fn(x, kind)`` as one CUDA graph per ``kind`` (see the module doc). ``emulate`` (default: not on CUDA) runs
    the same buffers and calls without capture. ``protocol()`` says what ran."""

    def __init__(self, fn: Callable[[torch.Tensor, Hashable], dict], device: torch.device, warmup: int = 3,
                 emulate: bool | None = None):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (eager steps before a capture), got {warmup}")
        self.fn, self.device, self.warmup = fn, device, warmup
        self.emulate = device.type != "cuda" if emulate is None else emulate
        self.static_x: torch.Tensor | None = None
        self.graphs: dict[Hashable, tuple[object, dict]] = {}
        self.eager_steps: Counter = Counter()
        self.replays: Counter = Counter()
        self._pool = None

    def __call__(self, x: torch.Tensor, kind: Hashable) -> dict:
        if self.static_x is None:
            self.static_x = torch.empty_like(x)
        if x.shape != self.static_x.shape or x.dtype != self.static_x.dtype:
            raise ValueError(f"a CUDA-graphed step takes batches of one shape: {tuple(self.static_x.shape)} "
                             f"{self.static_x.dtype}, got {tuple(x.shape)} {x.dtype}")
        self.static_x.copy_(x)
        if self.emulate:
            self.replays[kind] += 1
            return self.fn(self.static_x, kind)
        if kind in self.graphs:
            graph, out = self.graphs[kind]
            graph.replay()
            self.replays[kind] += 1
            return out
        if self.eager_steps[kind] < self.warmup:
            self.eager_steps[kind] += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self.fn(self.static_x, kind)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.fn(self.static_x, kind)
        self._pool = graph.pool()
        self.graphs[kind] = (graph, out)
        graph.replay()  # capturing records the step without running it: this replay is the step
        self.replays[kind] += 1
        return out

    def protocol(self) -> str:
        """What ran, for the run's record: emulated, or the kinds captured and how many steps each replayed."""
        kinds = sorted(set(self.replays) | set(self.eager_steps), key=str)
        per = ", ".join(f"{k}: {self.eager_steps[k]} eager + {self.replays[k]} replayed" for k in kinds)
        if self.emulate:
            return f"emulated on {self.device.type} (static buffers, no capture; {per or 'no step'})"
        return f"CUDA graphs, one per step kind ({per or 'no step'})"
