import pytest
import torch

from harness.core.surgery import count_macs_params
from tasks.models import create_model

pytestmark = pytest.mark.quick  # the inner loop: pytest -m quick


def test_resnet56_size_matches_the_papers():
    model = create_model("resnet56", 10)
    macs, params = count_macs_params(model, torch.randn(1, 3, 32, 32))
    # Gate Decorator code: 127.9 M "FLOPs" by thop (which counts MACs, incl. BN/ReLU), 0.856 M params.
    assert abs(params - 0.856e6) < 0.002e6, params
    assert abs(macs - 126.8e6) < 0.1e6, macs  # torch-pruning's count (conv + linear + BN)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 55 + 2  # 1 stem + 54 in 27 blocks + 2 option-B shortcuts


def test_library_models_build_offline():
    assert create_model("tv:resnet18", 7)(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert create_model("timm:resnet10t", 5)(torch.randn(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.quick
@pytest.mark.parametrize(
    "name, expect",
    [
        ("timm:resnet18x", "unknown timm model 'resnet18x'; did you mean 'resnet18'"),
        ("tv:resnet_18", "unknown torchvision model 'resnet_18'; did you mean"),
        ("resnet_56", "unknown model 'resnet_56'; did you mean 'resnet56'"),
    ],
)
def test_an_unknown_model_is_one_line_exit_2_with_the_closest_names(run_cli, tmp_path, name, expect):
    code, out, err = run_cli("run", "task=digits", f"model={name}", "quiet=true", f"results_dir={tmp_path}")
    assert code == 2 and expect in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was recorded
