"""The GAN family's public checkpoints (DDGAN, WaveDiff generators ``netG_*.pth``) and their converter.

Facts from ../shared/public-weights/README.md (the study of the public files) and the public WaveDiff code
(github VinAIResearch/WaveDiff, read for facts only):

- A file is ``torch.save`` of the generator's state dict under the multi-GPU wrapper (``module.`` prefix), the EMA
  weights already swapped in. The generator keeps its layers in one flat list ``all_modules.N`` in construction
  order: time embedding (2 linears), input conv, per level its res-blocks (attention after each where the level
  has attention), its downsample block and its pyramid block; middle block, attention, block; per up level its
  res-blocks, attention, upsample; output norm, conv. ``z_transform.i`` is the latent mapping, laid out as the
  suite's ``z_mapping`` Sequential (PixelNorm, then Linear / activation pairs): same indices.
- Band orders. The suite's Haar transform orders the bands like pytorch_wavelets (LL, LH, HL, HH). The W-Generator's
  own transform (``DWT_2D``) has LH and HL swapped; so has the image-level transform of the CelebA-HQ 256 and 1024
  files (trained without ``--use_pytorch_wavelet``, run.sh).
- CelebA-HQ 1024 (patch size 2) packs input channels as (p1 p2 c) where ``pixel_unshuffle`` gives (c p1 p2); the
  output is unpacked as (c p1 p2), which already matches ``pixel_shuffle``.

:func:`plan` pairs that construction order with the suite's modules in models/ncsnpp.py, read from the built
network, and adds the permutations the source's conventions call for.
"""
from __future__ import annotations

import torch.nn as nn

from bench.weights import Entry, Permute, Plan, PublicSource, Transpose
from models.layers import (AttnBlock, FirConvDownsample, MidBlock, ResBlock, WaveletDownsample, WaveletResBlock)
from models.ncsnpp import NCSNppGenerator

__all__ = ["SOURCES", "plan", "units"]

# The swap of the two middle bands (LH <-> HL) between the suite's Haar transform and DWT_2D.
_BANDS_SWAPPED = (0, 2, 1, 3)
# Inside a res-block: suite submodule -> public submodule.
_RESBLOCK = {"norm0.style": "GroupNorm_0.style", "conv0": "Conv_0", "temb_proj": "Dense_0",
             "norm1.style": "GroupNorm_1.style", "conv1": "Conv_1", "skip": "Conv_2", "detail_conv": "convH_0"}


def units(G: NCSNppGenerator) -> list[tuple[str, nn.Module]]:
    """The generator's modules (suite name, module) in the public ``all_modules`` construction order."""
    out = [("time_embed.0", G.time_embed[0]), ("time_embed.2", G.time_embed[2]), ("conv_in", G.conv_in)]
    for i, level in enumerate(G.down):
        for j, block in enumerate(level.blocks):
            out.append((f"down.{i}.blocks.{j}", block))
            if hasattr(level, "attns"):
                out.append((f"down.{i}.attns.{j}", level.attns[j]))
        out += [(f"down.{i}.{n}", getattr(level, n)) for n in ("downsample", "pyramid") if hasattr(level, n)]
    assert isinstance(G.mid, MidBlock)  # FrequencyBottleneck included: same three modules
    out += [("mid.block1", G.mid.block1), ("mid.attn", G.mid.attn), ("mid.block2", G.mid.block2)]
    for i, level in enumerate(G.up):
        out += [(f"up.{i}.blocks.{j}", block) for j, block in enumerate(level.blocks)]
        out += [(f"up.{i}.{n}", getattr(level, n)) for n in ("attn", "upsample") if hasattr(level, n)]
    return out + [("norm_out", G.norm_out), ("conv_out", G.conv_out)]


def _bands(n_bands: int, width: int, band_order, inner) -> tuple[int, ...]:
    """Index of ``n_bands`` stacked blocks of ``width`` channels: suite block b holds public block band_order[b],
    and inside a block suite channel k holds public channel inner[k]."""
    return tuple(band_order[b] * width + inner[k] for b in range(n_bands) for k in range(width))


def _perm(dim: int, index, why: str) -> tuple:
    """The steps of a permutation: none for the identity."""
    index = tuple(index)
    return () if index == tuple(range(len(index))) else (Permute(dim, index, why),)


def _image_channels(src: PublicSource, channels: int, patch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input map, output map) over the network's image channels (``channels`` x patch^2): suite index -> public.

    Suite input channel (c, q) with q = p1 * patch + p2 sits at c * patch^2 + q (pixel_unshuffle); the public one at
    q * channels + c' with the (p1 p2 c) packing, else c' * patch^2 + q; c' is c with the image's LH and HL bands
    swapped (channels 3:6 <-> 6:9 of the 12 wavelet channels) where the file's image-level DWT is DWT_2D.
    The output is unpacked (c p1 p2) in both: only the band swap applies."""
    c_map = list(range(channels))
    if src.image_dwt == "DWT_2D":
        per = channels // 4
        c_map = list(_bands(4, per, _BANDS_SWAPPED, range(per)))
    pp = patch * patch
    packed = src.patch_packing == "(p1 p2 c)"
    inp = tuple((q * channels + c_map[c]) if packed else (c_map[c] * pp + q) for c in range(channels) for q in range(pp))
    out = tuple(c_map[c] * pp + q for c in range(channels) for q in range(pp))
    return inp, out


def _module_entries(name: str, pub: str, module: nn.Module, perms: dict[str, tuple]) -> dict[str, Entry]:
    """Entries of one unit: suite ``name.*`` from public ``pub.*``; ``perms``: suite leaf key -> post steps."""
    def entry(leaf: str, public_leaf: str, pre=()) -> tuple[str, Entry]:
        return f"{name}.{leaf}", Entry((f"{pub}.{public_leaf}",), pre, perms.get(leaf, ()))

    if isinstance(module, AttnBlock):  # NIN_0..2 (q, k, v) as x @ W: transposed, stacked; NIN_3 the output map
        qkv = tuple(f"{pub}.NIN_{i}" for i in range(3))
        return {f"{name}.norm.weight": Entry((f"{pub}.GroupNorm_0.weight",)),
                f"{name}.norm.bias": Entry((f"{pub}.GroupNorm_0.bias",)),
                f"{name}.qkv.weight": Entry(tuple(f"{k}.W" for k in qkv), (Transpose(),)),
                f"{name}.qkv.bias": Entry(tuple(f"{k}.b" for k in qkv)),
                f"{name}.proj.weight": Entry((f"{pub}.NIN_3.W",), (Transpose(),)),
                f"{name}.proj.bias": Entry((f"{pub}.NIN_3.b",))}
    out = {}
    for leaf in module.state_dict():
        if isinstance(module, ResBlock):
            sub, _, p = leaf.rpartition(".")
            out.update([entry(leaf, f"{_RESBLOCK[sub]}.{p}")])
        elif isinstance(module, FirConvDownsample):  # the public FIR pyramid keeps its conv as Conv2d_0
            out.update([entry(leaf, f"Conv2d_0.{leaf}")])
        elif isinstance(module, WaveletDownsample):  # the public one holds weight and bias itself
            out.update([entry(leaf, leaf.removeprefix("conv."))])
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.GroupNorm)):
            out.update([entry(leaf, leaf)])
        else:
            raise TypeError(f"no public counterpart known for {name} ({type(module).__name__})")
    return out


def plan(src: PublicSource, G: NCSNppGenerator) -> Plan:
    """The conversion plan of a DDGAN / WaveDiff generator file for the built suite generator ``G``."""
    cfg = G.cfg
    entries: dict[str, Entry] = {}

    # Latent mapping: the same Sequential layout (PixelNorm, Linear, act, Linear, act, ...): same indices.
    for leaf in G.z_mapping.state_dict():
        entries[f"z_mapping.{leaf}"] = Entry((f"z_transform.{leaf}",))

    in_map, out_map = _image_channels(src, cfg.in_channels, cfg.patch_size)
    feature_bands = _BANDS_SWAPPED if src.feature_dwt == "DWT_2D" else (0, 1, 2, 3)
    for n, (name, module) in enumerate(units(G)):
        perms: dict[str, tuple] = {}
        if name == "conv_in":
            perms["weight"] = _perm(1, in_map, "image channels")
        elif name == "conv_out":
            perms["weight"] = perms["bias"] = _perm(0, out_map, "image channels")
        elif name.endswith(".pyramid"):
            # The pyramid's input: the network input itself at level 0 (the same packed, image-band ordered
            # channels as the input conv's: ncsnpp_generator_adagn.py sets input_pyramid = x after patchifying),
            # the previous level's features after. A WaveletDownsample stacks its DWT's four bands, band-major
            # (torch.cat((xLL, xLH, xHL, xHH)), layerspp.py), so the image channel map applies inside each band
            # block, and the W-Generator's own DWT_2D order to the blocks.
            first = name == "down.0.pyramid"
            if isinstance(module, WaveletDownsample):
                width = module.conv.weight.shape[1] // 4
                index = _bands(4, width, feature_bands, in_map if first else range(width))
                perms["conv.weight"] = _perm(1, index, "pyramid DWT bands")
            elif first:  # a FIR pyramid reads the network input as it is
                perms["weight"] = _perm(1, in_map, "image channels")
        elif isinstance(module, WaveletResBlock) and hasattr(module, "detail_conv"):
            # The detail conv is grouped by band (LH, HL, HH) on input and output: swapping the LH and HL groups
            # (their weight rows and biases) maps DWT_2D's band order to the suite's.
            rows = module.detail_conv.weight.shape[0] // 3
            details = tuple(b - 1 for b in feature_bands[1:])  # (LH, HL, HH) of the four bands
            perms["detail_conv.weight"] = perms["detail_conv.bias"] = _perm(0, _bands(3, rows, details, range(rows)),
                                                                            "detail bands")
        entries.update(_module_entries(name, f"all_modules.{n}", module, perms))
    return Plan(entries)


_DDGAN_FILES = "Google Drive folder saved_info (DDGAN README)"
_WAVEDIFF_FILES = "Dropbox (WaveDiff README)"
_NVIDIA = "NVIDIA Source Code License (non-commercial)"
_AGPL = "GNU AGPL-3.0"
_WG = {"model.generator.wavelet_residual": True, "model.generator.wavelet_updown": True,
       "model.generator.wavelet_bottleneck": True}  # net_type wavelet, no --no_use_* flag (run.sh)


def _source(name, variant, dataset, fid, where, licence, file, T, manifest, **kw) -> PublicSource:
    over = {"model.schedule.num_timesteps": T, **(_WG if variant == "wavediff-wg" else {})}
    return PublicSource(name=name, variant=variant, dataset=dataset, published_fid=fid, where=where,
                        licence=licence, file=file, planner=plan, overrides=over, prefix="module.",
                        manifest=manifest, **kw)


SOURCES: tuple[PublicSource, ...] = (
    _source("ddgan-cifar10", "ddgan", "cifar10", 3.75, _DDGAN_FILES, _NVIDIA, "netG_1200.pth (torch)", 4,
            "ddgan-cifar10"),
    _source("ddgan-celebahq256", "ddgan", "celebahq256", 7.64, _DDGAN_FILES, _NVIDIA, "netG_550.pth (torch)", 2,
            "ddgan-celebahq256"),
    _source("wavediff-cifar10", "wavediff", "cifar10", 4.01, _WAVEDIFF_FILES, _AGPL, "netG_1300.pth (torch)", 4,
            "wavediff-cifar10", image_dwt="pytorch_wavelets",
            note="the plain generator (no W-Generator), as published"),
    _source("wavediff-stl10", "wavediff-wg", "stl10", 12.93, _WAVEDIFF_FILES, _AGPL, "netG_600.pth (torch)", 4,
            "wavediff-wg-stl10", image_dwt="pytorch_wavelets", feature_dwt="DWT_2D"),
    _source("wavediff-celebahq256", "wavediff-wg", "celebahq256", 5.94, _WAVEDIFF_FILES, _AGPL,
            "netG_475.pth (torch)", 2, "wavediff-wg-celebahq256", image_dwt="DWT_2D", feature_dwt="DWT_2D"),
    _source("wavediff-lsun", "wavediff-wg", "lsun_church", 5.06, _WAVEDIFF_FILES, _AGPL, "netG_400.pth (torch)", 4,
            "wavediff-wg-lsun", image_dwt="pytorch_wavelets", feature_dwt="DWT_2D"),
    _source("wavediff-celebahq512", "wavediff-wg", "celebahq512", 6.40, _WAVEDIFF_FILES, _AGPL,
            "netG_350.pth (torch)", 2, "wavediff-wg-celebahq512", image_dwt="pytorch_wavelets",
            feature_dwt="DWT_2D"),
    _source("wavediff-celebahq1024", "wavediff-wg", "celebahq1024", 5.98, _WAVEDIFF_FILES, _AGPL,
            "netG_350.pth (torch)", 2, "wavediff-wg-celebahq1024", image_dwt="DWT_2D", feature_dwt="DWT_2D",
            patch_packing="(p1 p2 c)"),
)
