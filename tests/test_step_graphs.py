"""train.cuda_graphs: the whole training step as CUDA graphs (bench/step_graphs.py). On CPU the same static buffers
and step function run without capture (emulation): N steps with and without it give bit-identical weights, a
resumed run builds its graphs again, and the option is part of the training hash only when on. The capture itself
runs in the ``cuda``-marked test (make gpu-check)."""
import pytest
import torch

from bench import registry
from bench.config import ConfigError
from bench.job import setup_training
from bench.step_graphs import StepGraphs
from bench.tracking import NullTracker
from conftest import micro

pytestmark = pytest.mark.usefixtures("one_thread")


def test_emulation_copies_each_batch_into_one_static_buffer_and_counts_the_kinds():
    seen = []

    def step(x, kind):
        seen.append((x.data_ptr(), kind, x.clone()))
        return {"loss": x.sum()}

    graphs = StepGraphs(step, torch.device("cpu"))
    assert graphs.emulate
    batches = [torch.full((2, 3), float(i)) for i in range(4)]
    outs = [graphs(b, i % 2 == 0) for i, b in enumerate(batches)]
    assert len({ptr for ptr, _, _ in seen}) == 1  # one static input buffer
    assert all(torch.equal(x, b) for (_, _, x), b in zip(seen, batches))
    assert [o["loss"].item() for o in outs] == [0.0, 6.0, 12.0, 18.0]
    assert graphs.protocol() == ("emulated on cpu (static buffers, no capture; False: 0 eager + 2 replayed, "
                                 "True: 0 eager + 2 replayed)")
    with pytest.raises(ValueError, match="batches of one shape"):
        graphs(torch.zeros(3, 3), True)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        StepGraphs(step, torch.device("cpu"), warmup=0)


def _train(tmp_path, steps: int, stop_after: int | None = None, **extra):
    cfg = registry.resolve(micro("wavediff", **{"train.max_steps": steps, "train.lazy_reg": 2, **extra}))
    system, stream, device = setup_training(cfg)
    done = []
    should_stop = None if stop_after is None else lambda: len(done) >= stop_after
    result = registry.family(cfg).trainer(cfg, system, stream, NullTracker(), tmp_path, device, progress=False,
                                          should_stop=should_stop, on_step=lambda step, s: done.append(step))
    return cfg, system, result


def test_emulated_graphs_train_bit_identically_and_resume(tmp_path):
    """Plain and R1 steps (lazy_reg 2), 6 steps: the same weights, bit for bit, as without the option; and a run
    stopped after step 3 (its checkpoint) and resumed (new graphs) ends there too."""
    _, plain, _ = _train(tmp_path / "plain", 6)
    cfg, graphed, result = _train(tmp_path / "graphs", 6, **{"train.cuda_graphs": True})
    assert cfg.train.cuda_graphs and result.step == 6
    for name in ("G", "D", "G_ema"):
        a, b = plain.modules()[name].state_dict(), graphed.modules()[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    _, _, stopped = _train(tmp_path / "resumed", 6, stop_after=3, **{"train.cuda_graphs": True})
    assert stopped.interrupted and stopped.step == 3
    _, resumed, result = _train(tmp_path / "resumed", 6, **{"train.cuda_graphs": True})
    assert result.resumed_from == 3
    a, b = plain.G_ema.state_dict(), resumed.G_ema.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_option_hashes_only_when_on_and_refuses_what_cannot_be_captured():
    off = registry.resolve(micro("wavediff"))
    on = registry.resolve(micro("wavediff", **{"train.cuda_graphs": True}))
    assert off.train.cuda_graphs is False
    assert registry.train_hash(off) != registry.train_hash(on)
    default = registry.resolve({"variant": "wavediff", "dataset": "digits", "scale": "tiny"})
    assert (registry.job_hash(default), registry.train_hash(default)) == ("0d0eedd7a0cd86b4", "c50331a7658f7c17")
    with pytest.raises(ConfigError) as e:
        registry.resolve(micro("wavediff", **{"train.cuda_graphs": True, "train.compile": True}))
    assert "train.cuda_graphs" in str(e.value) and "train.compile" in str(e.value)
    with pytest.raises(ConfigError) as e:
        registry.resolve(micro("wavediff", **{"train.cuda_graphs": True, "processes": 2}))
    assert "processes" in str(e.value)


@pytest.mark.cuda
def test_graphed_training_on_cuda_captures_both_step_kinds(tmp_path):
    cfg, system, result = _train(tmp_path, 12, device="cuda", **{"train.cuda_graphs": True})
    assert result.step == 12
    assert all(torch.isfinite(p).all() for p in system.G_ema.parameters())
    losses = [v for hist in result.history.values() for _, v in hist]
    assert losses and all(v == v for v in losses)
