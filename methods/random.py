"""Random channel selection: the control that every pruning comparison needs."""

from __future__ import annotations

import torch_pruning as tp

from methods.base import Method, register_method


@register_method
class RandomMethod(Method):
    name = "random"
    description = "Random channels, ranked globally (the control every comparison needs)"

    def importance(self):
        return tp.importance.RandomImportance()  # draws from torch's seeded global RNG


@register_method
class NoPruning(Method):
    """Trains and measures the shared baseline; prunes nothing."""

    name = "none"
    description = "No pruning; trains and measures the shared baseline only"
    prunes = False
    uses_allocation = False
    finetunes = False

    def prune(self, model, ctx):
        return model
