"""A small residual CNN for sklearn's 8x8 digits.

It is small enough to train in seconds on a CPU, and it has BatchNorm and two residual adds,
so every run exercises the coupled-channel (residual group) path of the pruner.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class DigitsResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = _Residual(width)
        self.down = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU()
        )
        self.block2 = _Residual(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model
def digits_resnet(num_classes: int = 10, width: int = 32) -> DigitsResNet:
    return DigitsResNet(num_classes, width)
