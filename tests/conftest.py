"""Shared fixtures: a real temporary MLflow store and run directory, the local SLURM cluster, and micro-sized
job overrides."""
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are collected everywhere and skipped, with the reason, where torch sees no GPU."""
    import torch

    if torch.cuda.is_available():
        return
    from bench.evaluate import no_cuda_reason

    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {no_cuda_reason()} (make gpu-check runs these on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors and matrices: one intra-op thread (torch's, and numpy/scipy's BLAS) is much faster than two on a
    shared, busy CPU, where the thread pools only contend."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# Every wait of the tests for something outside the test process (a SLURM job to start or end, a node to go idle,
# a subprocess to report) is its usual duration times this factor: CI's two cores may be shared with other work.
WAIT_FACTOR = float(os.environ.get("WAVEBENCH_TEST_WAIT_FACTOR", "3"))


def wait_s(seconds: float) -> float:
    """How long a test waits for something that usually takes ``seconds`` (see :data:`WAIT_FACTOR`)."""
    return seconds * WAIT_FACTOR


def online() -> bool:
    """Whether the internet is reachable (github.com): tests of what a download would do pick their branch."""
    try:
        socket.create_connection(("github.com", 443), timeout=2).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (servers and process groups of the tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_store(mp: pytest.MonkeyPatch, root: Path) -> str:
    """Point the suite (and the subprocesses the runner starts) at a fresh SQLite MLflow store, artifact root
    and run directory under ``root``, through the env vars it reads; returns the tracking URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("WAVEBENCH_ARTIFACT_ROOT", str(root / "artifacts"))
    mp.setenv("WAVEBENCH_RUNS", str(root / "runs"))
    return uri


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow store and run directory for one test."""
    return _use_store(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    """Like ``store``, shared by the tests of one module (runs trained once and read by several tests)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _use_store(mp, tmp_path_factory.mktemp("store"))


def fake_datasets(root: Path, n: int = 4) -> Path:
    """$WAVEBENCH_DATA/<preset>/ for every data set preset that reads files: CIFAR-10 python batches of ``n``
    random images each, or three 8x8 random PNGs per image folder."""
    import pickle

    import numpy as np
    from PIL import Image

    from bench import registry

    rng = np.random.default_rng(0)
    for preset, (data, _) in registry.DATASET_PRESETS.items():
        if data.name == "cifar10":
            folder = root / preset / "cifar-10-batches-py"
            folder.mkdir(parents=True)
            for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
                with open(folder / name, "wb") as f:
                    pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                 "labels": rng.integers(0, 10, n).tolist()}, f)
        elif data.name == "image-folder":
            (root / preset).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / preset / f"{i}.png")
    return root


EVAL_MICRO = {"eval.metrics.num_samples": 24, "eval.sample_batch_size": 24, "eval.grid_images": 4,
              "eval.timing.batch_size": 4, "eval.timing.warmup": 0, "eval.timing.repeats": 2,
              "eval.metrics.kid_subsets": 5}


def micro(variant: str, **extra) -> dict:
    """A job mapping for ``variant`` at the smallest size that still exercises every code path: the sizes are its
    family's (:meth:`bench.families.Family.micro`), the budget and evaluation the tests'."""
    from bench import registry

    cfg = registry.default_config(variant)
    job = {"variant": variant, "dataset": "digits", "scale": "tiny", "device": "cpu", "train.max_steps": 2,
           "train.batch_size": 16, "train.checkpoint_every": 1000, **registry.family(cfg).micro(cfg), **EVAL_MICRO}
    job.update(extra)
    return job


def _slurm_unavailable() -> str | None:
    """Why the local cluster cannot be used, or None when its node accepts jobs."""
    if shutil.which("sinfo") is None:
        return "sinfo is not on PATH (start the cluster with: slurm/local-cluster.sh up)"
    try:
        # scontrol ping answers at once; sinfo retries an absent controller for about 10 s.
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        if "is UP" not in ping.stdout:
            why = (ping.stderr.strip().splitlines() or ping.stdout.strip().splitlines()[:1] or ["no answer"])[-1]
            return f"the SLURM cluster is down ({why}); start it with: slurm/local-cluster.sh up"
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "scontrol/sinfo timed out: the SLURM cluster is down (slurm/local-cluster.sh up)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s in ("idle", "mixed", "allocated", "completing") for s in states):
        why = (out.stderr.strip() or " ".join(states) or "no node").splitlines()[-1]
        return f"the SLURM cluster is down ({why}); start it with: slurm/local-cluster.sh up"
    return None



@pytest.fixture(scope="module")
def slurm_up():
    """The one-node cluster of slurm/local-cluster.sh: skip when it is down, fail instead when
    WAVEBENCH_REQUIRE_SLURM=1 (CI brings it up and must not skip these tests)."""
    conf = Path(os.environ.get("WAVEBENCH_SLURM_DIR", "/tmp/wavebench-slurm")) / "etc" / "slurm.conf"
    with pytest.MonkeyPatch.context() as env:
        if "SLURM_CONF" not in os.environ and conf.exists():
            env.setenv("SLURM_CONF", str(conf))  # the local cluster's config, also when /etc holds another one
        reason = _slurm_unavailable()
        if reason is not None:
            if os.environ.get("WAVEBENCH_REQUIRE_SLURM") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
        yield


def _my_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "--user", getpass.getuser(), "-o", "%i %T"], capture_output=True,
                         text=True, timeout=15)
    return out.stdout.split("\n") if out.stdout.strip() else []


@pytest.fixture(autouse=True)
def idle_slurm_node(request):
    """A SLURM test starts on an empty queue and an idle node: tests run one at a time, so a job still queued or
    running now was left by an earlier test (cancelled while it started, still completing) and would hold the
    node's CPUs that this test's jobs wait for. Such jobs are cancelled; the test waits up to wait_s(60) for the node."""
    if not {"slurm_up", "slurm_cluster"} & set(request.fixturenames):
        yield
        return
    request.getfixturevalue("slurm_up")
    left = _my_jobs()
    if left:
        subprocess.run(["scancel", "--user", getpass.getuser()], capture_output=True, timeout=15)
    deadline = time.monotonic() + wait_s(60)
    while True:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15).stdout.split()
        if not _my_jobs() and states and all(s == "idle" for s in states):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the SLURM node is not idle after {wait_s(60):.0f} s (sinfo: {' '.join(states)}; jobs left by earlier "
                        f"tests: {'; '.join(_my_jobs()) or 'none'})")
        time.sleep(0.5)
    yield
