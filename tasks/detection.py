"""Object detection on PASCAL VOC (VOCdevkit layout: VOC2007 + VOC2012 trainval to train, VOC2007 test to
evaluate; XML annotations) with torchvision's SSD and RetinaNet (tasks/models/detection.py).

The metric is mAP@0.5 (``map50``) and mAP@[.5:.95] (``map``) from torchmetrics' ``MeanAveragePrecision``
with the pycocotools backend: COCO-style 101-point interpolation, not VOC2007's 11-point metric, so the
numbers are close to but not the same as the VOC devkit's. Boxes marked ``difficult`` are passed as crowd
regions: a detection on one is neither a true nor a false positive, as the VOC devkit treats them; they are
left out of the training targets.

Detectors compute their own losses, so the task trains through ``DetectionStep`` (images and target dicts
in, the sum of the detector's loss dict out), not ``loss(model(x), y)``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, Dataset

from harness.core.errors import DataError
from harness.core.settings import setting
from harness.core.step import TrainStep
from tasks.base import DataSettings, Task, recipe, register_task
from tasks.images import open_rgb

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def read_annotation(path: Path, classes: tuple[str, ...] = VOC_CLASSES) -> dict[str, torch.Tensor]:
    """One VOC XML file: boxes (x1, y1, x2, y2 in pixels, 0-based), labels 1..len(classes) (0 is the
    background) and the ``difficult`` flags."""
    try:
        root = ET.parse(path).getroot()
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = obj.findtext("name", "").strip()
            if name not in classes:
                raise DataError(f"{path}: unknown class {name!r}; expected one of {', '.join(classes)}")
            box = obj.find("bndbox")
            x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x1 - 1, y1 - 1, x2, y2])  # VOC's pixel indices start at 1 and include xmax
            labels.append(classes.index(name) + 1)
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DataError(f"cannot read annotation {path} ({type(e).__name__}: {e})") from None
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


class VocDetection(Dataset):
    """(image tensor in [0, 1], target dict) pairs of one VOC year and image set. ``augment``: ``ssd`` (the
    SSD paper's photometric distortion, zoom-out, IoU crop and flip, as torchvision's detection reference),
    ``flip`` or ``none``. Images keep their size: the detector's transform resizes them."""

    def __init__(self, voc: Path, image_set: str, augment: str = "none", classes: tuple[str, ...] = VOC_CLASSES):
        split = voc / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split.is_file():
            raise DataError(
                f"missing {split}. Fix: set data.root=<dir holding VOCdevkit/VOC2007/> with Annotations/, "
                "JPEGImages/ and ImageSets/Main/, or choose other years with data.train_sets / data.test_sets"
            )
        self.voc, self.augment, self.classes = voc, augment, classes
        self.ids = [line.split()[0] for line in split.read_text().splitlines() if line.strip()]
        for i in self.ids:
            for path in (voc / "Annotations" / f"{i}.xml", voc / "JPEGImages" / f"{i}.jpg"):
                if not path.is_file():
                    raise DataError(f"{split} lists {i}, but {path} is missing")
        self.transform = _transform(augment)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        image = open_rgb(str(self.voc / "JPEGImages" / f"{self.ids[i]}.jpg"))
        target = read_annotation(self.voc / "Annotations" / f"{self.ids[i]}.xml", self.classes)
        image = F.to_image(image)
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=image.shape[-2:])
        image, target = self.transform(image, target)
        return F.to_dtype(image, torch.float32, scale=True), {k: v.as_subclass(torch.Tensor) for k, v in target.items()}


def _transform(augment: str):
    from torchvision.transforms import v2

    if augment == "none":
        return v2.Identity()
    steps = [v2.RandomHorizontalFlip(0.5)]
    if augment == "ssd":
        steps = [v2.RandomPhotometricDistort(p=1.0), v2.RandomZoomOut(fill=123), v2.RandomIoUCrop(), *steps]
    # labels and difficult flags follow their boxes when a crop drops some
    return v2.Compose([*steps, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=_box_fields)])


def _box_fields(sample) -> tuple[torch.Tensor, torch.Tensor]:
    target = sample[1]
    return target["labels"], target["difficult"]


def collate_detection(batch: list) -> tuple[list[torch.Tensor], list[dict]]:
    """Images of different sizes cannot be stacked: a batch is (list of images, list of target dicts)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


class DetectionStep(TrainStep):
    """The detector's own losses (classification + box regression, summed) on images and targets;
    ``difficult`` boxes are left out of the training targets."""

    scores = False

    def to_device(self, batch: Any, device: torch.device) -> Any:
        images, targets = batch
        return [i.to(device) for i in images], [{k: v.to(device) for k, v in t.items()} for t in targets]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        images, targets = batch
        keep = [~t["difficult"] for t in targets]
        losses = model(images, [{"boxes": t["boxes"][k], "labels": t["labels"][k]} for t, k in zip(targets, keep)])
        return sum(losses.values())


@dataclass
class VocDetectionData(DataSettings):
    root: str = setting("data", "str", help="holds VOCdevkit/VOC2007/ (and VOC2012/)")
    train_sets: list = setting(
        [[2007, "trainval"], [2012, "trainval"]], "list", help="[year, image set] pairs the detector trains on"
    )
    test_sets: list = setting([[2007, "test"]], "list", help="[year, image set] pairs it is evaluated on")
    box_augment: str = setting("ssd", choices=("ssd", "flip", "none"), help="training augmentation; boxes follow")
    size: int = setting(300, "int", "[8, 8192]", help="images are resized to size x size (MACs too)")
    num_workers: int = setting(4, "int", "[0, 1024]", help="DataLoader worker processes")


@dataclass
class RetinaNetVocData(VocDetectionData):
    box_augment: str = setting("flip", choices=("ssd", "flip", "none"), help="training augmentation; boxes follow")
    size: int = setting(512, "int", "[8, 8192]", help="images are resized to size x size (MACs too)")


class _VocDetectionTask(Task):
    classes: tuple[str, ...] = VOC_CLASSES
    num_classes = 21  # 20 classes and the background
    metric = "map50"
    has_post_processing = True

    @property
    def input_shape(self):
        return (3, self.data.size, self.data.size)

    def model_spec(self) -> dict:
        spec = super().model_spec()
        spec["kwargs"] = {"size": self.data.size, **spec["kwargs"]}
        return spec

    def output_layers(self, model: nn.Module) -> list[nn.Module]:
        return model.prediction_layers()

    def train_step(self) -> TrainStep:
        return DetectionStep()

    def collate(self):
        return collate_detection

    def end_to_end_input(self, batch_size: int) -> list[torch.Tensor]:
        """The first ``batch_size`` test images at their own sizes: how many boxes reach NMS, and so its
        time, depends on real images."""
        test = self.datasets()[1]
        return [test[i % len(test)][0] for i in range(batch_size)]

    def _load_datasets(self):
        root = Path(self.data.root).expanduser() / "VOCdevkit"
        sets = []
        for pairs, augment in ((self.data.train_sets, self.data.box_augment), (self.data.test_sets, "none")):
            parts = [
                VocDetection(root / f"VOC{year}", str(image_set), augment, self.classes) for year, image_set in pairs
            ]
            sets.append(parts[0] if len(parts) == 1 else ConcatDataset(parts))
        return tuple(sets)

    def without_augmentation(self, train: Dataset, test: Dataset) -> Dataset:
        from torch.utils.data import Subset

        if isinstance(train, Subset):
            return Subset(self.without_augmentation(train.dataset, test), train.indices)
        if isinstance(train, ConcatDataset):
            return ConcatDataset([self.without_augmentation(d, test) for d in train.datasets])
        return _plain(train)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        from torchmetrics.detection import MeanAveragePrecision

        model.eval()
        # COCO's limit: each image's 100 best detections count (SSD returns up to 200; the rest are ignored)
        metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
        metric.warn_on_many_detections = False
        for images, targets in loader:
            detections = model([i.to(device) for i in images])
            metric.update(
                [{k: d[k].cpu() for k in ("boxes", "scores", "labels")} for d in detections],
                [{"boxes": t["boxes"], "labels": t["labels"], "iscrowd": t["difficult"].long()} for t in targets],
            )
        result = metric.compute()
        return {"map50": float(result["map_50"]), "map": float(result["map"])}


def _plain(dataset: VocDetection) -> VocDetection:
    import copy

    view = copy.copy(dataset)
    view.augment, view.transform = "none", _transform("none")
    return view


@register_task
class SsdVocTask(_VocDetectionTask):
    """SSD300-VGG16 on PASCAL VOC (VOCdevkit layout: VOC2007 + VOC2012 trainval train, VOC2007 test
    evaluates), mAP@0.5 (COCO-style interpolation, torchmetrics + pycocotools; difficult boxes as crowd
    regions). model.name=ssdlite320_mobilenet_v3_large for SSDlite (data.size=320). Nothing is downloaded:
    the baseline trains from scratch, or starts from a local file (model.weights=). The recipe is
    torchvision's detection reference for SSD300 (references/detection/README.md: lr 0.002 at batch 32,
    wd 5e-4, 120 epochs, steps at 80 and 110, SSD augmentation), written for COCO; see docs/tasks.md."""

    name = "ssd_voc"
    description = "SSD300-VGG16 (or SSDlite-MobileNetV3) on PASCAL VOC 2007+2012, mAP@0.5 on VOC2007 test"
    data_settings = VocDetectionData
    model_config = {"name": "ssd300_vgg16", "kwargs": {}, "weights": None}
    train_recipe = recipe(120, 32, 0.002, schedule="step", milestones=(80, 110))
    finetune_recipe = recipe(30, 32, 0.001)
    batch_sizes = (1, 32)


@register_task
class RetinaNetVocTask(_VocDetectionTask):
    """RetinaNet with a ResNet-FPN backbone (P3-P7, torchvision's retinanet_resnet50_fpn layout) on PASCAL VOC
    (VOC2007 + VOC2012 trainval train, VOC2007 test evaluates), mAP@0.5 (COCO-style interpolation). Images
    are resized to data.size x data.size; model.kwargs.depth=18 makes a CPU run feasible. Nothing is
    downloaded. Recipe: torchvision's detection reference for RetinaNet (lr 0.01 at batch 16, 26 epochs,
    steps at 16 and 22), written for COCO with an ImageNet backbone; from scratch it needs longer."""

    name = "retinanet_voc"
    description = "RetinaNet (ResNet-FPN, depth configurable) on PASCAL VOC 2007+2012, mAP@0.5 on VOC2007 test"
    data_settings = RetinaNetVocData
    model_config = {"name": "retinanet_resnet_fpn", "kwargs": {"depth": 50}, "weights": None}
    train_recipe = recipe(26, 16, 0.01, weight_decay=1.0e-4, schedule="step", milestones=(16, 22))
    finetune_recipe = recipe(12, 16, 0.005, weight_decay=1.0e-4)
    batch_sizes = (1, 16)
