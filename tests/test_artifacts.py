import torch

from harness.artifacts import load_pruned, save_pruned
from harness.surgery import ChannelPruner
from methods.l1 import FilterL1Importance
from tasks.models import create_model


def test_pruned_model_reloads_with_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet8", 10)
    x = torch.randn(4, 3, 32, 32)
    model(x)  # move BN running stats off their defaults
    pruner = ChannelPruner(model, x[:1], [model.fc])
    pruner.prune_to_target(model, FilterL1Importance(), 0.5)
    model.eval()
    path = tmp_path / "pruned.pt"
    save_pruned(model, {"name": "resnet8", "num_classes": 10, "kwargs": {}}, path)
    torch.load(path, weights_only=True)  # no pickled code in the file
    reloaded = load_pruned(path)
    assert type(reloaded) is type(model)
    assert torch.equal(reloaded(x), model(x))
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in model.parameters())
