"""CNN families from torchvision, timm and the registry: pruned to 30% fewer MACs with a forward pass,
or refused before any training with one line naming what is not supported. Grouped convolutions
(RegNet, ResNeXt) lose whole units and keep their group count. DenseNet-121 and torchvision's
ResNeXt-50 32x4d prune too (checked by hand: 35 s and 43 s, too slow for the suite)."""

import pytest
import torch
import torch.nn as nn

from harness.core.surgery import ChannelPruner
from methods.l1 import FilterL1Importance
from tasks.models import create_model

SUPPORTED = [
    "tv:resnet18",
    "tv:mobilenet_v2",
    "tv:mobilenet_v3_small",
    "tv:efficientnet_b0",
    "tv:mnasnet0_5",
    "timm:convnext_atto",
    "timm:ghostnet_100",
    "timm:regnetx_002",
    "timm:resnext26ts",
    "vgg16_cifar",
    "resnet20",
]


@pytest.mark.parametrize("name", SUPPORTED)
def test_family_prunes_to_30_percent_and_runs(name):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    grouped = {
        n: m.groups
        for n, m in model.named_modules()  # grouped convolutions, not depthwise ones
        if isinstance(m, nn.Conv2d) and m.groups > 1 and not m.groups == m.in_channels == m.out_channels
    }
    dense_out = {n: model.get_submodule(n).out_channels for n in grouped}
    example = torch.randn(1, 3, 32, 32)
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    pruner = ChannelPruner(model, example, [last], 0.1)
    pruner.prune_to_target(model, FilterL1Importance(), 0.3)
    assert 0.3 <= pruner.reduction(model) < 0.36
    for n, g in grouped.items():
        m = model.get_submodule(n)
        assert m.groups == g and m.in_channels % g == 0 and m.out_channels % g == 0
    assert not grouped or any(model.get_submodule(n).out_channels < c for n, c in dense_out.items())
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def _silence(model: nn.Module, group, roots: set[int]) -> None:
    """Make the outputs of ``group``'s channels at ``roots`` exactly zero: every conv's filter and bias and
    every BatchNorm's scale and shift on those channels set to 0 (ReLU, hard-swish and the SE gate's
    product keep a zero a zero)."""
    from harness.core.surgery import root_pairs

    with torch.no_grad():
        for item in group:
            layer, name = item.dep.target.module, getattr(item.dep.handler, "__name__", "")
            if name != "prune_out_channels" or not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
                continue
            idxs = [c for c, r in root_pairs(item) if r in roots]
            layer.weight[idxs] = 0
            if layer.bias is not None:
                layer.bias[idxs] = 0


@pytest.mark.parametrize("name", ["timm:ghostnet_100", "tv:shufflenet_v2_x0_5", "tv:mobilenet_v2", "tv:resnet18"])
def test_removing_channels_whose_outputs_are_zero_leaves_the_output_unchanged(name):
    """A check that shapes alone cannot pass: channels silenced in the dense network (their outputs exactly
    0) are then removed; if the surgery cut any other channel, or a concatenation's partner channel
    (GhostNet's primary/cheap pairs) went out of step, the logits would move."""
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    for m in model.modules():  # non-trivial statistics, so that a wrongly kept shift would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0), m.bias.data.uniform_(-0.5, 0.5)
    example = torch.randn(1, 3, 32, 32)
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    pruner = ChannelPruner(model, example, [last], 0.1)
    chosen = []
    for key, g in list(pruner.groups(model).items())[::3]:  # every third group: a third of its units
        units = g.units or [(c,) for c in range(g.channels)]
        picked = [c for unit in units[1::3] for c in unit]
        if g.channels - len(picked) >= g.min_keep:
            _silence(model, g.group, set(picked))
            chosen += [(key, c) for c in picked]
    assert chosen
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    pruner.remove(model, chosen)
    with torch.no_grad():
        after = model(x)
    assert pruner.reduction(model) > 0.05
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_shufflenet_keeps_torchvisions_function_with_its_shuffle_as_a_layer():
    import torchvision

    from tasks.models.shufflenet import ChannelShuffle

    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    model = create_model("tv:shufflenet_v2_x0_5", 10).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert sum(isinstance(m, ChannelShuffle) for m in model.modules()) == 16  # one per block
    pruner = ChannelPruner(model, torch.randn(1, 3, 32, 32), [model.fc], 0.1)
    kept_whole = {"stage2.0.branch2.5", "stage3.3.branch2.5", "stage4.0.branch1.2"}  # they feed a shuffle
    assert not kept_whole & set(pruner.groups(model))


class _UnmarkedShuffle(nn.Module):
    """A channel shuffle written inline, as a user's model would have it."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.fc(self.head(x).mean((2, 3)))


def test_an_unmarked_channel_shuffle_exits_2_with_one_line_naming_the_fix(run_cli, tmp_path, monkeypatch):
    from tasks import models

    monkeypatch.setitem(models._REGISTRY, "unmarked_shuffle", _UnmarkedShuffle)
    code, out, err = run_cli(
        "run",
        "task=resnet56",
        "model=unmarked_shuffle",
        "method=l1",
        "prune.flops_reduction=0.3",
        f"data.root={tmp_path / 'no-data'}",
        f"results_dir={tmp_path}",
        "tracking=none",
    )
    assert code == 2 and "_UnmarkedShuffle cannot be pruned by the channel surgery" in err, err
    assert "channel shuffle" in err and "fixed_channels" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _family_matrix():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "family_matrix", Path(__file__).parents[1] / "scripts" / "family_matrix.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "family, method, outcome, needle",
    [
        ("timm:convnext_atto", "slimming", "refused (exit 2)", "BatchNorm"),  # LayerNorm: no BN scale to score
        ("timm:regnetx_002", "scop", "pruned", ""),  # grouped convolutions, SCOP's uniform rate
        ("timm:ghostnet_100", "gbn", "pruned", ""),  # gates on concatenated primary/cheap pairs, ticks in units
        ("tv:shufflenet_v2_x0_5", "gbn", "pruned", ""),  # gates only where no shuffle is reached
        ("timm:ghostnet_100", "metapruning", "refused (exit 2)", "primary/cheap pairs"),  # first-k channels
    ],
)
def test_family_method_matrix_cells(family, method, outcome, needle):
    """A few cells of scripts/family_matrix.py (results/family_matrix.md has them all): a method's own
    criterion and schedule on a family's structure, pruned to 30% with a forward pass, or one line."""
    fewer_ticks = ("method.tick_p=0.15",) if method == "gbn" else ()  # 2-3 ticks, not 7: half the time
    cell = _family_matrix().one(family, method, overrides=fewer_ticks)
    assert cell["outcome"] == outcome, cell
    if outcome.startswith("refused"):
        assert needle in cell["detail"] and "\n" not in cell["detail"]
