"""Channel masks of an iterative method (Gate Decorator's gates, Group Fisher's input masks): one 0/1
mask per channel group, applied by the method's hooks while it trains, and the order in which channels
were masked. That order is the method's removal sequence: its last step moves the cut along it until the
pruner's cost (a measured latency included) meets the target, unmasking earlier steps' channels if the
measurement says they overshoot."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn as nn

from harness.core.surgery import ChannelPruner, complete_units

Channel = tuple[str, int]


class ChannelMasks:
    """``masks[group]`` (1 = live) and ``sequence``, the masked channels in the order they were masked.
    Subclasses apply the masks with hooks (``attach`` / ``detach``)."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], units: dict | None = None):
        self.model, self.masks = model, masks
        self.units = units or {}  # grouped convolutions: a group's channels go in whole units
        self.sequence: list[Channel] = []
        self.finished = False  # the step that met the target has been taken: the schedule stops

    def attach(self) -> None:
        raise NotImplementedError

    def detach(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Without the hooks, e.g. to deep-copy the vanilla network."""
        self.detach()
        try:
            yield
        finally:
            self.attach()

    def live(self) -> dict[str, int]:
        return {k: int(m.sum().item()) for k, m in self.masks.items()}

    def masked_channels(self) -> list[Channel]:
        """Every masked channel: those masked through ``mask`` in their order, then any other (set directly)."""
        known = [c for c in self.sequence if self.masks[c[0]][c[1]] == 0]
        seen = set(known)
        rest = [(k, int(i)) for k, m in self.masks.items() for i in torch.nonzero(m == 0).flatten().tolist()]
        return known + [c for c in rest if c not in seen]

    def mask(self, channels: list[Channel]) -> None:
        """Mask ``channels`` (completed to whole units), appending the newly masked ones to the sequence."""
        for key in dict.fromkeys(k for k, _ in channels):
            idxs = [i for k, i in channels if k == key]
            if key in self.units:
                idxs = complete_units(idxs, self.units[key], self.masks[key].numel())
            for i in idxs:
                if self.masks[key][i] != 0:
                    self.masks[key][i] = 0.0
                    self.sequence.append((key, int(i)))

    def mask_exactly(self, channels: list[Channel]) -> None:
        """Every channel live again but ``channels``, masked in that order."""
        for m in self.masks.values():
            m.fill_(1.0)
        self.sequence = []
        self.mask(channels)

    def load(self, masks: dict[str, torch.Tensor]) -> None:
        """Masks from a checkpoint; the order they were masked in is not kept (masked_channels: by group)."""
        for k, m in self.masks.items():
            m.copy_(masks[k])
        self.sequence = []

    def vanilla(self, pruner: ChannelPruner, removed: list[Channel] | None = None) -> nn.Module:
        """A copy of the network without the hooks and with ``removed`` (default: the masked channels)
        removed physically."""
        with self.detached():
            clone = copy.deepcopy(self.model)
        return pruner.remove(clone, self.masked_channels() if removed is None else removed)

    def reduction(self, pruner: ChannelPruner, extra: list[Channel] = ()) -> float:
        """The pruner's reduction once the masked channels and ``extra`` are removed."""
        return pruner.reduction(self.vanilla(pruner, self.masked_channels() + list(extra)))

    def step(self, pruner: ChannelPruner, order: list[Channel], n: int, target: float) -> float:
        """One pruning step: mask the first ``n`` channels of ``order`` (a ranking of live channels). The step
        that reaches ``target`` masks the fewest that do, and under a measured cost (a latency target) its cut
        is corrected along the whole sequence, every channel masked so far followed by ``order``, both ways.
        Returns the reduction after the step (under a measured cost it may lie below ``target`` on the
        pruner's cost: ``finished`` says the target is met)."""
        if self.reduction(pruner, order[:n]) < target:
            self.mask(order[:n])
        else:
            done = self.masked_channels()
            sequence = done + order
            build = lambda k: self.vanilla(pruner, sequence[:k])  # noqa: E731
            self.mask_exactly(sequence[: pruner.finish(build, target, len(sequence), lo=len(done) + 1)])
            self.finished = True
        return self.reduction(pruner)
