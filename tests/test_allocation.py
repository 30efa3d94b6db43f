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
from tests.conftest import last_json
from tests.fixtures import ToyLatency


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
        (["method=scop", "prune.allocation=knapsack"], "chooses its own widths"),
        (["prune.normalize=latency"], "prune.normalize=latency divides by the latency table"),
        (["method=scop", "prune.normalize=macs"], "prune.normalize=macs would be ignored"),
    ],
)
def test_bad_allocations_exit_2_with_one_line(run_cli, tmp_path, overrides, says):
    code, out, err = run_cli("run", *overrides, f"results_dir={tmp_path}", "tracking=none")
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "baselines").exists()


def test_knapsack_and_normalize_work_on_a_latency_cost():
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=16)
    x = torch.randn(1, 1, 8, 8)
    widths = {}
    for allocation, normalize in (("global", "none"), ("knapsack", "none"), ("global", "latency")):
        pruner = ChannelPruner(model, x, [model.fc], 0.1, allocation=allocation, normalize=normalize)
        pruner.use_cost(ToyLatency(), model)
        pruned = pruner.prune_to_target(copy.deepcopy(model), FilterL1Importance(), 0.3)
        assert 0.3 <= pruner.reduction(pruned) <= 0.33, (allocation, normalize)
        widths[allocation, normalize] = channel_widths(pruned)
    # both cost-aware choices differ from the plain ranking (here they agree with each other)
    assert widths["knapsack", "none"] != widths["global", "none"] != widths["global", "latency"]


def test_latency_saved_per_channel_is_the_tables_difference():
    from harness.core.costs import ChannelCosts

    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=16)
    x = torch.randn(1, 1, 8, 8)
    pruner = ChannelPruner(model, x, [model.fc], 0.1)
    groups = pruner.groups(model)
    toy = ToyLatency()
    costs = ChannelCosts(model, x, groups, toy.layer_ms(model, x))
    saved = costs.per_channel("latency")
    for key, g in groups.items():  # removing one channel from the real network saves exactly that much
        smaller = pruner.remove(copy.deepcopy(model), [(key, 0)])
        assert toy(model, x) - toy(smaller, x) == pytest.approx(saved[key], rel=1e-9), key
    with pytest.raises(ValueError, match="latency table"):
        ChannelCosts(model, x, groups).per_channel("latency")


def test_gate_decorator_takes_both_cost_aware_options(run_cli, tiny_digits):
    """gbn divides each tick's Taylor scores by what a channel's removal saves (normalize), or allocates each
    tick's cut by the knapsack: the same seed and schedule reach the MACs cut with other widths."""
    gbn = ["method=gbn", "method.tick_p=0.1", "method.tock_every=0", "method.tock_first=false"]
    gbn += ["method.tick_samples=256", "--json"]
    widths = {}
    for arm in ("prune.normalize=none", "prune.normalize=macs", "prune.allocation=knapsack"):
        code, out, err = run_cli("run", *tiny_digits, *gbn, "prune.flops_reduction=0.4", arm)
        assert code == 0, err
        s = last_json(out)
        assert 0.4 <= s["flops_reduction"] <= 0.44
        widths[arm] = s["channels"]
    assert widths["prune.normalize=none"] != widths["prune.normalize=macs"]
    assert widths["prune.normalize=none"] != widths["prune.allocation=knapsack"]


@pytest.mark.quick
def test_a_knapsack_step_keeps_at_least_the_score_of_the_global_step_at_no_more_cost():
    """Under the same additive cost model, the knapsack's cut of one tick keeps at least the score the
    global ranking's cut keeps, and costs no more (it is optimal; the global choice is one candidate)."""
    from harness.core.allocation import knapsack_step, rank_channels

    torch.manual_seed(0)
    model = create_model("resnet20", 10).eval()
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32), [model.fc])
    groups = pruner.groups(model)
    costs = pruner.channel_costs(model, groups)
    scores = {k: torch.rand(g.channels, dtype=torch.float64) for k, g in groups.items()}
    floor = {k: g.min_keep for k, g in groups.items()}
    live = {k: g.channels for k, g in groups.items()}
    order = rank_channels(scores, {k: live[k] - floor[k] for k in live})
    step = order[:120]
    chosen = knapsack_step(scores, floor, step, costs, "macs")

    def kept(cut):
        removed = {k: sum(1 for g, _ in cut if g == k) for k in scores}
        score = sum(float(s.sum()) for s in scores.values()) - sum(float(scores[k][i]) for k, i in cut)
        cost = sum(costs.group_cost("macs", k, live[k] - removed[k], live) for k in scores)
        return score, cost

    (knap_score, knap_cost), (global_score, global_cost) = kept(chosen), kept(step)
    assert knap_cost <= global_cost * (1 + 1e-9) and knap_score >= global_score - 1e-9
    assert set(chosen) != set(step)  # on random scores the global greedy cut is not the optimum
