"""How a trained system is sampled for evaluation: numerics (``eval.precision``) and CUDA graphs
(``eval.cuda_graphs``).

On a GPU a batch of 100 at 16x16 is small work per kernel: the sampler waits on kernel launches, not on
arithmetic. :class:`GraphedNetwork` replays the sampling network through CUDA graphs: one graph per argument
shape, captured on first use after two warm-up calls; each call copies its arguments into the graph's static
inputs, replays every kernel of the network with one launch, and returns a copy of the static output. The
kernels are the ones eager mode runs, so the samples are the same (tests/test_cuda.py states the tolerance). The
sampler around the network (noise, posterior or DDIM update, the final inverse transform) stays eager and draws
its noise exactly as without graphs. The network's parameters are read in place at every replay, so in-place
training updates between evaluations are seen; parameters replaced by new tensors cause a new capture.

``precision: fp32`` (the default, as the papers time) leaves PyTorch's defaults: TF32 convolutions, fp32
matmuls, both recorded in the protocol; ``bf16`` runs the sampler under bf16 autocast, with the network's
convolution and linear weights cast to bf16 once per change (:class:`bench.train.LowPrecisionWeights`, the
training steps' own, refreshed in place once per sampler run) rather than at every call: a CUDA graph cannot keep
autocast's weight-cast cache (the cast copies would be freed when autocast exits), and autocast caches no casts
of weights that need no gradient (an EMA), so otherwise every replay re-casts every weight. The samples are
bit-identical to plain autocast's.

Without CUDA, :class:`GraphedNetwork` can emulate the static-buffer protocol (``emulate=True``: copy in, run the
network on the static inputs, copy out), which is how the CPU tests check its plumbing.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from bench.schema import PRECISIONS
from bench.train import LowPrecisionWeights, autocast

__all__ = ["GraphedNetwork", "EvalSampler", "numerics_protocol"]

WARMUP_CALLS = 2


@dataclass
class _Graph:
    inputs: list[torch.Tensor]
    output: torch.Tensor
    replay: Callable[[], None]
    graph: object = None   # the torch.cuda.CUDAGraph (kept alive with its private memory pool)


class GraphedNetwork:
    """``net(*args)`` through CUDA graphs (see the module docstring). ``emulate`` runs the same static-buffer
    protocol eagerly (any device). After a failed capture it calls ``net`` directly and says why in ``status``."""

    def __init__(self, net: nn.Module, emulate: bool = False):
        self.net, self.emulate = net, emulate
        self.graphs: dict[tuple, _Graph] = {}
        self.captures = 0
        self.status = "emulated" if emulate else "cuda graphs"
        self._failed = False

    def _key(self, args: tuple[torch.Tensor, ...]) -> tuple:
        params = tuple(p.data_ptr() for p in self.net.parameters())
        return tuple((tuple(a.shape), a.dtype, a.device) for a in args) + (params, torch.is_autocast_enabled())

    def _capture(self, args: tuple[torch.Tensor, ...]) -> _Graph:
        inputs = [a.clone() for a in args]
        if self.emulate:
            output = self.net(*inputs).clone()
            return _Graph(inputs, output, lambda: output.copy_(self.net(*inputs)))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.net(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self.net(*inputs)
        self.captures += 1
        return _Graph(inputs, output, graph.replay, graph)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self._failed:
            return self.net(*args)
        key = self._key(args)
        entry = self.graphs.get(key)
        if entry is None:
            try:
                entry = self.graphs[key] = self._capture(args)
            except Exception as e:  # an op that cannot be captured: eager from now on, and say so
                self._failed = True
                self.status = f"eager (capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})"
                warnings.warn(f"CUDA graph capture of {type(self.net).__name__} failed; sampling eagerly: {e}")
                return self.net(*args)
        for static, a in zip(entry.inputs, args):
            static.copy_(a)
        entry.replay()
        return entry.output.clone()


class _CastNetwork(nn.Module):
    """``net`` called with the bf16 copies of its weights that ``weights`` holds (not refreshed here: the sampler
    refreshes them once per run, outside any CUDA graph, in place, so a graph replay reads the new values)."""

    def __init__(self, net: nn.Module, weights: LowPrecisionWeights):
        super().__init__()
        self.net, self.weights = net, weights

    def forward(self, *args):
        with self.weights.attached(refresh=False):
            return self.net(*args)


class EvalSampler:
    """``sampler(x_T, rng=None) -> images`` of a system with the evaluation's numerics (``precision``) and, on
    CUDA, its network replayed through CUDA graphs; :meth:`protocol` says how it sampled (read it after use: a
    failed capture shows there)."""

    def __init__(self, system, device: torch.device, precision: str = "fp32", cuda_graphs: bool = True,
                 emulate_graphs: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"eval.precision={precision!r}; valid: {', '.join(PRECISIONS)}")
        self.system, self.device, self.precision = system, device, precision
        net = system.sampling_network
        # bf16: the weights cast once (and after each change), not at every call or replay
        self.cast = LowPrecisionWeights(net, torch.bfloat16) if precision == "bf16" else None
        use = cuda_graphs and (device.type == "cuda" or emulate_graphs)
        self.inner = net if self.cast is None else _CastNetwork(net, self.cast)
        self.net = GraphedNetwork(self.inner, emulate=device.type != "cuda") if use else None
        self.cuda_graphs = cuda_graphs

    def numerics(self):
        """The context every sampling-network call runs in: no autograd; autocast for bf16 without its cache
        (a CUDA graph would capture casts that are freed on exit; :class:`bench.train.LowPrecisionWeights` casts the
        weights)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(autocast(self.device, self.precision, cache=False))
        return stack

    def network(self) -> Callable[..., torch.Tensor]:
        """The sampling network as the sampler calls it (graphed, weights cast), its bf16 weights brought up to
        date: call once per sampler run."""
        if self.cast is not None:
            self.cast.refresh()
        return self.net if self.net is not None else self.inner

    def __call__(self, x_T: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        net = self.network()
        with self.numerics():
            return self.system.sample(x_T, rng=rng, net=net).float()

    def protocol(self) -> dict:
        if self.net is not None:
            graphs = self.net.status
        else:
            graphs = "off" if self.device.type == "cuda" or not self.cuda_graphs else f"off (not on {self.device.type})"
        return {**numerics_protocol(self.device, self.precision), "sampler_cuda_graphs": graphs}


def numerics_protocol(device: torch.device, precision: str) -> dict:
    """What the timed numbers' arithmetic was: the precision and PyTorch's TF32 switches."""
    out = {"sampler_precision": precision}
    if device.type == "cuda":
        out.update(tf32_conv=bool(torch.backends.cudnn.allow_tf32),
                   tf32_matmul=bool(torch.backends.cuda.matmul.allow_tf32))
    return out
