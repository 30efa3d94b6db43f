"""Image-file datasets shared by the ImageNet, CUB-200 and VOC tasks: checked loading (an unreadable
image stops the run with its path, unless ``data.skip_bad=true``), standard transforms, top-5, and
loading pretrained weights from ``model.weights``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from harness.core.errors import DataError
from harness.core.settings import setting
from tasks.base import DataSettings, Task, recipe, register_task

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def classification_transforms(size: int, train: bool):
    import torchvision.transforms as T

    norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm])
    return T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), *norm])


def open_rgb(path: str | Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:
        raise DataError(
            f"cannot read image {path} ({type(e).__name__}: {e}). Fix: replace the file, "
            "or add data.skip_bad=true to skip unreadable images (they are counted and logged)"
        ) from None


def drop_unreadable(samples: list[tuple[str, int]], skip_bad: bool) -> tuple[list[tuple[str, int]], int]:
    """With ``skip_bad``, check every image up front and drop the unreadable ones; returns (kept, skipped)."""
    if not skip_bad:
        return samples, 0
    from PIL import Image

    kept = []
    for path, label in samples:
        try:
            with Image.open(path) as img:
                img.verify()
            kept.append((path, label))
        except Exception:
            log.warning("skipping unreadable image %s", path)
    return kept, len(samples) - len(kept)


class ImageList(Dataset):
    """(path, label) samples, opened with ``open_rgb`` so a bad file is named."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform
        self.targets = [label for _, label in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(open_rgb(path)), label


@dataclass
class ImageNetData(DataSettings):
    root: str = setting("data/imagenet", "str", help="holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    size: int = setting(
        224, "int", "[8, 8192]", help="training crop and evaluation centre crop (resized to size*256/224 first)"
    )
    skip_bad: bool = setting(
        False, "bool", help="true: check every image first and skip unreadable ones (counted, logged)"
    )
    num_workers: int = setting(8, "int", "[0, 1024]", help="DataLoader worker processes")


@dataclass
class Cub200Data(ImageNetData):
    root: str = setting(
        "data/CUB_200_2011",
        "str",
        help="CUB_200_2011/ or its parent: images/, images.txt, image_class_labels.txt, train_test_split.txt, "
        "classes.txt (bounding_boxes.txt is not needed)",
    )
    size: int = setting(448, "int", "[8, 8192]", help="training crop and evaluation centre crop")


class ImageClassificationTask(Task):
    """Shared by ImageNet and CUB: top-1 (``acc``) and top-5 (``acc5``), weights from ``model.weights``."""

    skipped_images = 0

    @property
    def input_shape(self):
        return (3, self.data.size, self.data.size)

    def check_labels(self, samples, where: Path) -> None:
        labels = [label for _, label in samples]
        if labels and (min(labels) < 0 or max(labels) >= self.num_classes):
            raise DataError(
                f"{self.name}: labels in {where} span {min(labels)}..{max(labels)}, expected 0..{self.num_classes - 1}"
            )

    @torch.no_grad()
    def evaluate(self, model, loader, device):
        model.eval()
        top1 = top5 = total = 0
        loss_sum = 0.0
        loss_fn = self.loss_fn()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += loss_fn(out, y).item() * len(y)
            best = out.topk(min(5, out.shape[1]), dim=1).indices
            top1 += (best[:, 0] == y).sum().item()
            top5 += (best == y[:, None]).any(1).sum().item()
            total += len(y)
        return {"acc": top1 / max(total, 1), "acc5": top5 / max(total, 1), "loss": loss_sum / max(total, 1)}


@register_task
class ImageNetTask(ImageClassificationTask):
    name = "resnet50_imagenet"
    description = "ResNet-50 on ImageNet (ImageFolder train/ and val/ under data.root); start from model.weights"
    num_classes = 1000
    weights_are_baseline = True
    # Pruning papers start from a pretrained model: model.weights=<torchvision or timm resnet50 checkpoint>
    # (a state_dict, loaded with weights_only=True) and the baseline step is skipped.
    data_settings = ImageNetData
    model_config = {"name": "tv:resnet50", "kwargs": {}, "weights": None}
    # used only without model.weights: torchvision's 90-epoch recipe
    train_recipe = recipe(90, 256, 0.1, weight_decay=1.0e-4, schedule="step", milestones=(30, 60))
    finetune_recipe = recipe(60, 256, 0.01, weight_decay=1.0e-4)
    batch_sizes = (1, 64)

    def _load_datasets(self):
        from torchvision.datasets import ImageFolder

        root = Path(self.data.root).expanduser()
        splits = []
        for split, train in (("train", True), ("val", False)):
            folder = root / split
            if not folder.is_dir():
                raise DataError(
                    f"{self.name}: no {folder}/. Fix: set data.root=<dir holding train/ and val/ "
                    "class folders> (ImageFolder layout; val/ sorted into class folders too)"
                )
            try:
                samples = ImageFolder(str(folder)).samples
            except (FileNotFoundError, RuntimeError) as e:
                raise DataError(f"{self.name}: {folder}: {e}") from None
            self.check_labels(samples, folder)
            samples, skipped = drop_unreadable(samples, self.data.skip_bad)
            self.skipped_images += skipped
            splits.append(ImageList(samples, classification_transforms(self.data.size, train)))
        return tuple(splits)


@register_task
class Cub200Task(ImageClassificationTask):
    name = "cub200"
    transfer = True  # starts from pretrained weights (model.weights): methods do not train it from scratch
    description = "ResNet-50 transfer to CUB-200-2011 (official layout under data.root); init from model.weights"
    num_classes = 200
    # An ImageNet-pretrained ResNet-50 (model.weights=, its head left fresh: the shape differs) with a new
    # 200-way head: the usual fine-grained recipe (448 px crops, SGD 0.9, lr 0.01, wd 1e-4, cosine).
    data_settings = Cub200Data
    model_config = {"name": "tv:resnet50", "kwargs": {}, "weights": None}
    train_recipe = recipe(60, 32, 0.01, weight_decay=1.0e-4)
    finetune_recipe = recipe(30, 32, 0.01, weight_decay=1.0e-4)
    batch_sizes = (1, 32)

    def _load_datasets(self):
        root = Path(self.data.root).expanduser()
        if (root / "CUB_200_2011").is_dir():
            root = root / "CUB_200_2011"
        files = {name: root / f"{name}.txt" for name in ("images", "image_class_labels", "train_test_split", "classes")}
        for path in files.values():
            if not path.is_file():
                raise DataError(
                    f"{self.name}: missing {path}. Fix: set data.root=<the extracted CUB_200_2011/ "
                    "folder or its parent>; it holds images/, images.txt, image_class_labels.txt, "
                    "train_test_split.txt and classes.txt"
                )
        images = _id_table(files["images"])
        labels = _id_table(files["image_class_labels"])
        is_train = _id_table(files["train_test_split"])
        splits = {True: [], False: []}
        for image_id, rel in images.items():
            if image_id not in labels or image_id not in is_train:
                raise DataError(
                    f"{self.name}: image id {image_id} of {files['images']} has no entry in "
                    f"{files['image_class_labels'].name} or {files['train_test_split'].name}"
                )
            try:
                label = int(labels[image_id]) - 1  # the files count classes from 1
            except ValueError:
                raise DataError(
                    f"{self.name}: bad label {labels[image_id]!r} in {files['image_class_labels']}"
                ) from None
            if not 0 <= label < self.num_classes:
                raise DataError(
                    f"{self.name}: label {label + 1} of image {image_id} in "
                    f"{files['image_class_labels']} is outside 1..{self.num_classes}"
                )
            splits[is_train[image_id] == "1"].append((str(root / "images" / rel), label))
        out = []
        for train in (True, False):
            samples, skipped = drop_unreadable(splits[train], self.data.skip_bad)
            self.skipped_images += skipped
            out.append(ImageList(samples, classification_transforms(self.data.size, train)))
        return tuple(out)


def _id_table(path: Path) -> dict[str, str]:
    table = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        table[parts[0]] = parts[1].strip()
    return table
