"""The CIFAR VGG-16 with BatchNorm used by the pruning papers (Network Slimming, Gate Decorator):
13 conv+BN+ReLU layers, four max-pools, then a 2x2 average pool and one linear layer."""

from __future__ import annotations

import torch.nn as nn

from . import register_model

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    def __init__(self, layers=tuple(_VGG16), num_classes: int = 100):
        super().__init__()
        blocks, in_ch = [], 3
        for v in layers:
            if v == "M":
                blocks.append(nn.MaxPool2d(2, 2))
            else:
                blocks += [nn.Conv2d(in_ch, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def vgg16_cifar(num_classes: int = 100) -> CifarVGG:
    return CifarVGG(tuple(_VGG16), num_classes)


@register_model
def vgg_tiny_cifar(num_classes: int = 100) -> CifarVGG:
    """Four conv layers, for tests."""
    return CifarVGG((8, "M", 16, "M", 16, "M", 32, "M", 32), num_classes)
