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


@pytest.mark.parametrize(
    "model, message",
    [
        ("timm:ghostnet_100", "GhostNet cannot be pruned by the channel surgery"),
        ("tv:shufflenet_v2_x0_5", "ShuffleNetV2 cannot be pruned by the channel surgery"),
    ],
)
def test_unsupported_family_exits_2_with_one_line_before_training(run_cli, tmp_path, model, message):
    code, out, err = run_cli(
        "run",
        "task=resnet56",
        f"model={model}",
        "method=l1",
        "prune.flops_reduction=0.3",
        f"data.root={tmp_path / 'no-data'}",
        f"results_dir={tmp_path}",
        "tracking=none",
    )
    assert code == 2 and message in err, err
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
    "family, method, outcome",
    [
        ("timm:convnext_atto", "slimming", "refused (exit 2)"),  # LayerNorm: no BatchNorm scale to score
        ("timm:regnetx_002", "scop", "pruned"),  # grouped convolutions, SCOP's uniform rate
    ],
)
def test_family_method_matrix_cells(family, method, outcome):
    """A few cells of scripts/family_matrix.py (results/family_matrix.md has all 80): a method's own
    criterion and schedule on a family's structure, pruned to 30% with a forward pass, or one line."""
    cell = _family_matrix().one(family, method)
    assert cell["outcome"] == outcome, cell
    if outcome.startswith("refused"):
        assert "BatchNorm" in cell["detail"] and "\n" not in cell["detail"]
