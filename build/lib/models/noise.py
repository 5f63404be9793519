"""Noise for the samplers and processes: drawn on the generator's device, then moved to the data's.

A CPU ``torch.Generator`` therefore gives the same numbers whatever device the sampler runs on (how the CPU and
CUDA samplers are compared for fixed weights and noise); a generator on the data's device draws there directly.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["randn", "randn_like"]


def randn(shape: Sequence[int], like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` with ``like``'s dtype, on ``like``'s device."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=like.dtype).to(like.device)


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped and typed like ``x``, on ``x``'s device."""
    return randn(x.shape, x, generator)
