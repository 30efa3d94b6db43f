"""L1-norm filter pruning (Li et al., ICLR'17), global variant."""
from __future__ import annotations

import torch
import torch_pruning as tp

from methods.base import Method

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


class L1Method(Method):
    name = "l1"

    def importance(self):
        return FilterL1Importance()
