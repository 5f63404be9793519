"""Evaluation sampling (bench/sampling.py) on the CPU: the CUDA-graph wrapper's static-buffer protocol, emulated,
gives exactly the eager samples for every family; graphs are keyed by argument shape and parameter storage;
bf16 runs under autocast and is recorded. The real CUDA graphs are compared with eager in tests/test_cuda.py."""
import pytest
import torch

from bench import registry
from bench.config import ConfigError
from bench.sampling import EvalSampler, GraphedNetwork
from conftest import micro

FAMILIES = {"ddgan": {}, "wavediff-wg": {}, "ddpm": {"eval.eta": 1.0}, "wddm-ukan-l1": {"eval.eta": 1.0},
            "dvdp": {"eval.eta": 1.0, "eval.steps": 4}}


def _system(variant):
    torch.manual_seed(0)
    system = registry.build(registry.resolve(micro(variant, **FAMILIES[variant])))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # no output layer left at zero: the samples must carry information
        for p in system.sampling_network.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return system.to(torch.device("cpu"))


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_graph_protocol_gives_the_eager_samples(variant, one_thread):
    system = _system(variant)
    x_T = torch.randn(system.state_shape(6), generator=torch.Generator().manual_seed(1))
    eager = system.sample(x_T, rng=torch.Generator().manual_seed(2))
    sampler = EvalSampler(system, torch.device("cpu"), emulate_graphs=True)
    for _ in range(2):  # the second run replays the captured graphs
        graphed = sampler(x_T, rng=torch.Generator().manual_seed(2))
        assert torch.equal(graphed, eager), f"{variant}: max |diff| {(graphed - eager).abs().max():.2e}"
    assert sampler.protocol()["sampler_cuda_graphs"] == "emulated"
    assert len(sampler.net.graphs) == (2 if variant == "dvdp" else 1)  # DVDP: one graph per stage resolution


def test_graphs_follow_shapes_and_parameter_storage():
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    g = GraphedNetwork(net, emulate=True)
    a, b = torch.randn(4, 2, 8, 8), torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        assert torch.equal(g(a), net(a)) and torch.equal(g(b), net(b)) and len(g.graphs) == 2
        out = g(a)
        net.weight.add_(1.0)  # in place (an optimiser or EMA step): the same graph sees it
        assert torch.equal(g(a), net(a)) and not torch.equal(g(a), out) and len(g.graphs) == 2
        net.weight = torch.nn.Parameter(net.weight.detach().clone())  # new storage: captured again
        assert torch.equal(g(a), net(a)) and len(g.graphs) == 3
        first = g(a)
        g(a + 1)
        assert torch.equal(first, net(a))  # a returned output is a copy, not the static buffer


def test_bf16_sampling_is_autocast_and_recorded(one_thread):
    system = _system("wavediff-wg")
    x_T = torch.randn(system.state_shape(4), generator=torch.Generator().manual_seed(1))
    fp32 = EvalSampler(system, torch.device("cpu"))
    bf16 = EvalSampler(system, torch.device("cpu"), precision="bf16")
    a, b = fp32(x_T, torch.Generator().manual_seed(2)), bf16(x_T, torch.Generator().manual_seed(2))
    assert a.dtype == b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 arithmetic inside
    assert (a - b).abs().mean() < 0.1
    assert bf16.protocol() == {"sampler_precision": "bf16", "sampler_cuda_graphs": "off (not on cpu)"}
    with pytest.raises(ConfigError, match="eval.precision='fp16'; valid: fp32, bf16"):
        registry.resolve(micro("wavediff", **{"eval.precision": "fp16"}))


def test_a_job_records_how_it_sampled(store, tmp_path):
    """eval.precision and the CUDA-graph state reach the run's tags and its eval_summary protocol."""
    import json

    from mlflow.tracking import MlflowClient

    from bench.job import run_job

    r = run_job(registry.resolve(micro("wavediff", **{"eval.precision": "bf16"})), experiment="s", progress=False)
    client = MlflowClient(store)
    tags = client.get_run(r.run_id).data.tags
    assert (tags["eval_precision"], tags["sampler_cuda_graphs"], tags["train_precision"]) == \
        ("bf16", "off (not on cpu)", "fp32")
    protocol = json.loads(open(client.download_artifacts(r.run_id, "eval_summary.json", str(tmp_path))).read())[
        "protocol"]
    assert protocol["sampler_precision"] == "bf16" and protocol["sampler_cuda_graphs"] == "off (not on cpu)"


def _to_copies(fn) -> int:
    from bench.perf.ops import OpCounter

    with OpCounter() as c:
        fn()
    return c.by_op["aten._to_copy.default"]


@pytest.mark.parametrize("emulate_graphs", [False, True])
def test_bf16_weights_are_cast_once_with_the_same_samples(emulate_graphs, one_thread):
    """eval.precision bf16: the sampling network's weights are cast to bf16 once, not at every network call (under
    CUDA graphs: not at every replay); the samples are bit-identical to plain autocast's, also after the weights
    change in place (an EMA step) or are replaced."""
    from bench.train import autocast

    system = _system("ddgan")
    net, cpu = system.sampling_network, torch.device("cpu")
    x_T = torch.randn(system.state_shape(3), generator=torch.Generator().manual_seed(1))

    def plain():  # what EvalSampler did before: autocast without its cache, every weight cast at every call
        with torch.no_grad(), autocast(cpu, "bf16", cache=False):
            return system.sample(x_T, rng=torch.Generator().manual_seed(2)).float()

    sampler = EvalSampler(system, cpu, precision="bf16", emulate_graphs=emulate_graphs)
    for _ in range(2):  # the same samples at the first call (which makes the copies) and after
        assert torch.equal(sampler(x_T, torch.Generator().manual_seed(2)), plain())
    copied = {id(p) for p in sampler.cast.params}
    # Every convolution and linear weight, the banked projections' (models.layers.LinearBank) included; the norms'
    # weights stay fp32 (autocast's fp32 ops).
    assert all(id(m.weight) in copied for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    banked = {id(p) for bank in (net.style_bank, net.time_bank) for layer in bank.layers for p in layer.parameters()}
    nfe = system.nfe
    before = _to_copies(plain)
    after = _to_copies(lambda: sampler(x_T, torch.Generator().manual_seed(2)))
    # No copied weight is cast at any call: what is left per call is the inputs' casts (at most 10 per call), where
    # plain autocast casts every weight (the banks' as one concatenation each).
    assert after <= 10 * nfe and before >= nfe * len(copied - banked), (before, after, nfe, len(copied))
    storage = sampler.cast.flat.data_ptr()
    with torch.no_grad():
        for p in net.parameters():  # in place, as an EMA step: the copies follow (one cast per weight)
            p.mul_(1.01)
    assert _to_copies(lambda: sampler(x_T, torch.Generator().manual_seed(2))) == after
    assert sampler.cast.flat.data_ptr() == storage  # refreshed in place: a captured graph reads the new values
    assert torch.equal(sampler(x_T, torch.Generator().manual_seed(2)), plain())
    first = next(net.parameters())
    first_name = next(n for n, _ in net.named_parameters())
    net.get_submodule(first_name.rsplit(".", 1)[0]).register_parameter(
        first_name.rsplit(".", 1)[1], torch.nn.Parameter(first.detach() * 0.5))  # replaced: watched again
    assert torch.equal(sampler(x_T, torch.Generator().manual_seed(2)), plain())
    assert any(p is net.get_parameter(first_name) for p in sampler.cast.params)
    assert not any(p is first for p in sampler.cast.params)


@pytest.mark.parametrize("variant", list(FAMILIES))
def test_bf16_sampler_of_every_family_is_plain_autocast_bitwise(variant, one_thread):
    """Every family's bf16 sampler (weights cast once, through the emulated CUDA-graph protocol) draws the samples
    that plain autocast draws, bit for bit, with fewer casts."""
    from bench.train import autocast

    system = _system(variant)
    cpu = torch.device("cpu")
    x_T = torch.randn(system.state_shape(2), generator=torch.Generator().manual_seed(1))

    def plain():
        with torch.no_grad(), autocast(cpu, "bf16", cache=False):
            return system.sample(x_T, rng=torch.Generator().manual_seed(2)).float()

    sampler = EvalSampler(system, cpu, precision="bf16", emulate_graphs=True)
    ours = sampler(x_T, torch.Generator().manual_seed(2))
    assert torch.equal(ours, plain()) and ours.abs().sum() > 0
    assert _to_copies(lambda: sampler(x_T, torch.Generator().manual_seed(2))) < _to_copies(plain)
