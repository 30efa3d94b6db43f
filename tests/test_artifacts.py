import pytest
import torch

from harness.artifacts import load_pruned, save_pruned
from harness.core.surgery import ChannelPruner
from methods.l1 import FilterL1Importance
from tasks.models import create_model

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick


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


def test_bench_times_a_saved_pruned_model(tmp_path, run_cli):
    model = create_model("resnet8", 10)
    path = tmp_path / "pruned.pt"
    save_pruned(model, {"name": "resnet8", "num_classes": 10, "kwargs": {}, "input_shape": [3, 32, 32]}, path)
    code, out, err = run_cli("bench", f"model={path}", "batch=1,4", "backend=eager", "repeats=2", "warmup=1")
    assert code == 0, err
    assert "input (3, 32, 32)" in out and "| eager | 1 |" in out and "| eager | 4 |" in out
    code, _, err = run_cli("bench", f"model={tmp_path / 'missing.pt'}")
    assert code == 2 and "does not exist" in err
