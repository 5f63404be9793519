"""Data-parallel jobs with 2 CPU processes and the gloo backend: started with torchrun's variables (the
worker script), and by the runner as 2 submitit tasks of one job."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from bench import registry, run
from bench.config import ConfigError
from bench.data import InMemoryImages
from bench.distributed import process_group
from bench.job import setup_training
from bench.train import BatchStream
from conftest import free_port, micro

TESTS = Path(__file__).parent
WORKER = TESTS / "ddp_worker.py"


def launch(*args, world: int = 2, device: str = "cpu") -> None:
    """Every rank of the worker, as torchrun would start them; fails with the ranks' output."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "WAVEBENCH_TEST_DEVICE": device,  # the parent's PYTHONPATH kept: packages installed with --target
               "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]),
               "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}  # deterministic cuBLAS, for exact comparisons on GPUs
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-4000:]}"


def _modules(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same(a: dict, b: dict, what: str) -> None:
    for name in a:
        for k, v in a[name].items():
            assert torch.equal(v, b[name][k]), f"{what}: {name}.{k} differs"


# ============================================================================================== pieces

def test_ranks_split_each_global_batch_in_order():
    g = torch.Generator().manual_seed(0)
    ds = InMemoryImages(torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8, generator=g), torch.zeros(40),
                        hflip=True)
    whole = BatchStream(ds, 8, seed=3)
    ranks = [BatchStream(ds, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 1, 4, 5, 11):  # across epochs, with flips drawn for the global batch
        assert torch.equal(torch.cat([s.batch(step) for s in ranks]), whole.batch(step))
    with pytest.raises(ValueError, match="not divisible by processes=3"):
        BatchStream(ds, 8, seed=3, rank=0, world_size=3)


def test_processes_are_validated_and_part_of_the_training_hash():
    with pytest.raises(ConfigError) as e:
        registry.resolve(micro("ddpm", processes=3, **{"train.batch_size": 16}))
    assert "train.batch_size=16 is not divisible by processes=3" in str(e.value)
    with pytest.raises(ConfigError, match="processes must be >= 1"):
        registry.resolve(micro("ddpm", processes=0))
    with pytest.raises(ConfigError, match="pins one GPU"):
        registry.resolve(micro("ddpm", processes=2, device="cuda:1"))
    one, two = (registry.resolve(micro("ddpm", processes=n)) for n in (1, 2))
    assert registry.train_hash(one) != registry.train_hash(two)


def test_a_multi_process_job_without_its_tasks_says_what_is_missing(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="processes=2 needs 2 tasks.*tasks_per_node=2.*found no launcher"):
        with process_group(2, torch.device("cpu")):
            pass


# ============================================================================================== 2 processes, gloo

def test_ddp_gradient_is_the_full_batch_gradient(tmp_path, one_thread):
    """Each rank's loss on its half of the global batch, averaged by DDP = the loss on the whole batch."""
    launch("grad", tmp_path)
    g0, g1 = (torch.load(tmp_path / f"grad-{r}.pt", weights_only=True) for r in (0, 1))
    cfg = registry.resolve(micro("ddpm", **{"train.batch_size": 8}))
    system, stream, _ = setup_training(cfg)  # one process: the same initial weights
    g = torch.Generator().manual_seed(5)
    noise = torch.randn((8, *system.state_shape(1)[1:]), generator=g)
    t = torch.randint(0, system.diffusion.num_timesteps, (8,), generator=g)
    mse, _ = system.diffusion.loss(system.denoiser, system.encode(stream.batch(0)), t=t, noise=noise)
    mse.backward()
    for n, p in system.denoiser.named_parameters():
        assert torch.equal(g0[n], g1[n]), f"{n}: ranks hold different gradients"
        torch.testing.assert_close(g0[n], p.grad, rtol=1e-4, atol=1e-6, msg=f"{n}: not the full-batch gradient")


@pytest.mark.parametrize("variant", ["wavediff", "ddpm"])
def test_two_ranks_stay_in_step_stop_together_and_resume_exactly(tmp_path, variant, one_thread):
    check_two_ranks(tmp_path, variant, "cpu")


def check_two_ranks(tmp_path, variant: str, device: str) -> None:
    """Two ranks (gloo on CPUs, NCCL on two GPUs): identical weights after training, a stop request on rank 1
    stops both at the same step, fresh processes resume from the checkpoint to the uninterrupted result, and the
    logged losses are the same on both ranks."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    launch("train", straight, variant, 4, device=device)
    launch("train", split, variant, 4, 2, device=device)  # rank 1 alone is asked to stop after 2 steps
    first = [json.loads((split / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert [(f["step"], f["interrupted"]) for f in first] == [(2, True), (2, True)]
    ckpt = torch.load(sorted((split / "work").glob("ckpt-*.pt"))[-1], weights_only=True)
    assert ckpt["step"] == 2 and len(ckpt["rng_ranks"]) == 2  # every rank's RNG state, for an exact resume
    launch("train", split, variant, 4, device=device)  # fresh processes resume from the checkpoint
    res = [json.loads((split / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert [(r["step"], r["resumed_from"]) for r in res] == [(4, 2), (4, 2)]

    a0, a1 = _modules(straight / "modules-0.pt"), _modules(straight / "modules-1.pt")
    _assert_same(a0, a1, "rank 0 vs rank 1")
    _assert_same(a0, _modules(split / "modules-0.pt"), "resumed vs uninterrupted")
    # The losses each rank logs are the means over ranks: identical on both (rank 0 alone sends them to MLflow).
    logged = [json.loads((straight / f"result-{r}.json").read_text())["logged"] for r in (0, 1)]
    losses = [[m for m in lg if m[0].startswith("loss")] for lg in logged]
    assert losses[0] == losses[1] and {m[2] for m in losses[0]} == {1, 2, 3, 4}


def test_runner_runs_a_two_process_job_as_two_local_tasks(store, tmp_path):
    """The runner submits tasks_per_node=2; the ranks come from submitit's job environment; one MLflow run."""
    job = micro("wavediff", processes=2, **{"train.batch_size": 8, "train.max_steps": 3, "train.log_every": 1})
    grid = tmp_path / "ddp.yaml"
    grid.write_text(yaml.safe_dump({"name": "ddp", "experiment": "ddp-test", "jobs": [job],
                                    "executor": {"name": "local", "timeout_min": 10}}))
    g = run.load_grid(str(grid))
    configs = run.validate(g)
    results, _ = run.run_grid(g, configs, executor="local", max_parallel=1, cluster={}, poll_s=0.5)
    assert [r["status"] for r in results] == ["FINISHED"], results
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("ddp-test")
    runs = client.search_runs([exp.experiment_id], "tags.variant = 'wavediff'")
    assert len(runs) == 1  # rank 1 logged nothing
    r = runs[0]
    assert r.data.tags["processes"] == "2" and r.data.params["processes"] == "2"
    assert r.data.metrics["train_steps"] == 3 and r.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "loss_g")] == [1, 2, 3]
    ckpt = torch.load(sorted((Path(os.environ["WAVEBENCH_RUNS"]) / registry.train_hash(configs[0]))
                             .glob("ckpt-*.pt"))[-1], weights_only=True)
    assert len(ckpt["rng_ranks"]) == 2


def _trainable_variants() -> list[str]:
    return sorted({v.trains_as or v.name for v in registry.VARIANTS.values()})


@pytest.mark.parametrize("variant", _trainable_variants())
def test_every_parameter_gets_a_gradient_so_ddp_can_wrap_every_variant(variant, tmp_path, one_thread):
    """DDP (find_unused_parameters off) needs a gradient for every parameter at every step: one training step
    of each variant at the paper's configuration (batch 2), then every trained network's parameters hold one."""
    from bench.tracking import NullTracker

    cfg = registry.resolve({"variant": variant, "dataset": "digits", "scale": "paper", "device": "cpu",
                            "train.max_steps": 1, "train.batch_size": 2})
    system, stream, device = setup_training(cfg)
    registry.family(cfg).trainer(cfg, system, stream, NullTracker(), tmp_path, device, progress=False)
    for name, net in system.networks.items():
        missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{variant}: {name} parameters without a gradient: {missing[:5]}"
