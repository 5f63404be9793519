"""One rank of a data-parallel job, started by tests/test_distributed.py (2 CPU processes, gloo) or
tests/test_cuda.py (GPUs, NCCL) with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). ``WAVEBENCH_TEST_DEVICE`` (cpu | cuda) picks the device and with it the backend.

    python tests/ddp_worker.py train <out dir> <variant> <max steps> [<stop after N steps on rank 1>]
    python tests/ddp_worker.py grad <out dir>
    python tests/ddp_worker.py nccl1 <out dir>

``train`` runs the suite's training (setup_training + the family's trainer) and saves this rank's modules and
result; ``grad`` saves the gradient of one DDP step on this rank's slice of a fixed global batch; ``nccl1`` joins
an NCCL group of world size 1 and saves the gradients of one step with and without the DDP wrapper.
"""
import json
import os
import sys
from pathlib import Path

import torch

from bench import registry
from bench.distributed import process_group
from bench.job import setup_training
from bench.tracking import NullTracker
from conftest import micro

DEVICE = torch.device(os.environ.get("WAVEBENCH_TEST_DEVICE", "cpu"))


def job(variant: str, max_steps: int) -> dict:
    gan = {"train.lazy_reg": 2} if registry.VARIANTS[variant].family.name == "gan" else {}  # R1 through DDP too
    return micro(variant, **{"processes": 2, "train.max_steps": max_steps, "train.checkpoint_every": 2,
                             "train.batch_size": 8, "train.log_every": 1, "device": DEVICE.type, **gan})


def train(out: Path, variant: str, max_steps: int, stop_after: int | None) -> None:
    cfg = registry.resolve(job(variant, max_steps))
    with process_group(cfg.processes, DEVICE) as dist:
        system, stream, device = setup_training(cfg, dist)
        calls: list[int] = []
        stop = None
        if stop_after is not None and dist.rank == 1:  # only rank 1 is asked to stop: both must stop together
            stop = lambda: calls.append(1) or len(calls) > stop_after  # noqa: E731
        tracker = NullTracker()
        res = registry.family(cfg).trainer(cfg, system, stream, tracker, out / "work", device, should_stop=stop,
                                      progress=False, dist=dist)
        torch.save({n: {k: v.cpu() for k, v in m.state_dict().items()} for n, m in system.modules().items()},
                   out / f"modules-{dist.rank}.pt")
        (out / f"result-{dist.rank}.json").write_text(json.dumps(
            {"step": res.step, "interrupted": res.interrupted, "resumed_from": res.resumed_from,
             "logged": tracker.metrics}))


def grad(out: Path) -> None:
    """Gradient of the mean epsilon-MSE of a DDPM denoiser on a fixed global batch of 8, this rank taking 4."""
    cfg = registry.resolve(job("ddpm", 1))
    with process_group(cfg.processes, DEVICE) as dist:
        system, stream, device = setup_training(cfg, dist)
        g = torch.Generator().manual_seed(5)  # the same global noise and time steps on every rank
        noise = torch.randn((8, *system.state_shape(1)[1:]), generator=g).to(device)
        t = torch.randint(0, system.diffusion.num_timesteps, (8,), generator=g).to(device)
        mine = slice(4 * dist.rank, 4 * dist.rank + 4)
        net = dist.wrap(system.denoiser, device)
        mse, _ = system.diffusion.loss(net, system.encode(stream.batch(0).to(device)), t=t[mine],
                                       noise=noise[mine])
        mse.backward()
        torch.save({n: p.grad.cpu() for n, p in system.denoiser.named_parameters()}, out / f"grad-{dist.rank}.pt")


def nccl1(out: Path) -> None:
    """World size 1 over NCCL: the backend initialises, DDP wraps the suite's denoiser, and one step's gradient
    through the wrapper (after its all-reduce) equals the plain module's."""
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    cfg = registry.resolve(micro("ddpm", **{"train.batch_size": 8, "device": "cuda"}))
    torch.cuda.set_device(0)
    tdist.init_process_group("nccl", init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
                             rank=0, world_size=1)
    try:
        system, stream, device = setup_training(cfg)
        g = torch.Generator().manual_seed(5)
        noise = torch.randn((8, *system.state_shape(1)[1:]), generator=g).to(device)
        t = torch.randint(0, system.diffusion.num_timesteps, (8,), generator=g).to(device)
        x0 = system.encode(stream.batch(0).to(device))
        grads = {}
        for name, net in (("plain", system.denoiser),
                          ("ddp", DistributedDataParallel(system.denoiser, device_ids=[0], broadcast_buffers=False))):
            system.denoiser.zero_grad(set_to_none=True)
            system.diffusion.loss(net, x0, t=t, noise=noise)[0].backward()
            grads[name] = {n: p.grad.cpu() for n, p in system.denoiser.named_parameters()}
        torch.save({"backend": tdist.get_backend(), "world_size": tdist.get_world_size(), **grads}, out / "nccl1.pt")
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    if DEVICE.type == "cuda":  # exact comparisons across processes need deterministic kernels
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        train(out, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None)
    elif mode == "nccl1":
        nccl1(out)
    else:
        grad(out)
