"""Section 1, ``haar``: the round trip ``haar_dwt`` + ``haar_idwt`` vs pytorch_wavelets ``DWTForward`` /
``DWTInverse`` (haar, J=1; an optional bench-only dependency, skipped with a note when absent) vs ``x.clone()``
(the memory floor)."""
from __future__ import annotations

import importlib.resources
import sys
import types
from typing import Callable

import torch

from bench.perf.config import REFERENCES, PerfConfig
from bench.perf.timing import calibrate, interleaved, paired_ratio, ratio, say, stat, summarize
from models.wavelet import haar_dwt, haar_idwt

__all__ = ["HAAR_SHAPES", "load_pytorch_wavelets", "run", "render", "metrics"]

HAAR_SHAPES = ((256, 3, 32, 32), (16, 3, 256, 256))


def load_pytorch_wavelets() -> tuple[tuple | None, str]:
    """(DWTForward, DWTInverse) and a note; (None, why) when the bench-only extra is not installed.

    pytorch_wavelets 1.3.0 imports ``pkg_resources.resource_stream``, which setuptools >= 81 no longer ships:
    a minimal stand-in is provided for the import only and removed afterwards."""
    shim = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        mod = types.ModuleType("pkg_resources")
        mod.resource_stream = lambda pkg, res: importlib.resources.files(pkg).joinpath(res).open("rb")
        sys.modules["pkg_resources"] = mod
        shim = True
    try:
        from pytorch_wavelets import DWTForward, DWTInverse
    except ImportError as e:
        return None, f"pytorch_wavelets is not installed ({e}); its column is skipped"
    finally:
        if shim:
            sys.modules.pop("pkg_resources", None)
    try:
        from importlib.metadata import version
        v = version("pytorch_wavelets")
    except Exception:
        v = "unknown version"
    return (DWTForward, DWTInverse), f"pytorch_wavelets {v}" + (" (pkg_resources shim)" if shim else "")


def run(pc: PerfConfig, device: torch.device) -> dict:
    ptw, note = load_pytorch_wavelets()
    say(f"haar: {note}")
    rows = []
    g = torch.Generator().manual_seed(pc.seed)
    for shape in HAAR_SHAPES:
        x = torch.randn(shape, generator=g).to(device)
        fns: dict[str, Callable[[], object]] = {"clone": lambda: x.clone(), "ours": lambda: haar_idwt(haar_dwt(x))}
        errors = {"ours": (haar_idwt(haar_dwt(x)) - x).abs().max().item()}
        if ptw is not None:
            fwd = ptw[0](J=1, wave="haar", mode="zero").to(device)
            inv = ptw[1](wave="haar", mode="zero").to(device)
            fns["pytorch_wavelets"] = lambda: inv(fwd(x))
            with torch.no_grad():
                errors["pytorch_wavelets"] = (inv(fwd(x)) - x).abs().max().item()
        with torch.no_grad():
            number = {k: calibrate(fn, device, pc.haar_min_time_s) for k, fn in fns.items()}
        times = interleaved(fns, device, pc.haar_repeats, warmup=1, number=number)
        row = {"shape": list(shape), "ms": {k: summarize([t * 1e3 for t in v]) for k, v in times.items()},
               "calls_per_measurement": number, "max_roundtrip_error": errors,
               "ours_over_clone": paired_ratio(times["ours"], times["clone"])}
        if ptw is not None:
            row["speedup_vs_pytorch_wavelets"] = paired_ratio(times["pytorch_wavelets"], times["ours"])
        rows.append(row)
        say(f"haar {shape}: " + ", ".join(f"{k} {row['ms'][k]['median']:.3f} ms" for k in fns))
    return {"pytorch_wavelets": note, "available": ptw is not None, "rows": rows,
            "rounds": pc.haar_repeats, "min_time_s": pc.haar_min_time_s}


def render(h: dict, res: dict) -> list[str]:
    L = ["", "## 1. Haar transform round trip (haar_dwt + haar_idwt)", ""]
    L.append(f"{h['rounds']} rounds, each measurement a loop of at least {h['min_time_s'] * 1e3:.0f} ms; "
             f"{h['pytorch_wavelets']}. pytorch_wavelets: DWTForward(J=1, 'haar', mode='zero') + DWTInverse.")
    L.append("")
    head = "| shape | x.clone() ms | ours ms |"
    sep = "|---|---:|---:|"
    if h["available"]:
        head += " pytorch_wavelets ms | ours vs pytorch_wavelets (target >= 5x) |"
        sep += "---:|---:|"
    head += " ours / clone (floor) | max round-trip error |"
    sep += "---:|---:|"
    L += [head, sep]
    for row in h["rows"]:
        shape = "(" + ",".join(map(str, row["shape"])) + ")"
        line = f"| {shape} | {stat(row['ms']['clone'])} | {stat(row['ms']['ours'])} |"
        if h["available"]:
            sp = row["speedup_vs_pytorch_wavelets"]
            line += f" {stat(row['ms']['pytorch_wavelets'])} | {ratio(sp)} {'met' if sp['median'] >= 5 else 'MISSED'} |"
        err = ", ".join(f"{k} {v:.1e}" for k, v in row["max_roundtrip_error"].items())
        line += f" {ratio(row['ours_over_clone'])} | {err} |"
        L.append(line)
    L.append("")
    L.append(f"- **reference**: {REFERENCES['haar_cpu']}.")
    return L


def metrics(h: dict) -> dict[str, float]:
    m = {}
    for row in h["rows"]:
        key = "x".join(map(str, row["shape"]))
        for impl, st in row["ms"].items():
            m[f"haar_{key}_{impl}_ms"] = st["median"]
        m[f"haar_{key}_ours_over_clone"] = row["ours_over_clone"]["median"]
        if "speedup_vs_pytorch_wavelets" in row:
            m[f"haar_{key}_speedup_vs_pytorch_wavelets"] = row["speedup_vs_pytorch_wavelets"]["median"]
    return m
