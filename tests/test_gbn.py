import torch
import torch.nn as nn
from omegaconf import OmegaConf
from scipy.stats import spearmanr

from harness.core.surgery import ChannelPruner
from methods.base import PruneContext, Reporting, TrainingContext
from methods.gbn import GateDecorator, Gates
from tests.conftest import last_json
from tests.fixtures import make_cifar10, train_digits_net

VANILLA = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Sequential)


def _trained_digits_net(steps=60):
    return train_digits_net(steps)


def _gated(model):
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8), [model.fc], 0.1)
    return pruner, Gates(model, pruner.groups(model))


def test_gates_preserve_the_dense_function():
    model, x, _ = _trained_digits_net(steps=20)
    model.eval()
    dense = model(x[:32]).detach()
    _, gates = _gated(model)
    assert len(gates.phi) == 6 and len(gates.groups) == 4  # 6 BNs; residual adds couple two pairs
    assert sorted(gates.groups["block1.conv2"]) == ["block1.bn2", "stem.1"]
    assert all((model.get_submodule(n).weight == 1).all() for n in gates.phi)
    assert (model(x[:32]) - dense).abs().max() < 1e-4


def test_melted_model_is_vanilla_and_matches_the_gated_one():
    model, x, _ = _trained_digits_net(steps=20)
    pruner, gates = _gated(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for phi in gates.phi.values():
            phi.mul_(torch.rand_like(phi) + 0.5)
    for key in gates.groups:
        gates.masks[key][torch.randperm(len(gates.masks[key]))[: len(gates.masks[key]) // 3]] = 0
    model.eval()
    gated = model(x[:64]).detach()
    gates.melt()
    pruner.remove(model, gates.masked_channels())
    melted = model(x[:64])
    assert (melted - gated).abs().max().item() <= 1e-4
    assert all(isinstance(m, VANILLA) or type(m).__module__.startswith("tasks.models") for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model.block1.bn1.num_features == 16 - 16 // 3  # channels are physically gone


def test_taylor_score_ranks_channels_like_the_true_loss_increase():
    """Accumulated |dL/dphi * phi| (per mini-batch of 64, as a tick does) against the true loss increase
    from zeroing each channel group's gate, on a converged 16-wide digits net (train loss ~0.002).

    Measured with seed 0: Spearman rho = 0.905 over the 96 channels of the 4 groups; ranking by |phi| alone gives
    0.46. The threshold 0.8 sits between them: it fails a criterion no better than magnitude, with room
    for BLAS noise. (On half-trained nets both are weak, about 0.45 vs 0.3: most true loss changes are
    then near-zero noise, which is why the method accumulates over a whole pass.)"""
    model, x, y = _trained_digits_net(steps=200)
    _, gates = _gated(model)
    model.eval()  # fixed BN statistics: the score and the loss change see the same function
    loss_fn = nn.CrossEntropyLoss()
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    ctx = PruneContext(
        pruner=type("P", (), {"ignored_names": ["fc"]})(),
        target=0.0,
        device=torch.device("cpu"),
        training=TrainingContext(loader=batches, loss_fn=loss_fn, train=None),
        report=Reporting(quick_test_metric=None, log_step=None, log_metrics=None),
    )
    method = GateDecorator(OmegaConf.create({"tick_lr": 0.0, "tick_momentum": 0.0, "tick_samples": None}))
    model.train = lambda mode=True: model  # keep eval-mode BN during the tick pass
    taylor = method.tick(model, gates, ctx)  # per group: the sum over its BNs

    estimated, magnitude, true = [], [], []
    with torch.no_grad():
        base = loss_fn(model(x), y).item()
        for key, norms in gates.groups.items():
            for c in range(len(gates.masks[key])):
                gates.masks[key][c] = 0
                true.append(loss_fn(model(x), y).item() - base)
                gates.masks[key][c] = 1
                estimated.append(taylor[key][c].item())
                magnitude.append(sum(gates.phi[n][c].abs().item() for n in norms))
    rho = spearmanr(estimated, true).statistic
    rho_magnitude = spearmanr(magnitude, true).statistic
    print(f"Spearman rho vs true loss increase: Taylor {rho:.3f}, |phi| {rho_magnitude:.3f}, n={len(true)}")
    assert rho >= 0.8, rho
    assert rho > rho_magnitude + 0.2


def test_gbn_run_on_digits_logs_each_tick(run_cli, tiny_digits, tmp_path):
    code, out, err = run_cli(
        "run",
        *tiny_digits,
        "method=gbn",
        "prune.flops_reduction=0.3",
        "method.tick_p=0.05",
        "method.tock_every=2",
        "method.tock_epochs=1",
        "method.tick_samples=256",
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert 0.3 <= s["flops_reduction"] <= 0.33, s["flops_reduction"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    ticks = client.get_metric_history(s["mlflow_run_id"], "prune/macs")
    assert len(ticks) >= 3  # the dense point plus at least two ticks
    assert [m.value for m in sorted(ticks, key=lambda m: m.step)] == sorted((m.value for m in ticks), reverse=True)
    assert client.get_metric_history(s["mlflow_run_id"], "prune/channels/block1.conv1")
    assert client.get_metric_history(s["mlflow_run_id"], "tock/train_loss")


def test_paper_scale_gbn_config_runs_a_few_ticks_on_resnet56(run_cli, tmp_path):
    make_cifar10(tmp_path / "data", per_batch=10, n_test=20)
    code, out, err = run_cli(
        "run",
        "task=resnet56",
        "method=gbn",
        f"data.root={tmp_path / 'data'}",
        "data.check_integrity=false",
        "data.num_workers=0",
        "train.epochs=1",
        "finetune.epochs=1",
        "method.tock_epochs=1",
        "prune.flops_reduction=0.01",
        "measure.batch_sizes=[1]",
        "measure.repeats=1",
        "measure.max_seconds=0",
        "tracking=none",
        "quiet=true",
        f"results_dir={tmp_path / 'r'}",
        "--json",
    )
    assert code == 0, err
    s = last_json(out)
    assert 0.01 <= s["flops_reduction"] <= 0.02
    assert s["final_params"] < s["base_params"]


def test_gated_convs_melt_exactly_in_a_network_without_bn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    pruner = ChannelPruner(model, torch.randn(1, 3, 8, 8), [model[6]], 0.1)
    gates = Gates(model, pruner.groups(model))
    assert sorted(gates.phi) == ["0", "2"]  # gates on the convs' outputs
    with torch.no_grad():
        for phi in gates.phi.values():
            phi.uniform_(0.5, 1.5)
    for mask in gates.masks.values():
        mask[[1, 4]] = 0
    x = torch.randn(4, 3, 8, 8)
    gated = model(x).detach()
    gates.melt()
    pruner.remove(model, gates.masked_channels())
    assert model[0].out_channels == 6 and model[2].out_channels == 6
    assert (model(x) - gated).abs().max() <= 1e-5
