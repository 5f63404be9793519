"""Data-parallel jobs (torch DDP): one process per GPU, or several CPU processes with the gloo backend.

A job with ``processes: N`` runs as N tasks of one submitit job (``tasks_per_node = N`` on SLURM and on the
local executor). Each task reads its rank from the launcher (submitit's ``JobEnvironment``; torchrun's
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` also work), and:

- builds the networks from the global seed (identical on every rank), then reseeds its own RNGs with a per-rank
  seed (noise, time steps and latents differ between ranks, as in a single large batch);
- trains on its slice of each global batch (``train.batch_size`` counts all ranks together, so the data order
  and the number of images per step do not depend on N); gradients are averaged by DDP;
- agrees with the other ranks at every read of the losses (every ``train.log_every`` steps, before checkpoints;
  one collective) on the losses (their mean is what rank 0 logs), the NaN rule, the wall-clock budget and a stop
  request, so every rank stops at the same step (step budgets are the same everywhere without asking);
- rank 0 alone logs to MLflow, writes checkpoints (holding every rank's RNG state) and evaluates.
"""
from __future__ import annotations

import datetime
import io
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistContext", "SINGLE", "process_group", "launcher_environment", "rank_seed"]

# Other ranks wait in a collective while rank 0 evaluates (FID during training, the final evaluation).
WAIT_TIMEOUT = datetime.timedelta(hours=6)


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of ``rank`` for a job seeded ``seed`` (rank 0 of a multi-process job included)."""
    return seed * 1_000_003 + 7_919 * (rank + 1)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in its job; ``SINGLE`` for an ordinary one-process job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:<local rank>`` when the job runs on GPUs, else ``device`` unchanged."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """The module whose backward averages gradients over ranks (the module itself for one process)."""
        if not self.enabled:
            return module
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    def sync_step(self, losses: dict[str, float], flags: tuple[bool, ...], device: torch.device
                  ) -> tuple[dict[str, float], tuple[bool, ...]]:
        """One collective: the mean of each loss over ranks, and each flag OR-ed over ranks (the training loop
        uses it once, to agree at the start). A NaN on any rank makes the mean NaN everywhere."""
        if not self.enabled:
            return losses, flags
        keys = sorted(losses)
        vec = torch.tensor([losses[k] for k in keys] + [float(f) for f in flags], dtype=torch.float64)
        vec = vec.to(device) if self.backend == "nccl" else vec
        dist.all_reduce(vec)
        vec = vec.cpu().tolist()
        mean = {k: v / self.world_size for k, v in zip(keys, vec)}
        return mean, tuple(v > 0 for v in vec[len(keys):])

    def all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``values`` (on the device for NCCL, on the CPU for gloo)."""
        if not self.enabled:
            return values
        values = values.cuda() if self.backend == "nccl" else values.cpu()
        dist.all_reduce(values)
        return values

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj`` (tensors, numbers, strings, containers), in rank order (a list of one for a
        single process). It travels as torch.save bytes: all_gather_object's own pickling breaks on tensors."""
        if not self.enabled:
            return [obj]
        buf = io.BytesIO()
        torch.save(obj, buf)
        out: list = [None] * self.world_size
        dist.all_gather_object(out, buf.getvalue())
        return [torch.load(io.BytesIO(b), weights_only=True) for b in out]

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def launcher_environment() -> dict | None:
    """Rank, local rank, world size and rendezvous address from the launcher, or None outside any."""
    if any(k.startswith("SUBMITIT_") for k in os.environ) or "SLURM_JOB_ID" in os.environ:
        try:
            import submitit

            env = submitit.JobEnvironment()
            host = env.hostnames[0]
            return {"rank": env.global_rank, "local_rank": env.local_rank, "world_size": env.num_tasks,
                    "master_addr": "127.0.0.1" if host in ("localhost", "127.0.0.1") else host,
                    "master_port": int(os.environ.get("MASTER_PORT") or
                                       random.Random(f"wavebench-{env.job_id}").randint(20_000, 60_000))}
        except Exception:  # not inside a submitit job after all: fall through to torchrun's variables
            pass
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return {"rank": int(os.environ["RANK"]), "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
                "world_size": int(os.environ["WORLD_SIZE"]),
                "master_addr": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": int(os.environ.get("MASTER_PORT", 29_500))}
    return None


@contextmanager
def process_group(processes: int, device: torch.device) -> Iterator[DistContext]:
    """Join the job's process group for ``processes`` ranks (nothing to join for one); leave it on exit."""
    if processes == 1:
        yield SINGLE
        return
    env = launcher_environment()
    if env is None or env["world_size"] != processes:
        found = "no launcher" if env is None else f"{env['world_size']} task(s)"
        raise RuntimeError(f"processes={processes} needs {processes} tasks started by the launcher (the runner "
                           f"submits tasks_per_node={processes}; torchrun --nproc-per-node={processes} also "
                           f"works), found {found}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    ctx = DistContext(rank=env["rank"], local_rank=env["local_rank"], world_size=processes, backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(ctx.device(device))
    dist.init_process_group(backend, init_method=f"tcp://{env['master_addr']}:{env['master_port']}",
                            rank=ctx.rank, world_size=processes, timeout=WAIT_TIMEOUT)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()
