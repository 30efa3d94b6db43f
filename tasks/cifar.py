"""CIFAR-10 / CIFAR-100 from the ``cifar-*-python`` pickles, through torchvision."""

from __future__ import annotations

import pickle
from pathlib import Path

from harness.core.errors import DataError
from tasks.base import Task, register_task

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


class _CifarTask(Task):
    input_shape = (3, 32, 32)
    folder: str

    def _load_datasets(self):
        import torchvision.transforms as T

        root = Path(self.cfg.data.root).expanduser()
        mean, std = _MEAN_STD[self.num_classes]
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if self.cfg.data.augment else []
        cls = _dataset_class(self.num_classes)
        download = bool(self.cfg.data.download)
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
        if self.cfg.data.get("check_integrity", True):
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


@register_task
class Cifar100VGG16Task(_CifarTask):
    name = "vgg16_cifar100"
    description = "VGG-16 with BN (the pruning papers' CIFAR variant) on CIFAR-100 from data.root (cifar-100-python)"
    num_classes = 100
    folder = "cifar-100-python"
