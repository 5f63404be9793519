"""What every family shares: the :class:`Family` interface, the :class:`System` base and the diffusion space.

A family (``bench/families/<name>.py``) is one module that holds everything its variants need beyond models/:
its config dataclasses, its system (networks + process behind :class:`System`'s interface), its training step on
top of the shared :func:`bench.train.run_loop`, its checks, its paper configurations (``configure`` factories the
registry's variant table calls) and its hooks for the demo, perf and the tests. ``bench.families.FAMILIES`` maps
each family's name to its object; nothing outside a family's module dispatches on its name or probes its configs.

Every system exposes what training and evaluation need and nothing else:

- ``encode(x)`` / ``decode(y)``: image [-1, 1] <-> diffusion space (pixels, or Haar coefficients / 2^levels);
- ``state_shape(n)``: shape of the initial noise x_T for ``n`` samples;
- ``sample(x_T, rng, net=None)``: the whole sampler, final inverse transform included, returning images in
  [-1, 1]; ``net`` stands in for the sampling network (e.g. its CUDA-graph replay, bench/sampling.py);
- ``sampling_network``: the module called once per network function evaluation (for NFE and FLOPs), and
  ``network_inputs(n)``: example arguments of one such call;
- ``networks``: named modules whose parameters are counted; ``modules()``: everything checkpointed;
- ``parts()``: what does the work, by role, read from the built objects (``python -m bench.registry show``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.config import RunConfig
from models.wavelet import wavelet_decode, wavelet_encode

__all__ = ["Family", "System", "space_shape", "unknown_preset"]


def space_shape(channels: int, resolution: int, wavelet_levels: int) -> tuple[int, int]:
    """(channels, side) of the diffusion space for images (channels, resolution, resolution)."""
    return channels * 4**wavelet_levels, resolution // 2**wavelet_levels


def unknown_preset(key: str, table: dict) -> list[str]:
    """The problem of a variant without a paper configuration for a data set preset."""
    return [f"no paper configuration of this variant for data set preset {key!r}; available: {', '.join(table)}"]


class System:
    """What every system shares: its diffusion space, moving its stateful modules, and sampling through the
    samplers' one signature: ``sample_fn(process, model, x_T, *, generator, callback, **sample_options)``
    (models/ddpm.py SAMPLERS, DDGANProcess.sample, DVDPProcess.sample)."""

    wavelet_levels: int
    sample_fn: Callable[..., torch.Tensor]
    sample_options: dict
    process: Any
    init_tags: dict | None = None   # what the run records about init.weights (bench.job.load_init_weights)

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def parts(self) -> dict[str, object]:
        """What does the work, by role (classes and functions), taken from this system's own objects."""
        raise NotImplementedError

    def network_inputs(self, n: int, device: torch.device | str | None = None) -> tuple:
        """Example arguments of one call of the sampling network on ``n`` states (x_t, t): FLOPs per call."""
        return (torch.zeros(self.state_shape(n), device=device), torch.zeros(n, dtype=torch.long, device=device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return wavelet_encode(x, self.wavelet_levels) if self.wavelet_levels else x

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return wavelet_decode(y, self.wavelet_levels) if self.wavelet_levels else y

    def to(self, device: torch.device):
        for m in self.modules().values():
            m.to(device)
        return self

    @torch.no_grad()
    def sample(self, x_T: torch.Tensor, rng: torch.Generator | None = None, net=None) -> torch.Tensor:
        """The whole sampler from x_T, final inverse transform included: images in [-1, 1]. ``net`` stands in
        for the sampling network (e.g. its CUDA-graph replay, bench/sampling.py)."""
        net = net if net is not None else self.sampling_network
        y = self.sample_fn(self.process, net, x_T, generator=rng, **self.sample_options)
        return self.decode(y).clamp(-1, 1)


class Family(ABC):
    name: str                          # MLflow tag `family`
    derived_keys: frozenset[str]       # config keys derived from the data set: they cannot be set
    trainer: Callable                  # the training loop: trainer(cfg, system, stream, tracker, workdir, device, ...)

    @abstractmethod
    def derive(self, cfg: RunConfig, channels: int) -> RunConfig:
        """The config with its data-set-dependent keys (channels, sizes) filled in."""

    def check(self, cfg: RunConfig) -> list[str]:
        """Problems with the family's own keys (the shared rules are the registry's)."""
        return []

    @abstractmethod
    def build(self, cfg: RunConfig) -> System:
        """The system (networks + process) of a resolved config."""

    def parts(self, system: System) -> dict[str, object]:
        """What builds and trains a variant, by role: read from a built system, plus the training loop."""
        return {"system": type(system), **system.parts(), "trainer": self.trainer}

    def step_cycle(self, cfg: RunConfig) -> int:
        """Training steps after which the step schedule repeats (a GAN's lazy R1: every ``lazy_reg`` steps); the
        first step of a cycle is the costly one. Counting FLOPs per step averages over one cycle."""
        return 1

    def without_step_extras(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` whose first two training steps are both plain steps (no R1): what a per-step timing or FLOP
        count of the plain step runs."""
        return cfg

    def public_sources(self) -> tuple:
        """The papers' public checkpoints this family converts (:class:`bench.weights.PublicSource`, each with its
        converter), kept beside the family's module; ``python -m bench.weights list`` collects them."""
        return ()

    def with_short_cycle(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` whose step schedule, when it has a cycle, repeats every two steps (steps 0, 2, 4, ... costly):
        what counting one step of each kind in steady state runs (bench/perf/ops.py)."""
        return cfg

    @abstractmethod
    def micro(self, cfg: RunConfig) -> dict:
        """Overrides that make a variant's default config the smallest that still runs every code path (the
        tests' micro configs): widths, and for samplers with free step counts, a few steps."""

    def __repr__(self) -> str:
        return f"<family {self.name}>"
