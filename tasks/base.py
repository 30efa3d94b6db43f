"""The Task interface: data, model, metric and example input. A task knows nothing of methods."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from harness.core.errors import ConfigError
from harness.core.registry import Registry
from harness.core.settings import defaults, instantiate, setting
from harness.core.step import SupervisedStep, TrainStep
from tasks.models import create_model

TASKS: Registry[type[Task]] = Registry("task", "tasks")


def register_task(cls: type[Task]) -> type[Task]:
    """The one decorator a new task needs: ``name`` is what ``task=`` selects, and the class declares its
    whole config (``config()``: model, data settings, recipes, batch sizes); a YAML file under
    harness/conf/task/ is a named preset only."""
    return TASKS.register(cls)


@dataclass
class DataSettings:
    """The ``data.*`` keys every task has; a task's own settings extend these (and may change a default)."""

    limit_train: int | None = setting(
        None, "int", "[1, inf)", help="train on the first N training samples only (a fixed subset, for quick checks)"
    )
    limit_val: int | None = setting(None, "int", "[1, inf)", help="evaluate on the first N test samples only")
    num_workers: int = setting(0, "int", "[0, 1024]", help="DataLoader worker processes")


def recipe(
    epochs: int,
    batch_size: int,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 5.0e-4,
    schedule: str = "cosine",
    milestones: tuple[int, ...] = (),
    min_lr: float = 0.0,
    **extra,
) -> dict:
    """A recipe node (``train.*``, the baseline's, or ``finetune.*``): the keys every task's recipe sets;
    ``extra`` adds others (warmup_epochs, tail_epochs, tail_lr)."""
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "nesterov": False,
        "schedule": schedule,
        "milestones": list(milestones),
        "gamma": 0.1,
        "min_lr": min_lr,
        **extra,
    }


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    transfer: ClassVar[bool] = False  # True: the baseline starts from pretrained weights (CUB)
    num_classes: ClassVar[int]
    input_shape: ClassVar[tuple[int, ...]]  # one sample, channels first
    metric: ClassVar[str] = "acc"  # the key of evaluate() that counts as "accuracy" in reports
    # With model.weights given: True means those weights are the trained baseline (ImageNet), so the
    # baseline is not trained; False means they only initialise it (transfer learning).
    weights_are_baseline: ClassVar[bool] = False
    # The task's config, declared here and nowhere else (harness.config stores it as the ``task=<name>`` node):
    data_settings: ClassVar[type] = DataSettings  # the data.* keys: defaults, ranges, help
    model_config: ClassVar[dict]  # the model it builds unless model= says otherwise: name, kwargs (, weights)
    train_recipe: ClassVar[dict]  # the shared baseline's recipe (train.*)
    finetune_recipe: ClassVar[dict]  # the fine-tune every method gets (finetune.*)
    batch_sizes: ClassVar[tuple[int, ...]] = (1, 64)  # measure.batch_sizes: where latency is measured

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.data = instantiate(type(self).data_settings, cfg.data)  # typed: self.data.root, self.data.size

    @classmethod
    def config(cls) -> dict:
        """The task's config node (Hydra package _global_): what ``task=<name>`` composes."""
        return {
            "task": {"name": cls.name, "description": cls.description},
            "model": copy.deepcopy(cls.model_config),
            "data": defaults(cls.data_settings),
            "train": copy.deepcopy(cls.train_recipe),
            "finetune": copy.deepcopy(cls.finetune_recipe),
            "measure": {"batch_sizes": list(cls.batch_sizes)},
        }

    # --- model -----------------------------------------------------------------------------
    def model_spec(self) -> dict:
        """What rebuilds the dense architecture: registry name, class count and kwargs."""
        kwargs = dict(self.cfg.model.get("kwargs") or {})
        return {
            "name": self.cfg.model.name,
            "num_classes": self.num_classes,
            "kwargs": kwargs,
            "input_shape": list(self.input_shape),
        }

    def build_model(self) -> nn.Module:
        from pathlib import Path

        from tasks.weights import load_weights

        spec = self.model_spec()
        model = create_model(spec["name"], spec["num_classes"], **spec["kwargs"])
        if self.cfg.model.get("weights"):
            load_weights(model, Path(self.cfg.model.weights).expanduser(), strict_head=self.weights_are_baseline)
        return model

    def output_layers(self, model: nn.Module) -> list[nn.Module]:
        """Layers whose outputs are the task's predictions; their output channels are never pruned."""
        last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        return [last]

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, *self.input_shape)

    # Whether the whole model is more than its network (a detector's resizing, decoding and NMS): then
    # ``end_to_end_input`` gives its inputs and the run times it whole beside the network alone.
    has_post_processing: ClassVar[bool] = False

    def end_to_end_input(self, batch_size: int) -> list[torch.Tensor] | None:
        """Inputs of the whole model when ``has_post_processing`` (a detector's images, timed through
        resizing, decoding and NMS beside the network alone); None: the network is the whole model."""
        return None

    # --- data ------------------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, test) datasets, with ``data.limit_train``/``data.limit_val`` applied."""
        train, test = self._load_datasets()
        return _limit(train, self.cfg.data.get("limit_train")), _limit(test, self.cfg.data.get("limit_val"))

    def _load_datasets(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def splits(self) -> tuple[Dataset, Dataset | None, Dataset]:
        """(train, validation, test). With ``data.val_fraction`` > 0 the validation split is carved from
        the training set (stratified by label where the labels allow it, seeded by ``data.val_seed``,
        independent of the run's seed) and removed from it, so nothing trains on it; it is served without
        training augmentation. Without it, validation is None."""
        train, test = self.datasets()
        fraction = float(self.cfg.data.get("val_fraction") or 0)
        if not fraction:
            return train, None, test
        keep, held = split_indices(dataset_labels(train), len(train), fraction, int(self.cfg.data.get("val_seed", 0)))
        return Subset(train, keep), Subset(self.without_augmentation(train, test), held), test

    def without_augmentation(self, train: Dataset, test: Dataset) -> Dataset:
        """The training samples served as the test split is (its transform, no random flips or crops).
        This default copies the test dataset's ``transform`` (and ``train`` flag) onto a shallow copy."""
        if isinstance(train, Subset):
            return Subset(self.without_augmentation(train.dataset, test), train.indices)
        while isinstance(test, Subset):
            test = test.dataset
        view = copy.copy(train)
        for attr in ("transform", "train"):
            if hasattr(view, attr) and hasattr(test, attr):
                setattr(view, attr, getattr(test, attr))
        return view

    # --- metric ----------------------------------------------------------------------------
    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

    def train_step(self) -> TrainStep:
        """How a training batch becomes a loss (``loss_fn(model(x), y)`` here); a detector overrides it."""
        return SupervisedStep(self.loss_fn())

    def collate(self) -> Callable | None:
        """The loaders' ``collate_fn`` (None: torch's default, which stacks tensors)."""
        return None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, device: torch.device) -> dict[str, float]:
        model.eval()
        correct = total = 0
        loss_sum = 0.0
        loss_fn = self.loss_fn()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss_sum += loss_fn(out, y).item() * y.numel()
            correct += (out.argmax(1) == y).sum().item()
            total += y.numel()
        return {"acc": correct / max(total, 1), "loss": loss_sum / max(total, 1)}


def dataset_labels(ds: Dataset) -> list[int] | None:
    """Per-sample class labels without loading any image, or None when the dataset has none (segmentation)."""
    if isinstance(ds, Subset):
        parent = dataset_labels(ds.dataset)
        return None if parent is None else [parent[i] for i in ds.indices]
    if hasattr(ds, "targets"):
        return [int(t) for t in ds.targets]
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) > 1 and ds.tensors[1].dim() == 1:
        return ds.tensors[1].tolist()
    samples = getattr(ds, "samples", None)
    if samples and isinstance(samples[0][1], int):
        return [s[1] for s in samples]
    return None


def split_indices(labels: list[int] | None, n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices: ``fraction`` of ``n`` held out, stratified when every class has two samples
    and there are at least as many held-out samples as classes; otherwise a seeded random draw."""
    from sklearn.model_selection import train_test_split

    held = max(1, round(fraction * n))
    if held >= n:
        raise ConfigError(f"data.val_fraction={fraction} leaves no training samples out of {n}; lower it")
    stratify = None
    if labels is not None:
        counts = torch.bincount(torch.tensor(labels)) if labels else torch.zeros(0)
        classes = int((counts > 0).sum())
        if counts[counts > 0].min() >= 2 and classes <= held <= n - classes:
            stratify = labels
    keep, out = train_test_split(list(range(n)), test_size=held, random_state=seed, stratify=stratify)
    return sorted(keep), sorted(out)


def _limit(ds: Dataset, limit) -> Dataset:
    """The first ``limit`` samples (a fixed, reproducible subset), or the whole dataset."""
    if limit is None or limit >= len(ds):
        return ds
    return Subset(ds, range(int(limit)))
