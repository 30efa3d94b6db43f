"""Network Slimming, the L1 paper presets and ANL."""

import pytest
import torch
import torch.nn as nn

from harness.config import compose
from harness.core.surgery import ChannelPruner, channel_widths
from methods import create_method
from methods.anl import AdversarialNoise, AnlSettings
from methods.base import PruneContext, Reporting, TrainingContext
from methods.slimming import BNSparsity
from tasks.models import create_model
from tests.conftest import last_json
from tests.fixtures import train_digits_net


def _train_digits(hooks, steps=80):
    return train_digits_net(steps, hooks)


def _gammas(model):
    return [m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_slimming_penalty_drives_bn_scales_toward_zero():
    plain = _gammas(_train_digits([])[0])
    sparse = _gammas(_train_digits([BNSparsity(1e-2)])[0])
    # Seen: mean |gamma| 1.1 without the penalty, 0.75 with it, after 80 steps from the same seed.
    assert torch.cat(sparse).mean() < 0.8 * torch.cat(plain).mean()
    assert all(s.mean() < p.mean() for s, p in zip(sparse, plain))  # in every BN layer


def _ctx(model, shape):
    pruner = ChannelPruner(model, torch.randn(1, *shape), [model.fc], 0.0)
    return PruneContext(
        pruner=pruner,
        target=0.0,
        device=torch.device("cpu"),
        training=TrainingContext(loader=None, loss_fn=None, train=None),
        report=Reporting(quick_test_metric=lambda m: 0.0, log_step=lambda *a: None, log_metrics=None),
    )


@pytest.mark.parametrize(
    "preset, ratios, skipped",
    [
        ("l1_resnet56_a", (0.1, 0.1, 0.1), {"layer1.7", "layer2.0", "layer3.0", "layer3.8"}),
        ("l1_resnet56_b", (0.6, 0.3, 0.1), {"layer1.7", "layer1.8", "layer2.0", "layer2.7", "layer3.0", "layer3.8"}),
    ],
)
def test_l1_presets_prune_the_exact_per_stage_fractions(preset, ratios, skipped):
    cfg = compose(["task=resnet56", f"method={preset}"])
    method = create_method(cfg)
    model = create_model("resnet56", 10)
    dense = channel_widths(model)
    method.prune(model, _ctx(model, (3, 32, 32)))
    widths = channel_widths(model)
    for stage, ratio in enumerate(ratios, start=1):
        for block in range(9):
            name = f"layer{stage}.{block}"
            expected = dense[f"{name}.conv1"] - (0 if name in skipped else round(ratio * dense[f"{name}.conv1"]))
            assert widths[f"{name}.conv1"] == expected, name
            assert widths[f"{name}.conv2"] == dense[f"{name}.conv2"]  # tied to the shortcut: untouched


def test_anl_changes_training_activations_but_not_eval_outputs():
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=8)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    model.train()
    anl = AdversarialNoise(AnlSettings(eps=0.5, prob=1.0)).attach(model)
    assert len(anl.targets(model)) == 6
    nn.functional.cross_entropy(model(x), y).backward()  # records the feature-map gradients
    assert len(anl.grads) == 6
    noisy = model(x).detach()
    anl_off = AdversarialNoise(AnlSettings(eps=0.5, prob=0.0)).attach(model)  # same net, noise never fires
    anl.detach()
    nn.functional.cross_entropy(model(x), y).backward()
    clean_train = model(x).detach()
    anl_off.detach()
    assert (noisy - clean_train).abs().max() > 1e-3  # training-time activations change
    model.eval()
    anl = AdversarialNoise(AnlSettings(eps=0.5, prob=1.0)).attach(model)
    nn.functional.cross_entropy(model.train()(x), y).backward()  # gradients recorded, as mid-training
    model.eval()
    with_noise_layers = model(x).detach()
    anl.detach()
    assert torch.equal(with_noise_layers, model(x))  # inert at eval
    assert not any(m._forward_hooks for m in model.modules())  # nothing left in an exported model


@pytest.mark.parametrize(
    "extra",
    [
        ["method=slimming", "method.sparse_epochs=1"],
        ["method=anl"],
        [
            "method=gbn",
            "regularizer=anl",
            "method.tick_p=0.1",
            "method.tock_every=0",
            "method.tock_first=false",
            "method.tick_samples=128",
        ],
    ],
)
def test_methods_run_end_to_end_with_json(run_cli, tiny_digits, tmp_path, extra):
    code, out, err = run_cli("run", *tiny_digits, "prune.flops_reduction=0.3", *extra, "--json")
    assert code == 0, err
    s = last_json(out)
    from mlflow.tracking import MlflowClient

    params = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}").get_run(s["mlflow_run_id"]).data.params
    if "method=anl" in extra:
        assert s["flops_reduction"] == 0 and params["regularizer.name"] == "anl"
        assert s["final_acc"] > 0.5
    else:
        assert 0.3 <= s["flops_reduction"] <= 0.34
        assert params["regularizer.name"] == ("anl" if "regularizer=anl" in extra else "none")
