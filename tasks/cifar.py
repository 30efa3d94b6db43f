"""CIFAR-10 / CIFAR-100 from the ``cifar-*-python`` pickles, through torchvision."""
from __future__ import annotations

from pathlib import Path

from harness.errors import DataError
from tasks.base import Task

_MEAN_STD = {10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
             100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}


class _CifarTask(Task):
    input_shape = (3, 32, 32)
    folder: str

    def _load_datasets(self):
        import torchvision.transforms as T
        from torchvision.datasets import CIFAR10, CIFAR100

        root = Path(self.cfg.data.root).expanduser()
        mean, std = _MEAN_STD[self.num_classes]
        norm = [T.ToTensor(), T.Normalize(mean, std)]
        augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if self.cfg.data.augment else []
        cls = CIFAR10 if self.num_classes == 10 else CIFAR100
        download = bool(self.cfg.data.download)
        try:
            train = cls(str(root), train=True, download=download, transform=T.Compose(augment + norm))
            test = cls(str(root), train=False, download=download, transform=T.Compose(norm))
        except RuntimeError as e:
            if "not found or corrupted" not in str(e):
                raise
            raise DataError(
                f"{self.name}: no valid {self.folder}/ under {root} (missing or corrupted). "
                f"Fix: put the extracted {self.folder}/ there or set data.root=<dir that holds it>, "
                "or add data.download=true on a machine with internet access") from None
        except Exception as e:  # a truncated or corrupted pickle
            raise DataError(f"{self.name}: cannot read {root / self.folder}: {type(e).__name__}: {e}. "
                            "Fix: re-extract the archive, or data.download=true") from None
        return train, test


class Cifar10ResNet56Task(_CifarTask):
    name = "resnet56"
    description = "ResNet-56 (option-B shortcuts) on CIFAR-10 from data.root (cifar-10-batches-py)"
    num_classes = 10
    folder = "cifar-10-batches-py"
