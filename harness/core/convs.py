"""What kind of convolution a layer is: the surgery, the cost model and the latency table ask alike."""

from __future__ import annotations

import torch.nn as nn


def is_depthwise(layer: nn.Module) -> bool:
    """A convolution with one group per input channel (any channel multiplier): its output channels follow
    its input channels."""
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels


def is_grouped(layer: nn.Module) -> bool:
    """A grouped convolution that is not a plain depthwise one (one output per input channel): ResNeXt,
    RegNet, or a depthwise conv with a channel multiplier. Every group must keep the same positions, so its
    channels go in whole units; a plain depthwise conv prunes channel by channel."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups > 1
        and not (layer.groups == layer.in_channels == layer.out_channels)
    )
