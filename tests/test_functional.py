"""Functionality-oriented pruning (a reconstruction): channels clustered by what they respond to."""

import copy

import pytest
import torch
import torch.nn as nn

from harness.config import compose
from harness.core.clusters import Dendrogram, cosine_distances
from methods import create_method
from tests.conftest import last_json
from tests.fixtures import prune_context


class CopyNet(nn.Module):
    """conv(1 -> 16) whose filters 8..15 are exact copies of filters 0..7, then the classifier."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Linear(16, 10)
        with torch.no_grad():
            self.conv.weight[8:] = self.conv.weight[:8]
            self.conv.bias[8:] = self.conv.bias[:8]

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.quick
def test_functional_keeps_one_channel_per_group_of_exact_copies():
    """Removing 8 of 16 channels: one of each identical pair stays. A random choice of 8 keeps one of
    each pair with probability 2^8 / C(16, 8) = 2%, so this fails for a selection that ignores function."""
    torch.manual_seed(0)
    model, x = CopyNet().eval(), torch.randn(64, 1, 8, 8)
    originals = model.conv.weight[:8].detach().clone()
    ctx = prune_context(model, 0.0, [(x, torch.zeros(64, dtype=torch.long))], x[:1])
    key = next(iter(ctx.pruner.groups(model)))
    half = ctx.pruner.remove(copy.deepcopy(model), [(key, i) for i in range(8, 16)])
    ctx.target = ctx.pruner.reduction(half)
    method = create_method(compose(["method=functional"]))
    pruned = method.prune(model, ctx)
    assert pruned.conv.out_channels == 8
    kept = pruned.conv.weight.detach()
    matches = [int(torch.nonzero((originals == w).flatten(1).all(1)).flatten()[0]) for w in kept]
    assert sorted(matches) == list(range(8))  # each original function once


@pytest.mark.quick
def test_cosine_distances_and_the_dendrogram_cut():
    rows = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    d = cosine_distances(rows)  # pairs in scipy's condensed order: (0,1), (0,2), (0,3), ...
    assert d[0] == pytest.approx(0.0) and d[1] == pytest.approx(1.0)
    assert d[-1] == 0.0 and d[2] == 1.0  # two dead channels are alike; a dead one is unlike a live one
    tree = Dendrogram(rows)
    assert len(set(tree.labels(0.5))) == 3 and len(set(tree.labels(1e-9))) == 3
    assert len(set(tree.labels(2.0))) == 1 and tree.heights == sorted(tree.heights)


@pytest.mark.parametrize("signature", ["response", "actmax"])
def test_functional_reaches_half_the_macs_on_digits(run_cli, tiny_digits, signature):
    extra = ["method.actmax_steps=10"] if signature == "actmax" else []
    short = [o for o in tiny_digits if not o.startswith(("train.epochs=", "finetune.epochs="))]
    code, out, err = run_cli(
        "run", *short, "train.epochs=3", "finetune.epochs=3", "method=functional", f"method.signature={signature}",
        *extra, "prune.flops_reduction=0.5", "--json",
    )  # fmt: skip
    assert code == 0, err
    s = last_json(out)
    assert 0.5 <= s["flops_reduction"] <= 0.53 and s["final_acc"] >= 0.9, s
    assert "pruned_acc" in s  # the accuracy without retraining, beside the final one
