"""Aten ops per training step and per sampling-network call stay within the committed budgets
(bench/perf/op_budgets.json, +5%): a change that makes the host dispatch more ops per step fails here, naming the
variant, precision, field and both numbers.

The counts are made through the suite's own trainers and sampler (bench/perf/ops.py) at :data:`ops.NARROW`, narrow
networks with the paper configurations' layer structure, whose counts equal the paper configurations' (checked by
the slow test at the end: ``pytest tests/test_op_budget.py -m slow``). After a change that lowers the counts:
``python -m bench.perf --sections ops --write-budgets`` (paper configurations) and commit the file."""
import json

import pytest
import torch

from bench.perf import ops

BUDGETS = json.loads(ops.BUDGETS_PATH.read_text())


@pytest.mark.parametrize("variant", ops.OPS_VARIANTS)
def test_counts_are_within_budget(variant, one_thread):
    counts = ops.table({variant: ops.count_variant(variant, narrow=True)})
    problems = ops.over_budget(counts, BUDGETS)
    assert not problems, "more aten ops than budgeted (bench/perf/op_budgets.json):\n" + "\n".join(problems)
    fields = counts[variant]
    gan = variant in ("ddgan", "wavediff", "wavediff-wg")
    assert set(fields) == set(ops.OPS_PRECISIONS + (ops.OPS_OPTION_ARMS if gan else ()))
    for prec in fields:
        assert fields[prec]["plain_step"] > fields[prec]["sampler_call"] > 0  # a step is more than a forward
        if gan:
            assert fields[prec]["r1_step"] > fields[prec]["plain_step"]  # R1: a double backward through D
        else:
            assert fields[prec]["r1_step"] is None
    assert fields["bf16"]["plain_step"] > fields["fp32"]["plain_step"]  # autocast's casts are counted
    for prec in ops.OPS_PRECISIONS if gan else ():  # train.fast_sums: fewer ops per step, the same sampler
        fast = fields[f"{prec}+fast_sums"]
        assert fast["plain_step"] < 0.85 * fields[prec]["plain_step"] and fast["r1_step"] < fields[prec]["r1_step"]
        assert fast["sampler_call"] == fields[prec]["sampler_call"]
    for (v, arm), target in ops.PLAIN_STEP_TARGETS.items():
        if v == variant:
            assert fields[arm]["plain_step"] <= target, (variant, arm, fields[arm]["plain_step"], target)


def test_budget_file_covers_every_count():
    assert set(BUDGETS) == set(ops.OPS_VARIANTS)
    for variant, precs in BUDGETS.items():
        assert set(precs) == set(ops.ops_arms(variant)), variant
        for fields in precs.values():
            assert set(fields) == set(ops.FIELDS), variant
            assert all(n is None or (isinstance(n, int) and n > 0) for n in fields.values()), (variant, fields)


def test_over_budget_names_variant_precision_field_and_both_numbers():
    budgets = {"wavediff": {"fp32": {"plain_step": 1000, "r1_step": 2000, "sampler_call": 300}}}
    ok = {"wavediff": {"fp32": {"plain_step": 1050, "r1_step": 1500, "sampler_call": 300}}}
    assert ops.over_budget(ok, budgets) == []  # +5% exactly is allowed; fewer ops always are
    bad = {"wavediff": {"fp32": {"plain_step": 1051, "r1_step": None, "sampler_call": 300}},
           "ddgan": {"bf16": {"plain_step": 5, "r1_step": None, "sampler_call": 1}}}
    problems = ops.over_budget(bad, budgets)
    assert problems[0] == "wavediff fp32 plain_step: 1051 ops > budget 1000 + 5% (+5.1%)"
    assert problems[1].startswith("ddgan bf16 plain_step: 5 ops, no budget")
    assert len(problems) == 3


def test_counter_skips_views_and_counts_optimiser_steps_apart():
    x = torch.ones(3)
    with ops.OpCounter() as c:
        (x * 2).view(3, 1).sum()
    assert (c.ops, c.all_ops, c.optimizer_ops) == (2, 3, 0)  # mul and sum; the view in all_ops only
    assert c.by_op == {"aten.mul.Tensor": 1, "aten.view.default": 1, "aten.sum.default": 1}
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    with ops.OpCounter() as c:
        (p * 2).sum().backward()
        before = c.ops
        opt.step()
    assert c.ops == before > 2 and c.optimizer_ops >= 1  # SGD's update is counted apart
    assert torch.allclose(p.detach(), torch.full((3,), 0.8))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ops.OPS_VARIANTS)
def test_narrow_counts_equal_the_paper_configurations(variant, one_thread):
    """Minutes on 2 cores (the paper networks at batch 2, DVDP at 16): why the budget test may use NARROW."""
    paper = ops.table({variant: ops.count_variant(variant)})
    assert ops.table({variant: ops.count_variant(variant, narrow=True)}) == paper
    assert paper == {variant: BUDGETS[variant]}  # the committed budgets are today's counts
