"""CIFAR-10 / CIFAR-100 from the ``cifar-*-python`` pickles, through torchvision."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import DataError
from harness.core.settings import setting
from tasks.base import DataSettings, Task, recipe, register_task

_MEAN_STD = {
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _dataset_class(num_classes: int):
    """torchvision's CIFAR class, checking only that the files exist: its md5 check rejects any
    re-encoded or subset copy without naming the file, so ``_check_md5`` does that part, by name."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if num_classes == 10 else CIFAR100

    class Cifar(base):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError("Dataset metadata file not found or corrupted.")
            with open(path, "rb") as fh:
                self.classes = pickle.load(fh, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        @classmethod
        def unreadable_file(cls, root: Path) -> Path | None:
            folder = Path(root) / cls.base_folder
            for name, _ in cls.train_list + cls.test_list + [(cls.meta["filename"], None)]:
                try:
                    with open(folder / name, "rb") as fh:
                        pickle.load(fh, encoding="latin1")
                except Exception:
                    return folder / name
            return None

        @classmethod
        def md5_mismatch(cls, root: Path) -> Path | None:
            """The first file whose md5 differs from the official archive's, or None."""
            from torchvision.datasets.utils import check_integrity

            folder = Path(root) / cls.base_folder
            for name, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]:
                if not check_integrity(str(folder / name), md5):
                    return folder / name
            return None

    return Cifar


@dataclass
class CifarData(DataSettings):
    root: str = setting("data", "str", help="the folder that holds cifar-10-batches-py/ (cifar-100-python/)")
    download: bool = setting(False, "bool", help="true: torchvision downloads it (needs internet)")
    check_integrity: bool = setting(
        True, "bool", help="md5 against the official archive; false for a subset or re-encoded copy (cifar10-dev)"
    )
    augment: bool = setting(True, "bool", help="random crop (pad 4) + horizontal flip on the training set")
    num_workers: int = setting(2, "int", "[0, 1024]", help="DataLoader worker processes")


class _CifarTask(Task):
    input_shape = (3, 32, 32)
    folder: str
    data_settings = CifarData
    batch_sizes = (1, 128)
    # The Gate Decorator paper's baseline (shared/reference/papers.md): 160 epochs, SGD 0.9, wd 5e-4, batch
    # 128, lr 0.1 -> 0.01 at 80 -> 0.001 at 120.
    train_recipe = recipe(160, 128, 0.1, schedule="step", milestones=(80, 120))

    def _load_datasets(self):
        import torchvision.transforms as T

        root = Path(self.data.root).expanduser()
        mean, std = _MEAN_STD[self.num_classes]
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if self.data.augment else []
        cls = _dataset_class(self.num_classes)
        download = self.data.download
        try:
            train = cls(str(root), train=True, download=download, transform=T.Compose(augment + norm))
            test = cls(str(root), train=False, download=download, transform=T.Compose(norm))
        except RuntimeError as e:
            if "not found or corrupted" not in str(e):
                raise
            raise DataError(
                f"{self.name}: no {self.folder}/ with all its batch files under {root}. "
                f"Fix: extract the dataset there or set data.root=<dir holding {self.folder}/>, "
                "or add data.download=true on a machine with internet access"
            ) from None
        except Exception as e:  # a truncated or corrupted pickle
            bad = cls.unreadable_file(root)
            raise DataError(
                f"{self.name}: cannot read {bad or root / self.folder} ({type(e).__name__}: {e}). "
                "Fix: re-extract the archive, or data.download=true"
            ) from None
        if self.data.check_integrity:
            bad = cls.md5_mismatch(root)
            if bad is not None:
                raise DataError(
                    f"{self.name}: {bad} does not match the official archive's md5. Fix: re-extract "
                    "the archive, or, for a deliberate subset or re-encoded copy (e.g. "
                    "shared/data/cifar10-dev), set data.check_integrity=false"
                )
        labels = set(train.targets) | set(test.targets)
        if labels and (min(labels) < 0 or max(labels) >= self.num_classes):
            raise DataError(
                f"{self.name}: labels under {root / self.folder} span {min(labels)}..{max(labels)}, "
                f"expected 0..{self.num_classes - 1}; is this the right dataset?"
            )
        return train, test


@register_task
class Cifar10ResNet56Task(_CifarTask):
    name = "resnet56"
    description = "ResNet-56 (option-B shortcuts) on CIFAR-10 from data.root (cifar-10-batches-py)"
    num_classes = 10
    folder = "cifar-10-batches-py"
    model_config = {"name": "resnet56", "kwargs": {}}
    # GBN's fine-tune: 40 epochs, triangular 1e-3 -> 1e-2 -> 1e-3, batch 64, then 10 at 1e-3
    finetune_recipe = recipe(
        40, 64, 0.01, momentum=0.0, schedule="triangular", min_lr=0.001, tail_epochs=10, tail_lr=1.0e-3
    )


@register_task
class Cifar100VGG16Task(_CifarTask):
    name = "vgg16_cifar100"
    description = "VGG-16 with BN (the pruning papers' CIFAR variant) on CIFAR-100 from data.root (cifar-100-python)"
    num_classes = 100
    folder = "cifar-100-python"
    model_config = {"name": "vgg16_cifar", "kwargs": {}}  # 314.2 M MACs, 14.77 M params at 32x32, 100-way head
    # The baseline of Gate Decorator / Network Slimming (as CIFAR-10's), GBN's 40-epoch triangular fine-tune.
    finetune_recipe = recipe(40, 64, 0.01, momentum=0.0, schedule="triangular", min_lr=0.001)
