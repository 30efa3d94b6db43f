"""Random channel selection: the control that every pruning comparison needs."""
from __future__ import annotations

import torch_pruning as tp

from methods.base import Method


class RandomMethod(Method):
    name = "random"

    def importance(self):
        return tp.importance.RandomImportance()  # draws from torch's seeded global RNG


class NoPruning(Method):
    """Trains and measures the shared baseline; prunes nothing."""
    name = "none"
    prunes = False
    finetunes = False

    def prune(self, model, ctx):
        return model
