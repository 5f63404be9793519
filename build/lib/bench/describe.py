"""``python -m bench.registry list`` and ``python -m bench.registry show NAME``: what the registry's variants are.

``show`` is the one hop from a variant's name to its whole definition: the resolved config (YAML), the classes
and functions it builds and trains with (each with file:line), its paper and the published table rows it
reproduces (reports/published.yaml), and its networks' parameters and FLOPs per call, counted on the built
networks (meta device: shapes only).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import yaml

from bench import registry
from bench.config import ConfigError, to_dict
from bench.tracking import REPO_ROOT

__all__ = ["describe", "parts", "published_rows", "where", "show", "main"]

PUBLISHED = REPO_ROOT / "reports" / "published.yaml"


def _build(name: str, dataset: str, scale: str):
    """(config, system) of a variant on the meta device: shapes only, counting needs no memory and no arithmetic."""
    import torch

    cfg = registry.resolve({"variant": name, "dataset": dataset, "scale": scale}, check_paths=False)
    with torch.device("meta"):
        return cfg, registry.build(cfg)


def describe(name: str, dataset: str = "cifar10", scale: str = "paper") -> dict:
    """Facts of one variant on one data set preset, measured on the built networks."""
    from bench.evaluate import count_flops, count_params

    cfg, system = _build(name, dataset, scale)
    flops = count_flops(system.sampling_network, *system.network_inputs(1, "meta"))
    v = registry.VARIANTS[name]
    return {"name": name, "paper": v.paper, "dataset": dataset, "params": count_params(system.sampling_network),
            "params_by_network": {k: count_params(m) for k, m in system.networks.items()},
            "gflops_per_call": flops / 1e9, "nfe": system.nfe, "published_row": v.published_row}


def parts(name: str, dataset: str = "cifar10", scale: str = "paper") -> dict[str, object]:
    """What defines and builds a variant, by role: its family, its configuration factory, then the classes and
    functions of the system it builds (read from the built objects) and its training loop."""
    v = registry.VARIANTS[name]
    _, system = _build(name, dataset, scale)
    return {"family": type(v.family), "configure": v.configure, **v.family.parts(system)}


def where(obj) -> str:
    """``module.qualname  path:line`` of a class or function (path relative to the repository)."""
    obj = inspect.unwrap(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    source, line = inspect.getsourcelines(obj)
    line += next(i for i, text in enumerate(source) if text.lstrip().startswith(("class ", "def ")))  # past decorators
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return f"{obj.__module__}.{obj.__qualname__}  {shown}:{line}"


def published_rows(name: str) -> list[tuple[str, dict]]:
    """(table, row) of every published row in reports/published.yaml that this variant fills."""
    tables = (yaml.safe_load(PUBLISHED.read_text()) or {}).get("tables", {})
    return [(t, row) for t, spec in tables.items() for row in spec.get("rows", []) if name in row.get("variants", [])]


def show(name: str, dataset: str = "cifar10", scale: str = "paper") -> str:
    """A variant's whole definition as text (see the module docstring)."""
    v = registry.VARIANTS[name]
    cfg = registry.resolve({"variant": name, "dataset": dataset, "scale": scale}, check_paths=False)
    facts = describe(name, dataset, scale)
    lines = [f"{name}: {v.summary}", f"paper: {v.paper}"]
    if v.trains_as:
        lines.append(f"evaluation only: trains as {v.trains_as} (shares its checkpoint)")
    rows = published_rows(name)
    lines.append("published rows: " + ("; ".join(
        f"table {t}, {row['model']!r}: " + (", ".join(f"{k} {row[k]}" for k in ("fid", "recall", "time_s", "nfe")
                                                      if row.get(k) is not None) or "no published value")
        for t, row in rows) if rows else "none (no published row reproduces it)"))
    lines += ["", f"builds and trains with (family {v.family.name}):"]
    lines += [f"  {role:14s} {where(obj)}" for role, obj in parts(name, dataset, scale).items() if obj is not None]
    nets = ", ".join(f"{k} {n / 1e6:.2f}M" for k, n in facts["params_by_network"].items())
    lines += ["", f"parameters: {nets}; sampling network: {facts['gflops_per_call']:.3f} GFLOPs per call at batch 1 "
                  f"(2 x multiply-adds), NFE {facts['nfe']}",
              f"job hash {registry.job_hash(cfg)}, training hash {registry.train_hash(cfg)}", "",
              f"resolved config (dataset {dataset}, scale {scale}; every key can be set in a grid, except the ones "
              f"derived from the data set: {', '.join(sorted(v.family.derived_keys))}):",
              yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=110).rstrip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.registry", description="The registry's variants.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="every variant with params, GFLOPs per call, NFE, published row")
    ls.add_argument("--dataset", default="cifar10", help=f"data set preset ({', '.join(registry.DATASET_PRESETS)})")
    ls.add_argument("--json", action="store_true")
    sh = sub.add_parser("show", help="one variant's whole definition: config, classes (file:line), paper, costs")
    sh.add_argument("name", help="a variant name (python -m bench.registry list)")
    sh.add_argument("--dataset", default="cifar10", help=f"data set preset ({', '.join(registry.DATASET_PRESETS)})")
    sh.add_argument("--scale", default="paper", help=f"{' | '.join(registry.SCALES)}")
    args = ap.parse_args(argv)
    problems = []
    if args.dataset not in registry.DATASET_PRESETS:
        problems.append(f"unknown dataset {args.dataset!r}; valid: {', '.join(registry.DATASET_PRESETS)}")
    if args.cmd == "show":
        if args.name not in registry.VARIANTS:
            problems.append(f"unknown variant {args.name!r}; valid: {', '.join(registry.VARIANTS)}")
        if args.scale not in registry.SCALES:
            problems.append(f"unknown scale {args.scale!r}; valid: {', '.join(registry.SCALES)}")
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 2
    if args.cmd == "show":
        try:
            print(show(args.name, args.dataset, args.scale))
        except ConfigError as e:
            print(f"error: {args.name} on {args.dataset} at scale {args.scale}: {e}", file=sys.stderr)
            return 2
        return 0
    rows = []
    for name, v in registry.VARIANTS.items():
        try:
            rows.append(describe(name, args.dataset))
        except ConfigError as e:
            rows.append({"name": name, "paper": v.paper, "dataset": args.dataset, "params": None,
                         "gflops_per_call": None, "nfe": None, "published_row": v.published_row, "note": str(e)})
    if args.json:
        print(json.dumps([{k: r[k] for k in r if k != "params_by_network"} for r in rows], indent=2))
        return 0
    print(f"{'variant':28s} {'params':>9s} {'GFLOPs/call':>11s} {'NFE':>5s}  {'published row':24s} paper")
    for r in rows:
        if r["params"] is None:
            print(f"{r['name']:28s} {'-':>9s} {'-':>11s} {'-':>5s}  {str(r['published_row'] or '-'):24s} "
                  f"(no {args.dataset} paper configuration)")
            continue
        print(f"{r['name']:28s} {r['params'] / 1e6:8.2f}M {r['gflops_per_call']:11.2f} {r['nfe']:5d}  "
              f"{str(r['published_row'] or '-'):24s} {r['paper']}")
    print(f"(data set preset {args.dataset}, paper configuration, batch 1; GFLOPs = 2 x multiply-adds, "
          "torch FlopCounterMode; `python -m bench.registry show NAME` for a variant's whole definition)")
    return 0
