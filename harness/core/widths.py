"""Width vectors: one width per channel group (a residual stream is one group, each block's internal
width another), the pruned network a vector builds, and its cost. The search space that ACP's particle
swarm and MetaPruning's evolution both search, so that the two can be compared candidate for candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn as nn

from harness.core.errors import ConfigError
from harness.core.surgery import ChannelGroup, ChannelPruner, Importance


class WidthSpace:
    """Width vectors over the model's channel groups: bounds, the built network and its reduction.

    ``importance`` chooses which channels a width keeps (its most important ones, e.g. ACP's largest-L1
    filters); without it a width keeps the group's *first* channels (MetaPruning's rule)."""

    def __init__(
        self,
        model: nn.Module,
        pruner: ChannelPruner,
        importance: Importance | None = None,
        groups: dict[str, ChannelGroup] | None = None,
    ):
        self.model, self.pruner = model, pruner
        groups = groups if groups is not None else pruner.groups(model)
        self.keys = list(groups)
        self.low = [groups[k].min_keep for k in self.keys]
        self.high = [groups[k].channels for k in self.keys]
        if importance is not None:
            self.order = {k: torch.argsort(importance(groups[k].group).cpu(), stable=True).tolist() for k in self.keys}
        else:  # drop the last channels first
            self.order = {k: list(range(groups[k].channels - 1, -1, -1)) for k in self.keys}
        self._reduction: dict[tuple[int, ...], float] = {}

    def clip(self, widths: Iterable[float]) -> tuple[int, ...]:
        return tuple(int(min(max(round(w), lo), hi)) for w, lo, hi in zip(widths, self.low, self.high))

    def build(self, widths: tuple[int, ...]) -> nn.Module:
        """The model with each group cut to its width (its most important channels, or its first ones)."""
        plan = [(k, i) for k, w, hi in zip(self.keys, widths, self.high) for i in self.order[k][: hi - w]]
        return self.pruner.remove(copy.deepcopy(self.model), plan)

    def reduction(self, widths: tuple[int, ...]) -> float:
        """1 - cost(built) / cost(dense) under the pruner's cost (MACs by default); cached per vector."""
        if widths not in self._reduction:
            self._reduction[widths] = self.pruner.reduction(self.build(widths))
        return self._reduction[widths]

    def in_window(self, widths: tuple[int, ...], target: float, tolerance: float) -> bool:
        """At or beyond the target, by at most ``tolerance`` more: reduction in [target, target + tolerance]."""
        return target <= self.reduction(widths) <= target + tolerance

    def scaled(self, widths: tuple[int, ...], factor: float) -> tuple[int, ...]:
        """Every width times ``factor``, within the groups' bounds."""
        return self.clip([w * factor for w in widths])

    def finish(self, widths: tuple[int, ...], target: float, steps: int = 64) -> tuple[int, ...]:
        """``widths`` scaled by the one factor that meets ``target``, candidates from the widest scaling to the
        narrowest (1.0 among them): under a measured cost (a latency target) corrected by paired measurements
        in either direction (``ChannelPruner.finish``); otherwise the widest scaling that meets it."""
        top = max(h / max(w, 1) for w, h in zip(widths, self.high))
        factors = sorted({top * (1 - j / steps) for j in range(steps + 1)} | {1.0}, reverse=True)
        candidates = [self.scaled(widths, f) for f in factors]
        return candidates[self.pruner.finish(lambda j: self.build(candidates[j]), target, len(candidates) - 1)]

    def repair(self, widths: tuple[int, ...], target: float, exact: bool = True) -> tuple[int, ...]:
        """Scale every width by one factor so the vector meets the MACs target: the largest factor that
        still meets it. With ``exact`` a vector beyond the target is widened back to it too, so every
        candidate costs what the target allows and the search compares shapes at one budget."""
        scaled = lambda f: self.scaled(widths, f)  # noqa: E731
        if self.reduction(widths) >= target:
            if not exact:
                return widths
            lo, hi = 1.0, max(h / max(w, 1) for w, h in zip(widths, self.high))
        else:
            lo, hi = 0.0, 1.0
            if self.reduction(scaled(lo)) < target:
                raise ConfigError(self.pruner.unreachable_message(self.model, target))
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.reduction(scaled(mid)) >= target else (lo, mid)
        return scaled(lo)


class GridEncoding:
    """Width vectors as genes: gene i is an index into ``fractions``, and group i's width is that fraction
    of its dense width (at least the group's minimum). MetaPruning's encoding."""

    def __init__(self, space: WidthSpace, fractions: list[float]):
        if not fractions:
            raise ConfigError("the width grid is empty: give at least one fraction in (0, 1]")
        self.space, self.fractions = space, sorted(float(f) for f in fractions)
        self.genes = len(space.keys)

    def widths(self, genes: tuple[int, ...]) -> tuple[int, ...]:
        return self.space.clip([self.fractions[g] * hi for g, hi in zip(genes, self.space.high)])

    def reduction(self, genes: tuple[int, ...]) -> float:
        return self.space.reduction(self.widths(genes))

    def uniform(self, index: int) -> tuple[int, ...]:
        return (index,) * self.genes
