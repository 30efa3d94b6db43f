"""Group Fisher pruning: the mask gradients, the coupled-group score, the cost normalisation, exact
removal and resuming (the run on digits: tests/test_distributed.py, under torchrun)."""

import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from harness.config import compose
from harness.core.costs import ChannelCosts
from harness.core.surgery import ChannelPruner, channel_widths
from methods import create_method
from methods.base import PruneContext, Reporting, TrainingContext
from methods.gfp import InputMasks
from tasks.digits import DigitsTask
from tasks.models import create_model


def _net(width=8):
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=width).double().eval()
    pruner = ChannelPruner(model, torch.randn(1, 1, 8, 8, dtype=torch.float64), [model.fc], 0.0)
    groups = pruner.groups(model)
    return model, pruner, groups


def _stream_key(groups):
    """The residual stream of block1: the group with the most consumers."""
    return max(groups, key=lambda k: len(groups[k].members))


@pytest.mark.quick
def test_per_sample_mask_gradient_is_the_derivative_of_that_samples_loss():
    model, _, groups = _net()
    masks = InputMasks(model, groups)
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 3, 5, 7])
    nn.functional.cross_entropy(model(x), y).backward()  # eval mode: each sample's loss is its own
    grads = masks.mask_gradients()
    eps = 1e-4
    for key in (_stream_key(groups), "block1.conv1"):
        for n in range(4):
            for c in (0, 5):
                losses = []
                for sign in (1, -1):
                    masks.masks[key][c] = 1 + sign * eps
                    with torch.no_grad():
                        losses.append(nn.functional.cross_entropy(model(x[n : n + 1]), y[n : n + 1]).item())
                masks.masks[key][c] = 1.0
                finite_difference = (losses[0] - losses[1]) / (2 * eps)
                # the batch loss is a mean: sample n's share of its gradient is 1/N
                assert 4 * grads[key][n, c].item() == pytest.approx(finite_difference, rel=1e-4, abs=1e-9)


@pytest.mark.quick
def test_a_coupled_group_squares_the_sum_over_its_consumers_not_each_consumer():
    model, _, groups = _net()
    masks = InputMasks(model, groups)
    key = _stream_key(groups)
    consumers = [name for name, entries in masks.reads.items() if any(k == key for k, _, _ in entries)]
    assert len(consumers) >= 2  # block1.conv1 and down.0 read the stream: one shared mask
    seen = {}

    def keep(name):
        def hook(module, args):
            args[0].retain_grad()
            seen[name] = args[0]

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(keep(n)) for n in consumers]
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.arange(6)
    nn.functional.cross_entropy(model(x), y).backward()
    per_layer = [_over_map(seen[n].grad * seen[n]) for n in consumers]  # [samples, channels] each
    masks.accumulate()
    for h in handles:
        h.remove()
    group_score = (sum(per_layer) ** 2).sum(0)
    sum_of_layer_scores = sum((g**2).sum(0) for g in per_layer)
    assert torch.allclose(masks.fisher[key], group_score, rtol=1e-9)
    assert not torch.allclose(group_score, sum_of_layer_scores, rtol=0.05)


def _over_map(t):
    return t.sum((2, 3)) if t.dim() == 4 else t  # a linear layer's input has no map


def _two_resolutions():
    """'wide' works on 8x8 maps, 'narrow' (stride 2) on 4x4: a channel of 'wide' costs more."""
    return nn.Sequential(
        OrderedDict(
            wide=nn.Conv2d(1, 4, 3, padding=1),
            act1=nn.ReLU(),
            narrow=nn.Conv2d(4, 4, 3, stride=2, padding=1),
            act2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(4, 10),
        )
    )


@pytest.mark.quick
def test_normalize_divides_by_what_a_channel_saves_and_reorders_tied_scores():
    model = _two_resolutions()
    example = torch.randn(1, 1, 8, 8)
    pruner = ChannelPruner(model, example, [model.fc], 0.0)
    costs = ChannelCosts(model, example, pruner.groups(model))
    assert costs.per_channel("memory") == {"wide": 64.0, "narrow": 16.0}
    # wide: its own 3x3 filter over 1 input at 8x8, plus one input channel of narrow (4 filters, 3x3, 4x4)
    assert costs.per_channel("macs") == {"wide": 9 * 64 + 9 * 16 * 4, "narrow": 9 * 16 * 4 + 10}
    assert costs.per_channel("macs", {"narrow": 2})["wide"] == 9 * 64 + 9 * 16 * 2  # live widths count
    tied = lambda group: torch.ones(len(group[0].idxs))  # noqa: E731
    firsts = {}
    for kind in ("none", "macs", "memory"):
        ranked = ChannelPruner(model, example, [model.fc], 0.0, normalize=kind).removal_order(model, tied)
        firsts[kind] = ranked[0][0]
    assert firsts == {"none": "narrow", "macs": "wide", "memory": "wide"}  # the expensive layer goes first


@pytest.mark.quick
def test_removing_the_masked_channels_leaves_the_masked_networks_output_unchanged():
    model, pruner, groups = _net(width=8)
    masks = InputMasks(model, groups)
    torch.manual_seed(1)
    for key, g in groups.items():
        drop = torch.randperm(g.channels)[: g.channels // 2]
        masks.masks[key][drop] = 0.0
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        masked = model(x)
    masks.detach()
    pruner.remove(model, masks.masked_channels())
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-10)
    assert all(w >= 4 for n, w in channel_widths(model).items() if n != "fc")


def _digits_ctx(model, target, saved, resume=None):
    x, y = DigitsTask(compose(["task=digits"])).datasets()[0].tensors
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    return PruneContext(
        pruner=ChannelPruner(model, x[:1], [model.fc], 0.1, normalize="memory"),
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(
            loader=loader,
            loss_fn=nn.CrossEntropyLoss(),
            train=None,
            finetune_recipe=OmegaConf.create({"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": False}),
        ),
        report=Reporting(quick_test_metric=lambda m: 0.0, log_step=lambda *a: None, log_metrics=lambda *a: None),
        quiet=True,
        save_state=lambda state: saved.append(copy.deepcopy(state)),
        resume_state=resume,
    )


def test_a_resumed_schedule_ends_where_an_uninterrupted_one_does():
    method = create_method(compose(["method=gfp", "method.interval=15", "method.channels_per_step=3"]))
    torch.manual_seed(0)
    start = create_model("digits_resnet", 10, width=8)
    saved = []
    whole = method.prune(_copy(start), _digits_ctx(_copy(start), 0.25, saved))
    assert len(saved) >= 2  # a checkpoint after every pass over the data that did not reach the target
    resumed = method.prune(_copy(start), _digits_ctx(_copy(start), 0.25, [], resume=saved[0]))
    assert channel_widths(resumed) == channel_widths(whole)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))


def _copy(model):
    return copy.deepcopy(model)


@pytest.mark.quick
@pytest.mark.parametrize(
    "override, expected",
    [
        ("method.interval=0", "method.interval"),
        ("method.channels_per_step=0", "method.channels_per_step"),
        ("prune.normalize=flops", "prune.normalize"),
    ],
)
def test_bad_gfp_values_exit_2_with_one_line(run_cli, tmp_path, override, expected):
    code, out, err = run_cli("run", "method=gfp", override, f"results_dir={tmp_path}", "tracking=none")
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "baselines").exists()  # refused before any training


@pytest.mark.quick
def test_a_nan_importance_skips_the_decision_with_a_warning(capsys):
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=8)
    ctx = _digits_ctx(model, 0.5, [])
    logged = []
    ctx.report.log_metrics = lambda m, step: logged.append((step, m))
    groups = ctx.pruner.groups(model)
    masks = InputMasks(model, groups)
    key = next(iter(groups))
    masks.fisher[key][0] = float("nan")
    method = create_method(compose(["method=gfp"]))
    floor = {k: g.min_keep for k, g in groups.items()}
    costs = ctx.pruner.channel_costs(model, groups)
    assert method.decide(model, masks, groups, floor, costs, ctx, 3, 0.1) == 0.1  # nothing masked
    assert masks.masked_channels() == [] and all(f.abs().sum() == 0 for f in masks.fisher.values())
    assert "NaN importance at decision 3" in capsys.readouterr().err
    assert logged == [(3, {"prune/nan_skipped": 1.0})]


@pytest.mark.quick
def test_no_layer_is_emptied_not_even_the_stem():
    torch.manual_seed(0)
    model = create_model("digits_resnet", 10, width=8)
    ctx = _digits_ctx(model, 0.99, [])
    ctx.pruner = ChannelPruner(model, ctx.pruner.example_inputs, [model.fc], 0.0)  # a minimum of 1 channel
    groups = ctx.pruner.groups(model)
    masks = InputMasks(model, groups)
    method = create_method(compose(["method=gfp", "method.channels_per_step=1000"]))
    floor = {k: g.min_keep for k, g in groups.items()}
    costs = ctx.pruner.channel_costs(model, groups)
    method.decide(model, masks, groups, floor, costs, ctx, 1, 0.0)  # all scores 0: as many as allowed go
    assert masks.live() == {k: 1 for k in groups}
    assert any("stem.0" in g.members for g in groups.values())  # the stem's group keeps one channel too
    with pytest.raises(RuntimeError, match="every group is at its minimum"):
        method.decide(model, masks, groups, floor, costs, ctx, 2, 0.9)
