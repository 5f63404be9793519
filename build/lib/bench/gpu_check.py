"""``make gpu-check``: the first command to run on a machine with an NVIDIA GPU.

1. Prints Python, torch, CUDA, cuDNN and every GPU; without a CUDA GPU it stops at once with one line saying why
   (exit 1). Missing packages are named with the command that installs them (exit 2).
2. Runs the tests marked ``cuda`` (tests/test_cuda.py): samplers agree on CPU and CUDA, training resumes exactly,
   DDP over NCCL, CUDA-event timings.
3. Runs experiments/gpu_check.yaml (wavediff and ddgan at the papers' CIFAR-10 configuration on the embedded
   digits, about 45 s of training each) through ``bench.run`` with the local executor, and checks for every job:
   the runner's status == MLflow's status == FINISHED, tag ``device`` = cuda, tag ``timing_device`` = this GPU's
   name. Prints the measured table.

Exit code 0 when every step passed. The runs land in MLflow experiment ``gpu-check`` of the usual store.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = "gpu_check"
# import name -> pip name of what the suite needs beside torch (what a GPU image with torch alone lacks)
NEEDED = {"mlflow": "mlflow", "submitit": "submitit", "optuna": "optuna", "torch_fidelity": "torch-fidelity",
          "yaml": "pyyaml", "pandas": "pandas", "seaborn": "seaborn", "scipy": "scipy", "sklearn": "scikit-learn",
          "tqdm": "tqdm", "torchvision": "torchvision", "pytest": "pytest"}


def missing_packages() -> list[str]:
    return [pip for mod, pip in NEEDED.items() if importlib.util.find_spec(mod) is None]


def install_hint(missing: list[str]) -> str:
    return (f"missing: {', '.join(missing)}. Where the package registry is reachable: pip install -e '.[test]' "
            "(keeps the torch already installed if it satisfies torch>=2.1). Offline: on a machine with network run "
            "`bash tools/gpu-wheels.sh` (downloads the wheels for the GPU machine's Python into .whl/), copy the "
            "project with .whl/ over, and there: python3 -m pip install --no-index --no-deps --target /tmp/site "
            ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD")


def versions() -> list[str]:
    import torch

    lines = [f"python {platform.python_version()} ({sys.executable})",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
                     f"{p.multi_processor_count} SMs")
    lines.append(f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    return lines


def run_cuda_tests() -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "cuda and not slow", "-p", "no:cacheprovider", "tests"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    tail = p.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(p.stdout[-6000:] + p.stderr[-2000:], flush=True)
    return p.returncode == 0, tail[0]


def run_grid(grid: str, gpu: str) -> tuple[list[str], str]:
    """Runs ``grid`` through bench.run (local executor, retraining); returns the problems found by checking every
    job against MLflow and the GPU named ``gpu``, and the measured table."""
    import json

    from mlflow.tracking import MlflowClient

    from bench import run
    from bench.demo import demo_table
    from bench.tracking import tracking_uri

    problems = []
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "results.json"
        rc = run.main(["--grid", grid, "--executor", "local", "--force", "--json", str(out)])
        if rc == 2 or not out.exists():
            return [f"bench.run exited {rc} before running the grid"], ""
        results = json.loads(out.read_text())
    client = MlflowClient(tracking_uri())
    experiment = run.load_grid(grid).experiment
    for r in results:
        name = r["variant"]
        if not r.get("run_id"):
            problems.append(f"{name}: no MLflow run ({r['status']}: {r.get('reason', '')})")
            continue
        mlrun = client.get_run(r["run_id"])
        tags = mlrun.data.tags
        checks = {"runner status": r["status"], "MLflow status": mlrun.info.status}
        for what, value in checks.items():
            if value != "FINISHED":
                problems.append(f"{name}: {what} is {value}, not FINISHED ({r.get('reason', '')})")
        if tags.get("device") != "cuda":
            problems.append(f"{name}: tag device is {tags.get('device')!r}, not 'cuda'")
        if tags.get("timing_device") != gpu:
            problems.append(f"{name}: tag timing_device is {tags.get('timing_device')!r}, not {gpu!r}")
        print(f"  {name}: runner {r['status']}, MLflow {mlrun.info.status}, device {tags.get('device')}, "
              f"timing on {tags.get('timing_device')}, run {r['run_id']}", flush=True)
    finished = [r for r in results if r["status"] == "FINISHED"]
    table = demo_table(results, experiment, finished[0]["dataset"]) if finished else ""
    return problems, table


def main() -> int:
    started = time.monotonic()
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed: install a CUDA build of torch first (https://pytorch.org)")
        return 1
    if not torch.cuda.is_available():
        from bench.evaluate import no_cuda_reason

        print(f"gpu-check: no CUDA GPU here: {no_cuda_reason()}")
        return 1
    print("== versions")
    print("\n".join(versions()), flush=True)
    missing = missing_packages()
    if missing:
        print(f"gpu-check: {install_hint(missing)}")
        return 2

    print("\n== tests marked cuda")
    tests_ok, tests_line = run_cuda_tests()
    print("\n== a two-variant grid on the GPU through bench.run (local executor)", flush=True)
    os.chdir(REPO)
    problems, table = run_grid(GRID, torch.cuda.get_device_name(0))
    if table:
        print("\n" + table)
    print(f"\n== gpu-check summary ({time.monotonic() - started:.0f} s)")
    print(f"tests marked cuda: {'passed' if tests_ok else 'FAILED'} ({tests_line})")
    print("grid: " + ("runner == MLflow == FINISHED, device cuda, timed on the GPU" if not problems else
                      "FAILED:\n  - " + "\n  - ".join(problems)))
    return 0 if tests_ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
