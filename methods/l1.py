"""L1-norm filter pruning (Li et al., ICLR'17), global variant."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch_pruning as tp

from harness.core.settings import setting
from methods.base import Method, register_method

_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


class FilterL1Importance(tp.importance.Importance):
    """Sum of the L1 norms of each channel's output filters over the group's coupled layers,
    divided by the group mean so that layers of different fan-in can be ranked together."""

    @torch.no_grad()
    def __call__(self, group):
        score = None
        for item in group:
            dep, idxs = item.dep, item.idxs
            if dep.handler not in _OUT_FNS:
                continue
            norms = dep.target.module.weight.detach()[idxs].flatten(1).abs().sum(1)
            root = torch.tensor(item.root_idxs, device=norms.device)
            score = torch.zeros(len(group[0].idxs), device=norms.device) if score is None else score
            score.scatter_add_(0, root, norms)
        return None if score is None else score / score.mean().clamp_min(1e-12)


@register_method
class L1Method(Method):
    name = "l1"
    description = "L1-norm filter pruning (Li et al., ICLR'17), global ranking of per-group-normalised filter norms"

    def importance(self):
        return FilterL1Importance()


@dataclass
class L1LayerwiseSettings:
    layer_ratios: list = setting(
        [], "list", help="[{pattern: <regex on group root names>, ratio: <share of its filters to remove>}, ...]"
    )
    skip: list = setting([], "list", help="layer names left whole (sensitive layers)")


@register_method
class L1LayerwiseMethod(L1Method):
    """Li et al.'s layer-wise variant: each matching layer loses a fixed fraction of its filters.

    ``method.layer_ratios`` maps regular expressions over a channel group's root layer name to a
    fraction (the first match wins); ``method.skip`` names layers left whole. The fractions, not
    ``prune.flops_reduction``, decide how much goes: the achieved reduction is what gets reported.
    """

    name = "l1_layerwise"
    description = (
        "Li et al.'s layer-wise L1 pruning: a fixed share of each matching layer's filters (presets l1_resnet56_a/b)"
    )
    settings = L1LayerwiseSettings
    presets_only = True  # no useful default: the presets l1_resnet56_a and l1_resnet56_b set the ratios
    uses_allocation = False  # the ratios decide the widths
    uses_normalize = False

    def prune(self, model, ctx):
        rules = [(re.compile(r["pattern"]), float(r["ratio"])) for r in self.settings.layer_ratios]
        skip = set(self.settings.skip)
        importance = self.importance()
        plan = []
        for key, group in ctx.pruner.groups(model).items():
            ratio = next((r for pattern, r in rules if pattern.fullmatch(key)), 0.0)
            if key in skip or not ratio:
                continue
            n = min(round(ratio * group.channels), group.channels - group.min_keep)
            order = torch.argsort(importance(group.group), stable=True)[:n]
            plan += [(key, int(i)) for i in order]
        ctx.pruner.remove(model, plan)
        ctx.report.step(1, ctx.pruner.cost_metrics(ctx.pruner.reduction(model)), model)
        return model
