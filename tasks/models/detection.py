"""Detectors from torchvision (SSD300-VGG16, SSDlite-MobileNetV3, RetinaNet-ResNet-FPN), built with
``weights=None, weights_backbone=None`` (nothing is downloaded) at a square input of ``size`` pixels.

Each is wrapped in ``Detector``, which has two faces:

- ``model(x)`` on one image tensor (N, 3, size, size) is **the network alone**: backbone, neck and heads,
  returning the heads' raw outputs (class logits, box regressions) with no anchors, decoding or NMS. This
  is what the dependency graph traces, MACs are counted on and ``measure`` times.
- ``model(images, targets)`` on a list of images is the whole torchvision detector: its loss dict in
  training mode, its post-processed detections (boxes, scores, labels per image) in evaluation mode.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.core.errors import ConfigError

from . import register_model


class Detector(nn.Module):
    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images, targets=None):
        if isinstance(images, torch.Tensor):
            return self.network(images)
        return self.detector(list(images), targets)

    def network(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads' raw outputs for a batch already resized and normalised (post-processing excluded)."""
        features = self.detector.backbone(x)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.detector.head(features)
        return out["cls_logits"], out["bbox_regression"]

    def prediction_layers(self) -> list[nn.Module]:
        """The convolutions that write class scores and box offsets: their widths are fixed by classes x
        anchors and 4 x anchors, so they are never pruned (their *inputs* are)."""
        layers = []
        for head in (self.detector.head.classification_head, self.detector.head.regression_head):
            if hasattr(head, "module_list"):  # SSD: one predictor per feature map
                layers += [[m for m in p.modules() if isinstance(m, nn.Conv2d)][-1] for p in head.module_list]
            else:  # RetinaNet: one predictor shared by every FPN level
                layers.append(head.cls_logits if hasattr(head, "cls_logits") else head.bbox_reg)
        return layers

    def unwrapped_parameters(self) -> list[tuple[nn.Parameter, int]]:
        """Parameters used outside any layer that torch-pruning knows, with the dimension that follows the
        channels: SSD-VGG's L2-norm ``scale_weight`` (one scale per conv4_3 channel)."""
        scale = getattr(self.detector.backbone, "scale_weight", None)
        return [(scale, 0)] if scale is not None else []


def _square(detector: nn.Module, size: int) -> Detector:
    """Resize every image to ``size`` x ``size`` (SSD's fixed input; RetinaNet's otherwise keeps the aspect)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    t = detector.transform
    detector.transform = GeneralizedRCNNTransform(
        size, size, t.image_mean, t.image_std, size_divisible=1, fixed_size=(size, size)
    )
    return Detector(detector)


@register_model
def ssd300_vgg16(num_classes: int = 21, size: int = 300) -> Detector:
    from torchvision.models.detection import ssd300_vgg16 as tv_ssd

    return _square(tv_ssd(weights=None, weights_backbone=None, num_classes=num_classes), size)


@register_model
def ssdlite320_mobilenet_v3_large(num_classes: int = 21, size: int = 320) -> Detector:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large as tv_ssdlite

    return _square(tv_ssdlite(weights=None, weights_backbone=None, num_classes=num_classes), size)


@register_model
def retinanet_resnet_fpn(num_classes: int = 21, size: int = 512, depth: int = 50) -> Detector:
    """RetinaNet on a ResNet-``depth`` FPN (P3-P7, as torchvision's retinanet_resnet50_fpn); a smaller depth
    (18, 34) makes a CPU run feasible."""
    import torchvision.models as tvm
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if depth not in (18, 34, 50, 101, 152):
        raise ConfigError(f"model.kwargs.depth={depth}: torchvision's ResNets are 18, 34, 50, 101 or 152 deep")
    resnet = getattr(tvm, f"resnet{depth}")(weights=None)
    # P6 and P7 from P5, as torchvision's retinanet_resnet50_fpn (v1); every layer trainable
    backbone = _resnet_fpn_extractor(resnet, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return _square(RetinaNet(backbone, num_classes, min_size=size, max_size=size), size)
