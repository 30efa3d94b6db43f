"""CIFAR ResNets (He et al. 2016) with the 1x1-conv+BN ("option B") shortcut used by the
Gate Decorator code: ResNet-56 has 0.856 M params and 126.8 M MACs on 32x32 inputs."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from . import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        widths: tuple[int, int, int] = (16, 32, 64),
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for stage, planes in enumerate(widths):
            strides = [1 if stage == 0 else 2] + [1] * (blocks - 1)
            stage_blocks = []
            for s in strides:
                stage_blocks.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each block starts as its shortcut (Goyal et al. 2017); helps short budgets
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(56, num_classes, **kwargs)


@register_model
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    return CifarResNet(20, num_classes, **kwargs)


@register_model
def resnet8(num_classes: int = 10, **kwargs) -> CifarResNet:
    """A tiny CIFAR ResNet for tests: same structure, one block per stage."""
    return CifarResNet(8, num_classes, **kwargs)
