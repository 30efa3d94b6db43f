"""Segmentation models that return the logits tensor (not torchvision's {"out": ...} dict), so that
losses, the dependency graph and latency timing treat them like any other model.

- ``fcn_resnet50``: torchvision's FCN with a ResNet-50 backbone (dilated, output stride 8), built
  with ``weights=None, weights_backbone=None`` (no download) and no auxiliary head. It is the library
  option and the default: it has BatchNorm, so every method, Gate Decorator included, prunes it as is.
- ``fcn32s_vgg16``: the Gate Decorator paper's FCN-32s on a VGG-16 backbone without BN (fc6/fc7 as
  convolutions, one 1x1 score layer, x32 bilinear upsampling). With no BN, Gate Decorator gates the
  convolutions' outputs instead ("gated conv").
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


class FCN32s(nn.Module):
    def __init__(self, num_classes: int = 21, width: int = 4096):
        super().__init__()
        import torchvision.models as tvm

        self.features = tvm.vgg16(weights=None).features
        self.fc6 = nn.Conv2d(512, width, 7, padding=3)
        self.fc7 = nn.Conv2d(width, width, 1)
        self.score = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        h = F.relu(self.fc7(F.relu(self.fc6(self.features(x)))))
        return F.interpolate(self.score(h), size=size, mode="bilinear", align_corners=False)


@register_model
def fcn_resnet50(num_classes: int = 21) -> LogitsOnly:
    from torchvision.models.segmentation import fcn_resnet50 as tv_fcn

    return LogitsOnly(tv_fcn(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False))


@register_model
def fcn32s_vgg16(num_classes: int = 21, width: int = 4096) -> FCN32s:
    return FCN32s(num_classes, width)
