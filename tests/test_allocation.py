"""prune.allocation=knapsack (HALP's per-group allocation) and its refusals."""

import copy
import itertools
import random

import pytest
import torch

from harness.core.allocation import knapsack
from harness.core.surgery import ChannelPruner, channel_widths
from methods.l1 import FilterL1Importance
from tasks.models import create_model


@pytest.mark.quick
@pytest.mark.parametrize("seed", range(6))
def test_knapsack_is_optimal_under_its_additive_model(seed):
    rng = random.Random(seed)
    groups = {f"g{i}": rng.randint(1, 4) for i in range(4)}  # options per group
    values = {g: sorted(rng.uniform(0, 10) for _ in range(n)) for g, n in groups.items()}
    costs = {g: sorted(rng.randint(1, 9) for _ in range(n)) for g, n in groups.items()}
    budget = rng.randint(sum(min(c) for c in costs.values()), sum(max(c) for c in costs.values()))
    picks = knapsack(values, costs, budget, bins=budget)  # integer costs: exact
    assert sum(costs[g][i] for g, i in picks.items()) <= budget
    brute = max(
        sum(values[g][i] for g, i in zip(groups, choice))
        for choice in itertools.product(*(range(n) for n in groups.values()))
        if sum(costs[g][i] for g, i in zip(groups, choice)) <= budget
    )
    assert sum(values[g][i] for g, i in picks.items()) == pytest.approx(brute)


def test_knapsack_allocation_meets_the_macs_target_and_differs_from_the_global_ranking():
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=16)
    widths = {}
    for allocation in ("global", "knapsack"):
        pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1, allocation=allocation)
        pruned = pruner.prune_to_target(copy.deepcopy(model), FilterL1Importance(), 0.5)
        assert 0.5 <= pruner.reduction(pruned) <= 0.52, allocation
        widths[allocation] = channel_widths(pruned)
    assert widths["knapsack"] != widths["global"]


@pytest.mark.quick
@pytest.mark.parametrize(
    "overrides, says",
    [
        (["prune.allocation=greedy"], "prune.allocation"),
        (["method=gbn", "prune.allocation=knapsack"], "chooses its own widths"),
        (["prune.allocation=knapsack", "prune.target=latency", "prune.latency_reduction=0.3"], "MACs targets only"),
    ],
)
def test_bad_allocations_exit_2_with_one_line(run_cli, tmp_path, overrides, says):
    code, out, err = run_cli("run", *overrides, f"results_dir={tmp_path}", "tracking=none")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "baselines").exists()
