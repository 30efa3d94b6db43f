"""GA channel pruning (a reconstruction): the reconstruction error as a quadratic form, the GA, the allocation."""

import copy
import itertools

import pytest
import torch
import torch.nn as nn

from harness.core.surgery import ChannelPruner, channel_widths
from methods.ga import (
    consumer_inputs,
    contribution_gram,
    errors,
    genetic_search,
    greedy_sequence,
    repaired,
)
from tests.conftest import last_json
from tests.fixtures import prune_context


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


@pytest.mark.quick
@pytest.mark.parametrize("root, consumer", [("conv1", "conv2"), ("conv2", "fc")])
def test_the_gram_matrix_gives_each_removal_its_exact_output_error(root, consumer):
    """rᵀGr equals the consumer's mean squared output change when the channels r are zeroed at its input,
    for a convolution and for a linear layer reading a flattened map (16 input features per channel)."""
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(8, 3, 8, 8)
    pruner = ChannelPruner(model, x[:1], [model.fc])
    group = pruner.groups(model)[root]
    consumers = consumer_inputs(group)
    assert [m for m, _, _ in consumers] == [model.get_submodule(consumer)]
    ctx = prune_context(model, 0.5, [(x, torch.zeros(8, dtype=torch.long))], x[:1])
    gram = contribution_gram(model, consumers, ctx, 8, 0, group.channels, torch.Generator())
    seen = {}
    hook = model.get_submodule(consumer).register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    layer, inputs = model.get_submodule(consumer), seen["in"]
    removed = torch.tensor([0, 2, 5])
    zeroed = inputs.clone()
    if consumer == "fc":
        zeroed.view(8, 6, 16)[:, removed] = 0
    else:
        zeroed[:, removed] = 0
    with torch.no_grad():
        mse = (layer(inputs) - layer(zeroed)).pow(2).mean()
    keep = torch.ones(1, group.channels, dtype=torch.bool)
    keep[0, removed] = False
    assert float(errors(gram, keep)[0]) == pytest.approx(float(mse), rel=1e-4)


@pytest.mark.quick
def test_the_ga_finds_the_removal_whose_contributions_cancel():
    """12 channels whose contributions Z are random, but channels 0-3 cancel pairwise (Z_1 = -Z_0, Z_3 =
    -Z_2) and are the largest: removing those four costs nothing, while the four smallest (a magnitude
    choice) do not. The GA finds the exact optimum that a brute force over all 495 choices finds."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(12, 50, generator=g, dtype=torch.float64)
    z[0], z[2] = 3 * z[0], 3 * z[2]
    z[1], z[3] = -z[0], -z[2]
    gram = z @ z.T
    result, history = genetic_search(
        gram,
        8,
        population=32,
        generations=30,
        tournament=3,
        mutation=1 / 12,
        generator=torch.Generator().manual_seed(0),
    )
    best = result[0]
    assert best.sum() == 8 and (~best).nonzero().flatten().tolist() == [0, 1, 2, 3]
    every = torch.ones(495, 12, dtype=torch.bool)
    for row, gone in enumerate(itertools.combinations(range(12), 4)):
        every[row, list(gone)] = False
    assert float(errors(gram, best[None])[0]) == pytest.approx(float(errors(gram, every).min()), abs=1e-9)
    assert history == sorted(history, reverse=True) and history[-1] < history[0]
    smallest = torch.ones(12, dtype=torch.bool)
    smallest[z.norm(dim=1).argsort()[:4]] = False
    assert float(errors(gram, smallest[None])[0]) > 1.0


@pytest.mark.quick
def test_repair_keeps_exactly_the_count_and_prefers_what_was_kept():
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    out = repaired(keep, 2, torch.Generator().manual_seed(0))
    assert out.sum(1).tolist() == [2, 2, 2]
    assert (out & ~keep)[0].sum() == 0 and out[1, 0] and out[2].tolist() == keep[2].tolist()


@pytest.mark.quick
def test_the_allocation_takes_the_cheapest_loss_per_cost_first():
    """Group a loses little per cost saved until its last step; b is dearer throughout. Noise (a's rise
    falling at 4 channels) is flattened first."""
    options = {
        "a": [(2, 0.01, 0.10), (4, 0.005, 0.20), (6, 1.00, 0.30)],
        "b": [(3, 0.10, 0.10), (6, 0.30, 0.20)],
    }
    assert greedy_sequence(options) == ["a"] * 2 + ["a"] * 2 + ["b"] * 3 + ["b"] * 3 + ["a"] * 2


def test_ga_prunes_digits_to_the_target_with_its_search_logged(run_cli, tiny_digits, tmp_path):
    code, out, err = run_cli(
        "run", *tiny_digits, "method=ga", "method.generations=5", "method.kd_epochs=0.5",
        "method.sensitivity_samples=128", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = last_json(out)
    assert 0.5 <= s["flops_reduction"] < 0.53 and s["prune_epochs"] >= 0.5 and s["final_acc"] >= 0.9, s
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}").get_run(s["mlflow_run_id"])
    assert run.data.tags["reconstruction"] == "true"
    metrics = run.data.metrics
    searched = [k.split("/")[1] for k in metrics if k.startswith("ga/") and k.endswith("/rel_error")]
    removed = [k.split("/")[2] for k in metrics if k.startswith("ga/removed/")]
    assert searched and sorted(searched) == sorted(removed)
    for key in searched:  # each group's search ends no worse than it started, on the same (coarse) errors
        assert metrics[f"ga/{key}/fitness_last"] <= metrics[f"ga/{key}/fitness_first"]
    assert any(k.startswith("ga/sensitivity/") for k in metrics)


def test_ga_without_a_validation_split_is_refused_before_training(run_cli, tiny_digits):
    code, _, err = run_cli("run", *tiny_digits, "method=ga", "data.val_fraction=0")
    assert code == 2 and "needs a validation split" in err and "Traceback" not in err


class Informative(nn.Module):
    """conv1's channels 0-1 never fire (a large negative bias under the ReLU) and channels 2-3 are read by
    nothing (conv2's weights on them are zero), yet all four have the largest filters; channels 4-7 carry
    the signal with the smallest filters."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)
        with torch.no_grad():
            self.conv1.weight[:4] *= 10
            self.conv1.bias[:2] = -1e3
            self.conv2.weight[:, 2:4] = 0

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.quick
def test_the_ga_removes_the_channels_that_contribute_nothing_whatever_their_norms():
    """Removing 4 of conv1's 8 channels: the GA removes the dead and the unread ones. Magnitude (L1) would
    remove exactly the other four, and a random choice hits these four with probability 1/70."""
    from harness.config import compose
    from methods import create_method

    torch.manual_seed(0)
    model, x = Informative().eval(), torch.randn(64, 3, 8, 8)
    ctx = prune_context(model, 0.5, [(x, torch.zeros(64, dtype=torch.long))], x[:1])
    method = create_method(compose(["method=ga", "method.samples=32"]))
    group = ctx.pruner.groups(model)["conv1"]
    lowest_l1 = torch.argsort(model.conv1.weight.abs().flatten(1).sum(1))
    removed, metrics, history = method.select(model, group, 4, lowest_l1.tolist(), ctx, torch.Generator())
    assert sorted(removed) == [0, 1, 2, 3] and sorted(lowest_l1[:4].tolist()) == [4, 5, 6, 7]
    assert metrics["rel_error"] == pytest.approx(0.0, abs=1e-9) and metrics["rel_error_l1"] > 0.1
    assert len(history) == 31


def test_a_resumed_ga_ends_where_an_uninterrupted_one_does():
    from torch.utils.data import DataLoader, TensorDataset

    from harness.config import compose
    from methods import create_method
    from tasks.digits import DigitsTask
    from tasks.models import create_model

    x, y = DigitsTask(compose(["task=digits"])).datasets()[0].tensors

    def ctx(model, saved, resume=None):
        loader = DataLoader(
            TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        return prune_context(
            model, 0.4, loader, x[:1], val_loader=[(x[:128], y[:128])], resume_state=resume,
            save_state=lambda state: saved.append(copy.deepcopy(state)),
        )  # fmt: skip

    method = create_method(compose(["method=ga", "method.generations=3", "method.kd_epochs=0.3"]))
    torch.manual_seed(0)
    start = create_model("digits_resnet", 10, width=8)
    saved = []
    torch.manual_seed(1)
    whole = method.prune(copy.deepcopy(start), ctx(copy.deepcopy(start), saved))
    assert len(saved) >= 2  # a checkpoint after every group
    torch.manual_seed(2)  # the checkpoint's RNG state, not this, decides what follows
    resumed = method.prune(copy.deepcopy(start), ctx(copy.deepcopy(start), [], resume=saved[0]))
    assert channel_widths(resumed) == channel_widths(whole)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
