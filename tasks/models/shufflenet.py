"""torchvision's ShuffleNetV2 with its channel shuffle as a layer (``ChannelShuffle``), the same function
(checked to the bit in tests/test_families.py), so that the surgery can trace it.

torch-pruning cannot map channels through the shuffle's view/transpose/view, and no channel of the
stream the shuffle permutes can go anyway: every block's halves must stay equal and aligned, which ties
channels across a whole stage. ``fixed_channels`` tells the surgery so: the groups that reach a shuffle
are left whole, and what prunes is the rest (the stem, each branch's inner width, the last 1x1 conv).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from torchvision.models.shufflenetv2 import InvertedResidual


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` equal parts of the channels (ShuffleNet's channel shuffle)."""

    fixed_channels: ClassVar[bool] = True  # the surgery leaves the channels through it whole

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleBlock(InvertedResidual):
    """torchvision's block, shuffling through a ``ChannelShuffle`` layer."""

    shuffle: ChannelShuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def with_shuffle_layers(model: nn.Module) -> nn.Module:
    """``model`` (a torchvision ShuffleNetV2) with each block's shuffle as a layer, in place."""
    for block in model.modules():
        if isinstance(block, InvertedResidual) and not isinstance(block, ShuffleBlock):
            block.__class__ = ShuffleBlock
            block.shuffle = ChannelShuffle(2)
    return model
