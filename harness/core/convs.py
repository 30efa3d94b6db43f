"""What kind of convolution a layer is: the surgery, the cost model and the latency table ask alike."""

from __future__ import annotations

import torch.nn as nn


def is_depthwise(layer: nn.Module) -> bool:
    """A convolution with one group per input channel (any channel multiplier): pruned channel by channel,
    its input and output channels going together."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def is_grouped(layer: nn.Module) -> bool:
    """A grouped convolution that is not a plain depthwise one (ResNeXt, RegNet): every group must keep the
    same positions, so channels go in whole units."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups > 1
        and not (layer.groups == layer.in_channels == layer.out_channels)
    )
