"""``make gpu-check`` where there is no GPU: it stops at once saying why; its grid checks catch a job that did
not run on the GPU (the same code judges the real GPU run)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench import gpu_check, run
from conftest import micro, wait_s

ROOT = Path(__file__).resolve().parents[1]


def cuda_here() -> str | None:
    """Why the no-GPU check cannot run here (None where it can): on a machine with a usable GPU, `make gpu-check`
    runs for real instead of stopping, and the real run covers it."""
    import torch

    if torch.cuda.is_available():
        return "this machine has a CUDA GPU: make gpu-check runs for real here (the cuda tests and its grid)"
    return None


def test_the_no_gpu_check_is_skipped_exactly_where_a_gpu_is(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "make gpu-check runs for real here" in cuda_here()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_here() is None


def test_without_cuda_it_fails_at_once_with_one_line():
    if cuda_here():
        pytest.skip(cuda_here())
    p = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                       timeout=wait_s(120))
    assert p.returncode == 1
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here: ")


def test_its_grid_is_valid_and_the_install_hint_names_both_ways():
    grid = run.load_grid(gpu_check.GRID)
    configs = run.validate(grid)
    assert {c.variant for c in configs} == {"wavediff", "ddgan"}
    assert all(c.scale == "paper" and c.device == "auto" and c.dataset == "digits" for c in configs)
    hint = gpu_check.install_hint(["mlflow", "submitit"])
    assert "pip install -e" in hint and "tools/gpu-wheels.sh" in hint and "--no-index --no-deps" in hint
    assert (ROOT / "tools" / "gpu-wheels.sh").is_file()


def test_the_grid_checks_catch_a_job_that_ran_on_the_cpu(store, tmp_path, capsys):
    job = {k: v for k, v in micro("wavediff").items() if k != "variant"}
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump({"name": "g", "experiment": "gc", "defaults": job,
                                 "axes": {"variant": ["wavediff"]}, "executor": {"name": "local", "timeout_min": 10}}))
    problems, table = gpu_check.run_grid(str(p), "NVIDIA H200")
    assert "wavediff: tag device is 'cpu', not 'cuda'" in problems
    assert any(q.startswith("wavediff: tag timing_device is ") and q.endswith("not 'NVIDIA H200'") for q in problems)
    assert not any("status" in q for q in problems)  # it did finish, and the runner and MLflow say so
    assert "wavediff" in table and "runner FINISHED, MLflow FINISHED" in capsys.readouterr().out
