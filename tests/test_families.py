"""CNN families from torchvision, timm and the registry: pruned to 30% fewer MACs with a forward pass,
or refused before any training with one line naming what is not supported (issue 15, item 5, in part).
DenseNet-121 prunes too (checked by hand: 35 s, too slow for the suite)."""
import pytest
import torch
import torch.nn as nn

from harness.surgery import ChannelPruner
from methods.l1 import FilterL1Importance
from tasks.models import create_model

SUPPORTED = ["tv:resnet18", "tv:mobilenet_v2", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
             "tv:mnasnet0_5", "timm:convnext_atto", "vgg16_cifar", "resnet20"]


@pytest.mark.parametrize("name", SUPPORTED)
def test_family_prunes_to_30_percent_and_runs(name):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    example = torch.randn(1, 3, 32, 32)
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    pruner = ChannelPruner(model, example, [last], 0.1)
    pruner.prune_to_target(model, FilterL1Importance(), 0.3)
    assert 0.3 <= pruner.reduction(model) < 0.36
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("model, message", [
    ("timm:regnetx_002", "layer s1.b1.conv2.conv is a grouped convolution (groups=3"),
    ("tv:resnext50_32x4d", "layer layer1.0.conv2 is a grouped convolution (groups=32"),
    ("timm:ghostnet_100", "GhostNet cannot be pruned by the channel surgery"),
    ("tv:shufflenet_v2_x0_5", "ShuffleNetV2 cannot be pruned by the channel surgery"),
])
def test_unsupported_family_exits_2_with_one_line_before_training(run_cli, tmp_path, model, message):
    code, out, err = run_cli("run", "task=resnet56", f"model={model}", "method=l1", "prune.flops_reduction=0.3",
                             f"data.root={tmp_path / 'no-data'}", f"results_dir={tmp_path}", "tracking=none")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
