import math

import pytest
import torch

from bench import registry
from bench.data import load_dataset
from bench.tracking import NullTracker
from bench.train import BatchStream, Checkpointer, NonFiniteLoss, run_loop, train_gan
from conftest import micro


def _train(cfg, workdir, stop_after=None, device="cpu"):
    torch.manual_seed(cfg.seed)  # seeds the CUDA generators too
    system = registry.build(cfg).to(torch.device(device))
    stream = BatchStream(load_dataset(cfg.data), cfg.train.batch_size, cfg.seed)
    calls = []
    stop = None if stop_after is None else (lambda: calls.append(1) or len(calls) > stop_after)
    res = train_gan(cfg, system, stream, NullTracker(), workdir, torch.device(device), should_stop=stop,
                    progress=False)
    return system, res


def check_resume_is_exact(tmp_path, device: str) -> None:
    """Straight through 5 steps == 3 steps, stop, resume in a fresh state, 2 more steps: every weight equal, and
    the device's RNG state at the end equal (it was saved with the checkpoint and restored)."""
    cfg = registry.resolve(micro("wavediff", device=device, **{"train.checkpoint_every": 2, "train.lazy_reg": 2,
                                                               "train.max_steps": 5}))
    rng = (lambda: torch.cuda.get_rng_state()) if device == "cuda" else torch.get_rng_state
    straight, r1 = _train(cfg, tmp_path / "a", device=device)
    end_rng = rng()
    _, first = _train(cfg, tmp_path / "b", stop_after=3, device=device)  # interrupted after 3 steps
    resumed, r2 = _train(cfg, tmp_path / "b", device=device)             # reseeded, resumes from step 3
    assert (r1.step, first.step, first.interrupted, r2.step, r2.resumed_from) == (5, 3, True, 5, 3)
    assert torch.equal(rng(), end_rng), "the RNG state after resuming differs from the uninterrupted run's"
    for name in ("G", "D", "G_ema"):
        for (n, a), (_, b) in zip(straight.modules()[name].state_dict().items(),
                                  resumed.modules()[name].state_dict().items()):
            assert a.device.type == device and torch.equal(a, b), f"{name}.{n} differs after resume"


def test_resume_gives_the_same_next_step(tmp_path):
    check_resume_is_exact(tmp_path, "cpu")


def test_batches_are_deterministic_and_cover_epochs():
    ds = load_dataset(registry.resolve({"variant": "ddgan"}).data)
    s = BatchStream(ds, 100, seed=3)
    assert s.steps_per_epoch == len(ds) // 100
    assert torch.equal(s.batch(7), BatchStream(ds, 100, seed=3).batch(7))
    assert not torch.equal(s.batch(0), BatchStream(ds, 100, seed=4).batch(0))
    seen = torch.cat([s.batch(k) for k in range(s.steps_per_epoch)])
    assert seen.shape[0] == s.steps_per_epoch * 100
    assert torch.unique(seen.flatten(1), dim=0).shape[0] > 0.95 * seen.shape[0]  # a permutation, no repeats


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save({"step": 1, "x": torch.ones(2)}, 1)
    ck.save({"step": 2, "x": torch.ones(2)}, 2)
    ck.paths()[-1].write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable"):
        state = ck.load_latest()
    assert state["step"] == 1
    ck.save({"step": 3}, 3)
    ck.save({"step": 4}, 4)
    assert [p.name for p in ck.paths()] == ["ckpt-000000003.pt", "ckpt-000000004.pt"]  # keeps the newest two
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_loss_stops_the_loop(tmp_path):
    cfg = registry.resolve(micro("ddgan", **{"train.max_steps": 10}))
    lin = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    values = iter([1.0, 0.5, math.nan])
    stream = BatchStream(load_dataset(cfg.data), 16, 0)
    with pytest.raises(NonFiniteLoss, match="step 2: loss=nan"):
        run_loop(cfg, modules={"lin": lin}, optimizers={"o": opt}, schedulers={}, update=lambda x, s: {"loss": next(values)},
                 stream=stream, tracker=NullTracker(), workdir=tmp_path, device=torch.device("cpu"), progress=False)


def test_minutes_budget_and_stop_request(tmp_path):
    cfg = registry.resolve(micro("ddgan", **{"train.max_steps": None, "train.max_minutes": 0.0005}))
    lin = torch.nn.Linear(2, 2)
    stream = BatchStream(load_dataset(cfg.data), 16, 0)

    def slow(x, s):
        import time
        time.sleep(0.01)
        return {"loss": 1.0}

    res = run_loop(cfg, modules={"lin": lin}, optimizers={}, schedulers={}, update=slow, stream=stream,
                   tracker=NullTracker(), workdir=tmp_path / "a", device=torch.device("cpu"), progress=False)
    assert 1 <= res.step <= 10 and res.wall_clock_s >= 0.03 and not res.interrupted
    cfg = registry.resolve(micro("ddgan", **{"train.max_steps": 100}))
    calls = []
    res = run_loop(cfg, modules={"lin": lin}, optimizers={}, schedulers={}, update=lambda x, s: calls.append(s) or {"loss": 1.0},
                   stream=stream, tracker=NullTracker(), workdir=tmp_path / "b", device=torch.device("cpu"),
                   should_stop=lambda: len(calls) >= 4, progress=False)
    assert res.interrupted and res.step == 4 and Checkpointer(tmp_path / "b").load_latest()["step"] == 4


def test_resuming_a_finished_checkpoint_trains_nothing_and_says_so(tmp_path):
    """ddim-N jobs reuse ddpm's checkpoint, already at its budget: no step, no throughput, no error."""
    cfg = registry.resolve(micro("wavediff", **{"train.max_steps": 2}))
    _train(cfg, tmp_path)
    _, again = _train(cfg, tmp_path)
    assert (again.step, again.resumed_from) == (2, 2) and math.isnan(again.images_per_s)
