"""Semantic segmentation on PASCAL VOC 2011 (VOCdevkit layout) with an FCN; the metric is mIoU over
21 classes, ignoring the 255 border label."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from harness.core.errors import DataError
from harness.core.settings import setting
from tasks.base import DataSettings, Task, recipe, register_task
from tasks.images import IMAGENET_MEAN, IMAGENET_STD, open_rgb

IGNORE = 255


class SegmentationPairs(Dataset):
    """(image, mask) files resized to ``size`` x ``size`` (bilinear / nearest), flipped in training."""

    def __init__(self, pairs: list[tuple[str, str]], size: int, train: bool, num_classes: int):
        self.pairs, self.size, self.train, self.num_classes = pairs, size, train, num_classes

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        import torchvision.transforms.functional as TF
        from PIL import Image

        image_path, mask_path = self.pairs[i]
        image = open_rgb(image_path).resize((self.size, self.size), Image.BILINEAR)
        try:
            with Image.open(mask_path) as m:
                mask = m.resize((self.size, self.size), Image.NEAREST)
                mask = torch.as_tensor(np.array(mask), dtype=torch.long)
        except Exception as e:
            raise DataError(f"cannot read mask {mask_path} ({type(e).__name__}: {e})") from None
        bad = (mask >= self.num_classes) & (mask != IGNORE)
        if bad.any():
            raise DataError(
                f"mask {mask_path} has labels {sorted(set(mask[bad].tolist()))[:5]}, "
                f"expected 0..{self.num_classes - 1} or {IGNORE}"
            )
        x = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        if self.train and torch.rand(()) < 0.5:
            x, mask = x.flip(-1), mask.flip(-1)
        return x, mask


@dataclass
class VocSegmentationData(DataSettings):
    root: str = setting("data", "str", help="holds VOCdevkit/VOC2011/ (or TrainVal/VOCdevkit/VOC2011/)")
    size: int = setting(320, "int", "[8, 8192]", help="images and masks are resized to size x size (MACs too)")
    num_workers: int = setting(4, "int", "[0, 1024]", help="DataLoader worker processes")


@register_task
class VocSegmentationTask(Task):
    """FCN on PASCAL VOC 2011 segmentation (train/val of ImageSets/Segmentation). The default model is
    torchvision's fcn_resnet50 (the library option; it has BN, so every method prunes it as is);
    model.name=fcn32s_vgg16 is the Gate Decorator paper's FCN-32s (no BN: gbn gates the convs)."""

    name = "fcn_voc2011"
    description = "FCN (ResNet-50 backbone by default) on PASCAL VOC 2011 segmentation, mIoU over 21 classes"
    num_classes = 21
    metric = "miou"
    data_settings = VocSegmentationData
    model_config = {"name": "fcn_resnet50", "kwargs": {}, "weights": None}
    # close to torchvision's segmentation reference (lr 0.02, wd 1e-4, 30 epochs)
    train_recipe = recipe(30, 8, 0.02, weight_decay=1.0e-4)
    finetune_recipe = recipe(15, 8, 0.01, weight_decay=1.0e-4)
    batch_sizes = (1, 8)

    @property
    def input_shape(self):
        return (3, self.data.size, self.data.size)

    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss(ignore_index=IGNORE)

    def _load_datasets(self):
        # torchvision's VOCSegmentation expects the 2011 archive's TrainVal/VOCdevkit/VOC2011 prefix;
        # the layout itself is simple, so both roots are read here directly.
        root = Path(self.data.root).expanduser()
        voc = next(
            (c for c in (root / "VOCdevkit" / "VOC2011", root / "TrainVal" / "VOCdevkit" / "VOC2011") if c.is_dir()),
            root / "VOCdevkit" / "VOC2011",
        )
        splits = []
        for split, train in (("train", True), ("val", False)):
            split_file = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not split_file.is_file():
                raise DataError(
                    f"{self.name}: missing {split_file if voc.is_dir() else voc}. Fix: set data.root="
                    "<dir holding VOCdevkit/VOC2011/> with JPEGImages/, SegmentationClass/ and "
                    "ImageSets/Segmentation/{train,val}.txt"
                )
            ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
            pairs = [(str(voc / "JPEGImages" / f"{i}.jpg"), str(voc / "SegmentationClass" / f"{i}.png")) for i in ids]
            for image, mask in pairs:
                for path in (image, mask):
                    if not Path(path).is_file():
                        raise DataError(f"{self.name}: {split_file} lists {Path(path).stem}, but {path} is missing")
            splits.append(SegmentationPairs(pairs, self.data.size, train, self.num_classes))
        return tuple(splits)

    @torch.no_grad()
    def evaluate(self, model, loader, device) -> dict[str, float]:
        model.eval()
        n = self.num_classes
        confusion = torch.zeros(n, n, dtype=torch.long)
        loss_sum, pixels = 0.0, 0
        loss_fn = self.loss_fn()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            valid = y != IGNORE
            loss_sum += loss_fn(out, y).item() * valid.sum().item()
            pred = out.argmax(1)[valid].cpu()
            confusion += torch.bincount(y[valid].cpu() * n + pred, minlength=n * n).view(n, n)
            pixels += valid.sum().item()
        return {
            "miou": miou(confusion),
            "pixel_acc": (confusion.diag().sum() / confusion.sum().clamp_min(1)).item(),
            "loss": loss_sum / max(pixels, 1),
        }


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes that occur in the labels or the predictions."""
    inter = confusion.diag().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - inter
    present = union > 0
    return (inter[present] / union[present]).mean().item() if present.any() else 0.0
