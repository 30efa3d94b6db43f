import pytest
import torch

from harness.core.errors import ConfigError
from harness.core.surgery import ChannelPruner, channel_widths
from methods.l1 import FilterL1Importance
from tasks.models import create_model

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick


def _pruner(model, shape, ratio=0.1):
    return ChannelPruner(model, torch.randn(1, *shape), [model.fc], ratio)


@pytest.mark.parametrize(
    "name, shape, target",
    [("digits_resnet", (1, 8, 8), 0.5), ("resnet8", (3, 32, 32), 0.5), ("resnet8", (3, 32, 32), 0.7)],
)
def test_prunes_a_residual_model_to_the_target(name, shape, target):
    torch.manual_seed(0)
    model = create_model(name, 10)
    pruner = _pruner(model, shape)
    pruner.prune_to_target(model, FilterL1Importance(), target)
    reduction = pruner.reduction(model)
    # Stated tolerance: at or above the target, overshooting by at most a few channels' MACs.
    assert target <= reduction <= target + 0.03, reduction
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert not any("mask" in n for n, _ in model.named_buffers())  # physically smaller, no masks


def test_residual_coupled_channels_are_removed_together():
    model = create_model("digits_resnet", 10)
    pruner = _pruner(model, (1, 8, 8))
    groups = pruner.groups(model)
    coupled = groups["block1.conv2"].members
    assert set(coupled) == {"stem.0", "block1.conv2"}  # found by the dependency graph, not a list
    pruner.prune_to_target(model, FilterL1Importance(), 0.5)
    w = channel_widths(model)
    assert w["stem.0"] == w["block1.conv2"] == model.block1.bn2.num_features
    assert w["down.0"] == w["block2.conv2"]


def test_every_layer_keeps_its_minimum():
    model = create_model("digits_resnet", 10)
    dense = channel_widths(model)
    pruner = _pruner(model, (1, 8, 8), ratio=0.25)
    pruner.prune_to_target(model, FilterL1Importance(), pruner.max_reduction(model) - 1e-6)
    for name, width in channel_widths(model).items():
        if name != "fc":
            assert width >= max(1, int(0.25 * dense[name])), name
    assert channel_widths(model)["fc"] == 10


def test_unreachable_target_names_the_fix():
    model = create_model("digits_resnet", 10)
    pruner = _pruner(model, (1, 8, 8), ratio=0.5)
    with pytest.raises(ConfigError, match="unreachable.*min_channels_ratio"):
        pruner.prune_to_target(model, FilterL1Importance(), 0.9)


def test_l1_removes_the_smallest_filters_first():
    model = create_model("digits_resnet", 10)
    with torch.no_grad():
        model.block1.conv1.weight[[3, 7]] *= 1e-3  # two obviously useless filters
    pruner = _pruner(model, (1, 8, 8))
    order = pruner.removal_order(model, FilterL1Importance())
    assert set(order[:2]) == {("block1.conv1", 3), ("block1.conv1", 7)}


def test_round_to_keeps_widths_multiples_of_it():
    model = create_model("resnet8", 10)
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32), [model.fc], 0.1, round_to=8)
    pruner.prune_to_target(model, FilterL1Importance(), 0.5)
    assert pruner.reduction(model) >= 0.5
    widths = {k: v for k, v in channel_widths(model).items() if k != "fc"}
    assert all(w % 8 == 0 for w in widths.values()), widths


class _GroupedNet(torch.nn.Module):
    """conv 8->12, BN, ReLU, grouped conv 12->12 in 3 groups of 4, BN, ReLU, conv 12->4."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.conv2, self.bn2 = nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.conv3(torch.relu(self.bn2(self.conv2(x))))


@pytest.mark.parametrize("root, bn", [("conv1", "bn1"), ("conv2", "bn2")])
def test_a_grouped_convolution_loses_whole_units_and_computes_the_zeroed_network(root, bn):
    torch.manual_seed(0)
    model = _GroupedNet().eval()
    for m in (model.bn1, model.bn2):  # non-trivial BN statistics
        m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    pruner = ChannelPruner(model, torch.randn(1, 8, 6, 6), [model.conv3], 0.1)
    group = pruner.groups(model)[root]
    assert group.units == [(0, 4, 8), (1, 5, 9), (2, 6, 10), (3, 7, 11)]  # position p of each group of 4
    assert group.min_keep == 3  # at least one whole unit stays
    # Asking for one channel removes its whole unit; zeroing that unit's BN output is the same network.
    reference = __import__("copy").deepcopy(model)
    with torch.no_grad():
        for c in (1, 5, 9):
            getattr(reference, bn).weight[c] = 0.0
            getattr(reference, bn).bias[c] = 0.0
    pruner.remove(model, [(root, 5)])
    expected = (9, 12) if root == "conv1" else (12, 9)  # the grouped conv's (in, out) channels
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.groups) == (*expected, 3)
    x = torch.randn(4, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_grouped_convolutions_rank_units_by_their_mean_and_reach_the_target():
    torch.manual_seed(0)
    model = _GroupedNet().eval()
    pruner = ChannelPruner(model, torch.randn(1, 8, 6, 6), [model.conv3], 0.1)
    order = pruner.removal_order(model, FilterL1Importance())
    for key in ("conv1", "conv2"):  # each group's channels come unit by unit, and at least one unit is left
        picked = [i for k, i in order if k == key]
        assert len(picked) == 9 and all(
            sorted(picked[j : j + 3]) in ([0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]) for j in range(0, 9, 3)
        )
    pruner.prune_to_target(model, FilterL1Importance(), 0.4)
    assert pruner.reduction(model) >= 0.4
    assert model.conv2.in_channels % 3 == 0 and model.conv2.out_channels % 3 == 0 and model.conv2.groups == 3
    with torch.no_grad():
        assert model(torch.randn(2, 8, 6, 6)).shape == (2, 4, 6, 6)
