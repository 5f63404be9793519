import math

import pytest
import torch

from bench import registry
from bench.data import load_dataset, to_signed_unit
from bench.tracking import NullTracker
from bench.families.gan import train_gan
from bench.train import BatchStream, Checkpointer, NonFiniteLoss, run_loop
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


# ============================================================================================== device options

def test_losses_stay_on_the_device_until_the_log_cadence(tmp_path, monkeypatch):
    """Tensor losses are summed where they are and read only every log_every steps (and at step 1, before a
    checkpoint, at the end): what is logged is each loss's mean since the previous read."""
    from bench import train as train_mod

    reads = []
    real_read = train_mod._Window.read
    monkeypatch.setattr(train_mod._Window, "read", lambda self, *a, **k: reads.append(self.first_step) or
                        real_read(self, *a, **k))
    cfg = registry.resolve(micro("ddgan", **{"train.max_steps": 10, "train.log_every": 3,
                                             "train.checkpoint_every": 1000}))
    values = iter(torch.arange(1.0, 11.0))
    tracker = NullTracker()
    stream = BatchStream(load_dataset(cfg.data), 16, 0)
    res = run_loop(cfg, modules={}, optimizers={}, schedulers={}, update=lambda x, s: {"loss": next(values)},
                   stream=stream, tracker=tracker, workdir=tmp_path, device=torch.device("cpu"), progress=False)
    logged = [(step, v) for k, v, step in tracker.metrics if k == "loss"]
    assert logged == [(1, 1.0), (3, 2.5), (6, 5.0), (9, 8.0)]  # means of 1 | 2,3 | 4,5,6 | 7,8,9
    assert reads == [0, 1, 3, 6, 9] and res.step == 10    # the last read: step 10 alone, before the final checkpoint


def test_a_nan_on_the_device_is_caught_before_any_checkpoint_holds_it(tmp_path):
    cfg = registry.resolve(micro("ddgan", **{"train.max_steps": 10, "train.log_every": 5,
                                             "train.checkpoint_every": 2}))
    values = iter([torch.tensor(1.0), torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(1.0)])
    stream = BatchStream(load_dataset(cfg.data), 16, 0)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at steps 2-3 .*loss=nan"):
        run_loop(cfg, modules={"lin": torch.nn.Linear(2, 2)}, optimizers={}, schedulers={},
                 update=lambda x, s: {"loss": next(values)}, stream=stream, tracker=NullTracker(), workdir=tmp_path,
                 device=torch.device("cpu"), progress=False)
    assert [p.name for p in Checkpointer(tmp_path).paths()] == ["ckpt-000000002.pt"]  # none from the NaN window


def test_batches_on_the_device_are_the_documented_order(tmp_path):
    """Permutation seeded by (seed, epoch), flips by (seed, step), rank slices: the order checkpoints resume in."""
    from bench.data import InMemoryImages

    g = torch.Generator().manual_seed(0)
    ds = InMemoryImages(torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8, generator=g), torch.zeros(30),
                        hflip=True)
    s = BatchStream(ds, 8, seed=3).to(torch.device("cpu"))
    for step in (0, 2, 3, 7):  # 3 steps per epoch: crosses epochs
        epoch, k = divmod(step, 3)
        perm = torch.randperm(30, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        flip = torch.rand(8, generator=torch.Generator().manual_seed(3 * 7_919 + step)) < 0.5
        x = to_signed_unit(ds.images[perm[k * 8:(k + 1) * 8]])
        x[flip] = x[flip].flip(-1)
        assert torch.equal(s.batch(step), x), step


@pytest.mark.parametrize("variant", ["wavediff", "ddpm"])
def test_bf16_and_channels_last_train_and_have_their_own_training_hash(variant, tmp_path, one_thread):
    over = {"train.max_steps": 3, "train.lazy_reg": 2} if variant == "wavediff" else {"train.max_steps": 3}
    fp32 = registry.resolve(micro(variant, **over))
    fast = registry.resolve(micro(variant, **over, **{"train.precision": "bf16", "train.channels_last": True}))
    assert registry.train_hash(fp32) != registry.train_hash(fast)
    weights = {}
    for name, cfg in (("fp32", fp32), ("bf16", fast)):
        torch.manual_seed(0)
        system = registry.build(cfg)
        stream = BatchStream(load_dataset(cfg.data), cfg.train.batch_size, cfg.seed)
        res = registry.family(cfg).trainer(cfg, system, stream, NullTracker(), tmp_path / name, torch.device("cpu"),
                                      progress=False)
        assert res.step == 3
        net = system.sampling_network
        weights[name] = torch.cat([p.detach().flatten() for p in net.parameters()])
        convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs) == (name == "bf16")
    assert not torch.equal(weights["fp32"], weights["bf16"])  # bf16 arithmetic took place
    assert torch.isfinite(weights["bf16"]).all()
    with pytest.raises(Exception, match="train.precision='fp16'; valid: fp32, bf16"):
        registry.resolve(micro(variant, **{"train.precision": "fp16"}))


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """train.compile on the CPU (inductor; about a minute to compile): the same losses as eager, to rounding."""
    out = {}
    for flag in (False, True):
        cfg = registry.resolve(micro("wavediff", **{"train.max_steps": 3, "train.lazy_reg": 2, "train.log_every": 1,
                                                    "train.compile": flag}))
        torch.manual_seed(0)
        system = registry.build(cfg)
        tracker = NullTracker()
        registry.family(cfg).trainer(cfg, system, BatchStream(load_dataset(cfg.data), 16, 0), tracker, tmp_path / str(flag),
                        torch.device("cpu"), progress=False)
        out[flag] = [v for k, v, s in tracker.metrics if k == "loss_g"]
    assert out[True] == pytest.approx(out[False], rel=1e-3)
