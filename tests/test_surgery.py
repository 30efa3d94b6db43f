import pytest
import torch

from harness.errors import ConfigError
from harness.surgery import ChannelPruner, channel_widths
from methods.l1 import FilterL1Importance
from tasks.models import create_model


def _pruner(model, shape, ratio=0.1):
    return ChannelPruner(model, torch.randn(1, *shape), [model.fc], ratio)


@pytest.mark.parametrize("name, shape, target", [("digits_resnet", (1, 8, 8), 0.5),
                                                 ("resnet8", (3, 32, 32), 0.5),
                                                 ("resnet8", (3, 32, 32), 0.7)])
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
