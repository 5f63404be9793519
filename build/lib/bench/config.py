"""Typed run configuration, overrides with validation, and stable hashes.

A job is one fully resolved :class:`RunConfig`. Overrides are nested dicts (from grid YAML or the command line,
dotted keys allowed: ``{"train.lambda_rec": 0.5}``); every problem is collected and reported at once, naming the
key and the valid choices, before any work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from bench.data import DataConfig
from bench.evaluate import TimingConfig
from bench.metrics_config import MetricsConfig

__all__ = ["EvalConfig", "InitConfig", "RunConfig", "ConfigError", "apply_overrides", "config_hash", "unflatten",
           "to_dict", "canonical"]


class ConfigError(ValueError):
    """One or more problems with a configuration; ``problems`` lists them all."""

    def __init__(self, problems: list[str], context: str = ""):
        self.problems = problems
        head = f"{context}: " if context else ""
        super().__init__(head + ("\n  - " if len(problems) > 1 else "") + "\n  - ".join(problems))


@dataclass
class EvalConfig:
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # FID / KID / precision / recall protocol
    sample_batch_size: int = 100     # batch size when generating the evaluation samples
    sampler: str = "default"         # diffusion families: ddpm | ddim; "default" = the variant's own
    steps: int = 0                   # sampler steps (0 = the variant's default)
    eta: float = 0.0                 # DDIM eta
    spacing: str = "linear"          # DDIM sub-sequence: linear | quadratic | leading
    timing: TimingConfig = field(default_factory=TimingConfig)  # the papers' protocol: batch 100, 10 + 300 runs
    grid_images: int = 64            # images in the logged sample grid
    quality: bool = True             # compute FID/KID/PRC (off only for cost-only runs)
    every_steps: int = 0             # also evaluate FID during training every this many steps (0 = off)
    every_num_samples: int = 500     # generated samples of those intermediate FIDs
    precision: str = "fp32"          # sampler numerics: fp32 (PyTorch's defaults: TF32 convolutions; recorded) | bf16
    cuda_graphs: bool = True         # on CUDA, replay the sampling network through CUDA graphs (bench/sampling.py)


@dataclass
class InitConfig:
    weights: str = ""                # a converted checkpoint (python -m bench.weights convert) the sampling network
    #                                  starts from ("$VARS" expanded; "" = random initialisation); with
    #                                  train.max_steps: 0 the job evaluates those weights without training

    def path(self) -> Path:
        """``weights`` with ``$VARS`` and ``~`` expanded."""
        return Path(os.path.expandvars(self.weights)).expanduser()

    def problems(self) -> list[str]:
        """What is wrong with ``weights`` as a file, found before any work starts."""
        if not self.weights:
            return []
        unset = [v for v in re.findall(r"\$\{?(\w+)\}?", self.weights) if v not in os.environ]
        if unset:
            return [f"init.weights={self.weights}: the environment variable(s) {', '.join(unset)} are not set "
                    "(the folder of the converted checkpoints: python -m bench.weights convert SOURCE FILE --out DIR)"]
        if not self.path().is_file():
            return [f"init.weights={self.weights}: {self.path()} is not a file; convert the public checkpoint with "
                    "python -m bench.weights convert SOURCE FILE --out DIR (python -m bench.weights list names them)"]
        return []


@dataclass
class RunConfig:
    variant: str                     # a name in bench.registry.VARIANTS
    dataset: str = "digits"          # a name in bench.registry.DATASET_PRESETS
    scale: str = "tiny"              # tiny (CPU-sized widths) | paper (the paper's configuration)
    seed: int = 0                    # global seed (per-rank seeds derive from it)
    device: str = "auto"             # auto (CUDA when available) | cpu | cuda | cuda:N
    processes: int = 1               # data-parallel training processes (DDP; one per GPU, gloo on CPU)
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None                # the variant family's model dataclass
    train: Any = None                # the variant family's training dataclass
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: InitConfig = field(default_factory=InitConfig)


# --------------------------------------------------------------------------------------------- overrides

def unflatten(d: dict) -> dict:
    """{"train.lr": 1, "model": {"nf": 2}} -> {"train": {"lr": 1}, "model": {"nf": 2}}."""
    out: dict = {}
    for k, v in d.items():
        parts = str(k).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError([f"key {k!r} mixes a value and a section"])
        if isinstance(v, dict):
            node.setdefault(parts[-1], {})
            node[parts[-1]].update(unflatten(v))
        else:
            node[parts[-1]] = v
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns the (lightly coerced) value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            sub: list[str] = []
            v = _coerce(value, a, key, sub)
            if not sub:
                return v
        problems.append(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
        return value
    if tp is Any:
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {value!r}")
            return value
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        out = [_coerce(v, elem, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string: accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value


def apply_overrides(obj: Any, overrides: dict, prefix: str = "", problems: list[str] | None = None,
                    frozen_keys: frozenset = frozenset()) -> Any:
    """A copy of dataclass ``obj`` with ``overrides`` applied. Problems are appended to ``problems`` (and
    raised as one :class:`ConfigError` when no list is given)."""
    own = problems is None
    problems = [] if own else problems
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    changes = {}
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        if k not in names:
            problems.append(f"unknown key {key!r}; valid keys{' in ' + prefix[:-1] if prefix else ''}: "
                            f"{', '.join(names)}")
            continue
        if key in frozen_keys:
            problems.append(f"{key} is derived from the data set and the variant and cannot be set")
            continue
        current = getattr(obj, k)
        if is_dataclass(current):
            if not isinstance(v, dict):
                problems.append(f"{key}: expected a section (mapping), got {v!r}")
                continue
            changes[k] = apply_overrides(current, v, f"{key}.", problems, frozen_keys)
        else:
            changes[k] = _coerce(v, hints[k], key, problems)
    try:
        new = dataclasses.replace(obj, **changes)
    except (ValueError, TypeError) as e:  # a dataclass's own __post_init__ check
        problems.append(f"{prefix[:-1] or 'config'}: {e}")
        new = obj
    if own and problems:
        raise ConfigError(problems)
    return new


def canonical(obj: Any) -> Any:
    """A copy of dataclass ``obj`` whose every value has its annotated type (``1800`` in a float field becomes
    ``1800.0``, lists in tuple fields become tuples). Two configs that mean the same thing then hash the same,
    whether they were built in code or rebuilt from their JSON form in another process."""
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            changes[f.name] = canonical(value)
        else:
            problems: list[str] = []
            coerced = _coerce(value, hints[f.name], f.name, problems)
            if not problems:
                changes[f.name] = coerced
    return dataclasses.replace(obj, **changes)


def to_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def config_hash(data: Any) -> str:
    """Stable 16-hex-digit hash of a dataclass or JSON-able structure (key order and tuples/lists ignored)."""
    if is_dataclass(data):
        data = to_dict(data)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
