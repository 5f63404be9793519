"""The papers' public checkpoints, converted into the suite's own checkpoint files.

    python -m bench.weights list
    python -m bench.weights convert SOURCE FILE [--out DIR] [--prediction noise|sample]

A SOURCE is one public file (:class:`PublicSource`): which suite variant and data set preset it is, the config
keys the file does not say (T, the WDDM prediction type ...), its published FID and where, its licence, and the
conventions of its tensors (the image-level DWT, the W-Generator's band order, the patch packing). Each family
keeps its sources and converter beside its module (``Family.public_sources()``: bench/families/gan_weights.py,
bench/families/diffusion_weights.py); :data:`SOURCES` collects them from :data:`bench.families.FAMILIES`.

A converter is a *plan* (:class:`Plan`), derived from the built suite network: for every tensor of the sampling
network's state dict, the public key(s) it comes from and the transform (transpose, stacking of q, k, v, band
and channel permutations). The shared code below loads the file without executing code, strips the multi-GPU
``module.`` prefix, and loads STRICTLY: every public tensor used exactly once, every suite tensor filled, every
shape equal; otherwise :class:`ConversionError` (exit 2) names the first keys that do not fit and the SOURCE
whose layout the file matches better. The output, ``<DIR>/<SOURCE>.pt``, is a suite checkpoint::

    {"version": CHECKPOINT_VERSION, "kind": "public-weights", "config": to_dict(RunConfig),
     "state_dict": the sampling network's state dict,
     "source": {"name", "file", "sha256", "published_fid", "where", "licence", "variant", "dataset"}}

The suite never bundles or downloads these files (their licences are non-commercial or AGPL): users download them.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

__all__ = ["PublicSource", "Transpose", "Permute", "Entry", "Plan", "ConversionError", "SOURCES", "source_config",
           "plan_for", "load_public", "apply_plan", "convert", "convert_file", "expected_public_shapes", "to_public", "main",
           "WEIGHTS_ENV", "PREDICTIONS"]

WEIGHTS_ENV = "WAVEBENCH_WEIGHTS"                         # default --out folder (else ./weights)
PREDICTIONS = {"noise": "epsilon", "sample": "sample"}    # --prediction -> model.process.prediction
SHOWN = 5                                                 # keys named per kind of misfit


class ConversionError(ValueError):
    """A SOURCE, file or option that does not fit: the message says what and what would (exit 2)."""


# ============================================================================================== transforms
# A step maps one tensor of the public layout to the suite's layout; ``inverse`` maps it back (bit for bit).

@dataclass(frozen=True)
class Transpose:
    """A (C_in, C_out) matrix applied as ``x @ W`` (NCSN++'s NIN) -> the Linear weight (C_out, C_in)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.t()

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        return t.t()


@dataclass(frozen=True)
class Permute:
    """suite = public.index_select(dim, index): position i of the suite's dimension holds public index[i]."""
    dim: int
    index: tuple[int, ...]
    why: str = ""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.index_select(self.dim, torch.tensor(self.index, device=t.device))

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        back = torch.empty(len(self.index), dtype=torch.long)
        back[torch.tensor(self.index)] = torch.arange(len(self.index))
        return t.index_select(self.dim, back.to(t.device))


@dataclass(frozen=True)
class Entry:
    """One suite tensor: its public key(s), each mapped by ``pre``, concatenated along dim 0 when there are
    several (q, k, v -> qkv), then mapped by ``post``."""
    public: tuple[str, ...]
    pre: tuple = ()
    post: tuple = ()

    def forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for t in tensors:
            for s in self.pre:
                t = s.forward(t)
            parts.append(t)
        t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        for s in self.post:
            t = s.forward(t)
        return t.clone(memory_format=torch.contiguous_format)  # its own storage, whatever the file shared

    def inverse(self, t: torch.Tensor) -> list[torch.Tensor]:
        for s in reversed(self.post):
            t = s.inverse(t)
        parts = list(t.chunk(len(self.public), dim=0)) if len(self.public) > 1 else [t]
        out = []
        for p in parts:
            for s in reversed(self.pre):
                p = s.inverse(p)
            out.append(p.contiguous())
        return out


@dataclass(frozen=True)
class Plan:
    """Suite key -> :class:`Entry`, plus public keys the suite drops on purpose (e.g. a frozen sinusoid table)."""
    entries: Mapping[str, Entry]
    dropped: tuple[str, ...] = ()

    def public_keys(self) -> list[str]:
        return [k for e in self.entries.values() for k in e.public] + list(self.dropped)


# ============================================================================================== sources

@dataclass(frozen=True)
class PublicSource:
    name: str                          # command-line choice: SOURCE
    variant: str                       # suite variant (bench.registry.VARIANTS)
    dataset: str                       # suite data set preset (bench.data.DATASET_PRESETS)
    published_fid: float | None        # the paper's FID for this file, None where none is published per file
    where: str                         # where the paper's README points for the file
    licence: str                       # the file's licence (the suite never bundles it)
    file: str                          # the public file's name and format, as published
    planner: Callable[["PublicSource", nn.Module], Plan]  # the family's converter: plan from the built network
    overrides: Mapping[str, object] = field(default_factory=dict)  # dotted config keys the file does not say
    image_dwt: str | None = None       # image-level DWT: "pytorch_wavelets" (the suite's band order), "DWT_2D"
                                       #   (LH and HL swapped), None for pixel-space files
    feature_dwt: str | None = None     # the network's own DWT (W-Generator): "DWT_2D" (LH and HL swapped) or None
    patch_packing: str | None = None   # "(p1 p2 c)": input channels packed patch-major (the suite: (c p1 p2))
    prefix: str = ""                   # key prefix of the file (multi-GPU wrapper), stripped
    manifest: str = ""                 # configuration name in the public-weights study's manifests
    needs_prediction: bool = False     # the file does not say its prediction type: --prediction is required
    note: str = ""                     # anything else a user must know about this file


class _Sources(Mapping):
    """Every family's public sources by name, collected on first use (the families' converter modules import
    this module, so they cannot be collected when it is imported)."""

    def __init__(self) -> None:
        self._by_name: dict[str, PublicSource] | None = None

    def _all(self) -> dict[str, PublicSource]:
        if self._by_name is None:
            from bench.families import FAMILIES

            by_name: dict[str, PublicSource] = {}
            for fam in FAMILIES.values():
                for s in fam.public_sources():
                    assert s.name not in by_name, f"two public sources named {s.name}"
                    by_name[s.name] = s
            self._by_name = by_name
        return self._by_name

    def __getitem__(self, name: str) -> PublicSource:
        return self._all()[name]

    def __iter__(self):
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


SOURCES: Mapping[str, PublicSource] = _Sources()   # SOURCE name -> PublicSource, every family's


def _source(name: str) -> PublicSource:
    sources = SOURCES
    if name not in sources:
        raise ConversionError(f"unknown SOURCE {name!r}; valid: {', '.join(sources)}")
    return sources[name]


def source_config(name: str, prediction: str | None = None):
    """The resolved RunConfig of a SOURCE: its suite variant at scale "paper" on its data set, with its overrides
    (and, for sources whose files do not say it, ``prediction``: noise | sample)."""
    from bench import registry
    from bench.config import ConfigError

    s = _source(name)
    job = {"variant": s.variant, "dataset": s.dataset, "scale": "paper", **s.overrides}
    if s.needs_prediction:
        if prediction not in PREDICTIONS:
            raise ConversionError(f"{name}: the file does not say what the network predicts: give --prediction "
                                  f"{' or '.join(PREDICTIONS)} (got {prediction!r})")
        job["model.process.prediction"] = PREDICTIONS[prediction]
    elif prediction is not None:
        raise ConversionError(f"{name}: --prediction applies only to sources that need it "
                              f"({', '.join(n for n, x in SOURCES.items() if x.needs_prediction)})")
    try:
        return registry.resolve(job, check_paths=False)
    except ConfigError as e:
        raise ConversionError(f"{name}: its suite configuration does not resolve: {e}") from e


def _meta_network(cfg) -> nn.Module:
    """The sampling network of a config, built on the meta device (shapes only: instant at any size)."""
    from bench import registry

    with torch.device("meta"):
        return registry.build(cfg).sampling_network


def plan_for(name: str, prediction: str | None = "noise", network: nn.Module | None = None) -> Plan:
    """A SOURCE's plan for its suite network (built on the meta device unless given)."""
    s = _source(name)
    net = network if network is not None else _meta_network(
        source_config(name, prediction if s.needs_prediction else None))
    return s.planner(s, net)


def expected_public_shapes(plan: Plan, network: nn.Module) -> dict[str, tuple[int, ...]]:
    """Public key -> shape that a file must hold for ``plan`` (the inverse transforms of the suite's shapes).
    Dropped keys have no checked shape (None)."""
    sd = network.state_dict()
    out: dict[str, tuple[int, ...] | None] = {}
    for key, e in plan.entries.items():
        for k, t in zip(e.public, e.inverse(torch.empty(sd[key].shape, device="meta"))):
            out[k] = tuple(t.shape)
    out.update({k: None for k in plan.dropped})
    return out


def to_public(plan: Plan, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of a conversion: a suite state dict in the public layout (the dropped keys left out)."""
    out: dict[str, torch.Tensor] = {}
    for key, e in plan.entries.items():
        out.update(zip(e.public, e.inverse(state_dict[key])))
    return out


# ============================================================================================== loading

def load_public(path: Path) -> dict[str, torch.Tensor]:
    """A public file's tensors, without executing code: torch files through ``weights_only=True``, safetensors
    through the safetensors package (told apart by their first bytes, whatever the file is called)."""
    with open(path, "rb") as f:
        head = f.read(9)
    try:
        if head[:4] != b"PK\x03\x04" and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated, foreign or code-carrying file: say so, not a traceback
        raise ConversionError(f"{path}: not a loadable weights file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return obj


def _strip(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _misfit(expected: Mapping[str, tuple | None], found: Mapping[str, tuple]) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [(k, found[k], s) for k, s in expected.items() if k in found and s is not None and found[k] != s]
    return missing, unexpected, wrong


def _score(expected: Mapping[str, tuple | None], found: Mapping[str, tuple]) -> float:
    """How well a file's (key, shape) pairs match a layout: matches / union (1.0: it fits)."""
    hits = sum(1 for k, s in expected.items() if k in found and (s is None or found[k] == s))
    return hits / len(set(expected) | set(found))


def _better_source(name: str, found: Mapping[str, tuple], own: float) -> str | None:
    """The other SOURCE whose layout the file matches best, if it matches it better than ``name``'s."""
    best, best_score = None, own
    for other, s in SOURCES.items():
        if other == name:
            continue
        try:
            cfg = source_config(other, "noise" if s.needs_prediction else None)
            net = _meta_network(cfg)
            score = _score(expected_public_shapes(s.planner(s, net), net), found)
        except ConversionError:
            continue
        if score > best_score:
            best, best_score = other, score
    if best is None:
        return None
    return f"this file's keys match SOURCE {best} better ({best_score:.0%} of its tensors fit, {own:.0%} here)"


def _describe_misfit(name: str, missing, unexpected, wrong, hint: str | None) -> str:
    lines = [f"{name}: the file does not fit the suite network strictly (key names without the 'module.' prefix):"]
    for label, items, fmt in (
            ("missing", missing, lambda k: k),
            ("unexpected", unexpected, lambda k: k),
            ("wrong shape", wrong, lambda w: f"{w[0]}: file {tuple(w[1])}, expected {tuple(w[2])}")):
        if items:
            more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
            lines.append(f"  {label} ({len(items)}): {'; '.join(fmt(x) for x in items[:SHOWN])}{more}")
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


# ============================================================================================== conversion

def apply_plan(name: str, plan: Plan, network: nn.Module, public: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """The suite state dict of ``network`` from a public file's tensors through ``plan``, loaded strictly: every
    public tensor used once, every suite tensor filled, every shape equal; else :class:`ConversionError` naming
    the first keys that do not fit (and the SOURCE whose layout fits better, when ``name`` is a SOURCE)."""
    public = _strip(public, "module.")
    expected = expected_public_shapes(plan, network)
    found = {k: tuple(v.shape) for k, v in public.items()}
    missing, unexpected, wrong = _misfit(expected, found)
    used = plan.public_keys()
    assert len(used) == len(set(used)), f"{name}: the plan uses a public tensor twice"
    if missing or unexpected or wrong:
        hint = _better_source(name, found, _score(expected, found)) if name in SOURCES else None
        raise ConversionError(_describe_misfit(name, missing, unexpected, wrong, hint))
    state = {key: e.forward([public[k] for k in e.public]) for key, e in plan.entries.items()}
    meta = copy.deepcopy(network).to("meta")
    meta.load_state_dict(state, strict=True, assign=True)  # every suite tensor filled, every shape equal
    return state


def convert(name: str, public: Mapping[str, torch.Tensor], prediction: str | None = None):
    """(config, state dict) of a SOURCE from a public file's tensors, loaded strictly (see :func:`apply_plan`)."""
    s = _source(name)
    cfg = source_config(name, prediction)
    net = _meta_network(cfg)
    return cfg, apply_plan(name, s.planner(s, net), net, public)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_file(name: str, path: str | Path, out_dir: str | Path | None = None,
                 prediction: str | None = None) -> Path:
    """Convert one public file and write ``<out_dir>/<name>.pt`` atomically; returns its path."""
    from bench.config import to_dict
    from bench.train import CHECKPOINT_VERSION

    s = _source(name)
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (the public file of {name}: {s.file}, {s.where})")
    source_config(name, prediction)  # the option errors before any work
    out_dir = Path(out_dir or os.environ.get(WEIGHTS_ENV) or "weights").expanduser()
    cfg, state = convert(name, load_public(path), prediction)
    ckpt = {"version": CHECKPOINT_VERSION, "kind": "public-weights", "config": to_dict(cfg), "state_dict": state,
            "source": {"name": s.name, "file": path.name, "sha256": _sha256(path), "published_fid": s.published_fid,
                       "where": s.where, "licence": s.licence, "variant": s.variant, "dataset": s.dataset}}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.pt"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ============================================================================================== command line

def _table(sources: Iterable[PublicSource]) -> str:
    rows = [("SOURCE", "variant", "dataset", "FID", "where published", "licence")]
    for s in sources:
        fid = "-" if s.published_fid is None else f"{s.published_fid:.2f}"
        rows.append((s.name, s.variant, s.dataset, fid, s.where, s.licence))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    notes = [f"  {s.name}: {s.note}" for s in sources if s.note]
    return "\n".join(lines + (["notes:"] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.weights",
                                 description="The papers' public checkpoints as suite checkpoints.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the public files the suite converts, with their published FIDs")
    c = sub.add_parser("convert", help="convert one public file into <out>/<SOURCE>.pt")
    c.add_argument("source", metavar="SOURCE", help="a name from `list`")
    c.add_argument("file", metavar="FILE", help="the downloaded public file")
    c.add_argument("--out", default=None, help=f"output folder (default ${WEIGHTS_ENV}, else ./weights)")
    c.add_argument("--prediction", choices=sorted(PREDICTIONS), default=None,
                   help="what the network predicts, for files that do not say it (WDDM): noise or sample")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        print(_table(SOURCES.values()))
        return 0
    try:
        target = convert_file(args.source, args.file, args.out, args.prediction)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ckpt = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
    src, sd = ckpt["source"], ckpt["state_dict"]
    print(f"{args.source}: {src['file']} (sha256 {src['sha256']}) -> {target}\n"
          f"  {src['variant']} on {src['dataset']} at paper scale: {len(sd)} tensors, "
          f"{sum(t.numel() for t in sd.values()):,} values, loaded strictly (every public tensor used once)\n"
          f"  evaluate it: python -m bench.run --grid public_weights (its job's init.weights: "
          f"${WEIGHTS_ENV}/{args.source}.pt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
