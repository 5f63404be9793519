"""The diffusion family's public checkpoints (WDDM's UNet and U-KAN denoisers) and their converters.

Facts from ../shared/public-weights/README.md (the study of the public files):

- UNet: diffusers ``save_pretrained`` (config.json + safetensors), no EMA; tensor names and shapes equal the suite's
  UNet's (models/unet.py keeps diffusers' UNet2DModel names).
- U-KAN: the public class names its layers differently (``downblocks`` / ``upblocks`` with ``main`` resamplers,
  ``patch_embed3/4``, ``kan_block1/2``, ``kan_dblock1``, ``norm3/4``, ``dnorm3``, ``decoder1/2``); it holds a frozen
  sinusoid table ``time_embedding.timembedding.0.weight`` that the suite computes on the fly (dropped), and feeds
  the first time-MLP layer the sinusoids interleaved (sin w0, cos w0, sin w1, ...) where the suite concatenates
  (all sines, then all cosines). The public class silently drops attention: these files convert into a U-KAN
  built without attention.
- WDDM's wavelet transform is the other DWT (LH and HL swapped against the suite's pytorch_wavelets order) at
  every level, so the bands of the input conv's inputs and of the output conv's outputs are permuted, at level 2
  at both levels (the transform of all 12 level-1 channels again: outer band-major blocks of 12 channels).
- The prediction type (noise or sample) is a training flag, not stored in the file: ``--prediction`` says it,
  and the converted config records it as ``model.process.prediction`` (epsilon | sample).
"""
from __future__ import annotations

import functools

from bench.weights import Entry, Permute, Plan, PublicSource
from models.ukan import UKAN, ResBlock as UKANResBlock
from models.unet import UNet

__all__ = ["SOURCES", "plan_unet", "plan_ukan", "band_index"]

_BANDS_SWAPPED = (0, 2, 1, 3)


def band_index(channels: int, levels: int) -> tuple[int, ...]:
    """Suite channel -> WDDM channel of a ``levels``-level wavelet-packet split of ``channels`` image channels:
    each level stacks four band blocks (LL, LH, HL, HH) of the previous level's channels, and the other DWT swaps
    the LH and HL blocks at every level."""
    index: tuple[int, ...] = tuple(range(channels))
    for _ in range(levels):
        w = len(index)
        index = tuple(_BANDS_SWAPPED[b] * w + index[k] for b in range(4) for k in range(w))
    return index


def _perm(dim: int, index, why: str) -> tuple:
    index = tuple(index)
    return () if index == tuple(range(len(index))) else (Permute(dim, index, why),)


def _bands(src: PublicSource, channels: int, levels: int) -> tuple[int, ...]:
    """The band permutation of a denoiser's ``channels`` (4^levels x the image's channels)."""
    if src.image_dwt != "DWT_2D":
        return tuple(range(channels))
    return band_index(channels // 4**levels, levels)


def plan_unet(src: PublicSource, net: UNet, *, levels: int) -> Plan:
    """WDDM's diffusers UNet: the suite's names; the input and output convs' bands permuted."""
    cfg = net.cfg
    bands_in, bands_out = _bands(src, cfg.in_channels, levels), _bands(src, cfg.out_channels, levels)
    post = {"conv_in.weight": _perm(1, bands_in, "wavelet bands"),
            "conv_out.weight": _perm(0, bands_out, "wavelet bands"),
            "conv_out.bias": _perm(0, bands_out, "wavelet bands")}
    return Plan({k: Entry((k,), (), post.get(k, ())) for k in net.state_dict()})


# U-KAN: the suite's bottleneck modules -> the public ones; inside a KAN block, suite submodule -> public.
_UKAN_BOTTLENECK = {"embed1": "patch_embed3", "block1": "kan_block1.0", "norm1": "norm3", "embed2": "patch_embed4",
                    "block2": "kan_block2.0", "norm2": "norm4", "dec1": "decoder1", "dblock1": "kan_dblock1.0",
                    "dnorm1": "dnorm3", "dec2": "decoder2"}
_KAN_BLOCK = {"norm": "norm2", "kan": "kan.fc1", "temb_proj": "temb_proj"}
_SINUSOIDS = "time_embedding.timembedding.0.weight"


def _ukan_public_key(net: UKAN, key: str) -> str:
    head, rest = key.split(".", 1)
    if head == "time_mlp":  # the public Sequential: (frozen table, Linear, Swish, Linear)
        i, leaf = rest.split(".", 1)
        return f"time_embedding.timembedding.{int(i) + 1}.{leaf}"
    if head in ("down", "up"):
        i, leaf = rest.split(".", 1)
        layer = getattr(net, head)[int(i)]
        if not isinstance(layer, UKANResBlock):  # the resamplers: a conv (down), Upsample + conv (up)
            leaf = "main." + (leaf.split(".", 1)[1] if head == "up" else leaf)
        return f"{head}blocks.{i}.{leaf}"
    if head == "bottleneck":
        mod, leaf = rest.split(".", 1)
        if mod.startswith(("block", "dblock")):
            sub, leaf = leaf.split(".", 1)
            leaf = f"{_KAN_BLOCK[sub]}.{leaf}"
        return f"{_UKAN_BOTTLENECK[mod]}.{leaf}"
    return key  # head, tail


def plan_ukan(src: PublicSource, net: UKAN, *, levels: int) -> Plan:
    """WDDM's U-KAN (the public class, attention dropped): renames, the sinusoid table dropped, the first time-MLP
    layer's input columns from interleaved to concatenated, the head's and tail's bands permuted."""
    cfg = net.cfg
    if cfg.attn:
        raise ValueError("the public U-KAN files have no attention: build the suite's U-KAN with attn=()")
    half = cfg.ch // 2
    # Suite column s < half is sin(t w_s), public column 2 s; suite column half + s is cos(t w_s), public 2 s + 1.
    sincos = tuple(2 * s for s in range(half)) + tuple(2 * s + 1 for s in range(half))
    bands_in, bands_out = _bands(src, cfg.in_channels, levels), _bands(src, cfg.out_channels, levels)
    post = {"time_mlp.0.weight": _perm(1, sincos, "sinusoid columns"),
            "head.weight": _perm(1, bands_in, "wavelet bands"),
            "tail.2.weight": _perm(0, bands_out, "wavelet bands"),
            "tail.2.bias": _perm(0, bands_out, "wavelet bands")}
    return Plan({k: Entry((_ukan_public_key(net, k),), (), post.get(k, ())) for k in net.state_dict()},
                dropped=(_SINUSOIDS,))


_WHERE = "Hugging Face, one repository per model (WDDM README)"
_LICENCE = "CC BY-NC-SA 4.0 (non-commercial)"
_ROW_FROM_PUBLIC = ("the suite's paper configuration for this data set is WDDM's public model config; its "
                    "training settings are UNVERIFIED (not in PAPERS.md)")


def _source(name: str, dataset: str, note: str = "") -> PublicSource:
    kind, level = name.split("-")[1], name.rsplit("-", 1)[1]
    ukan, levels = kind == "ukan", int(level.removeprefix("l"))
    return PublicSource(
        name=name, variant=f"wddm-{kind}-{level}", dataset=dataset, published_fid=None, where=_WHERE,
        licence=_LICENCE, planner=functools.partial(plan_ukan if ukan else plan_unet, levels=levels), manifest=name, needs_prediction=True,
        file=("U-KAN state dict (safetensors)" if ukan else "diffusion_pytorch_model.safetensors (safetensors)"),
        overrides={"model.denoiser.attn": []} if ukan else {}, image_dwt="DWT_2D",
        note="; ".join(x for x in (note, "no FID published per file") if x))


SOURCES: tuple[PublicSource, ...] = (
    _source("wddm-unet-cifar10-l1", "cifar10"),
    _source("wddm-unet-cifar10-l2", "cifar10"),
    _source("wddm-unet-celebahq-l1", "celebahq256"),
    _source("wddm-unet-celebahq-l2", "celebahq256"),
    _source("wddm-unet-stl10-l1", "stl10", _ROW_FROM_PUBLIC),
    _source("wddm-ukan-cifar10-l1", "cifar10", "the public U-KAN asks for attention at level 0 and drops it: "
                                               "converted without"),
    _source("wddm-ukan-cifar10-l2", "cifar10"),
    _source("wddm-ukan-stl10-l1", "stl10", _ROW_FROM_PUBLIC + "; attention asked, dropped: converted without"),
    _source("wddm-ukan-celebahq-l1", "celebahq256", _ROW_FROM_PUBLIC + "; attention asked, dropped: converted "
                                                                      "without"),
)
