"""The Task interface: data, model, metric and example input. A task knows nothing of methods."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import Dataset, Subset

from tasks.models import create_model


class Task:
    name: ClassVar[str]
    description: ClassVar[str]
    num_classes: ClassVar[int]
    input_shape: ClassVar[tuple[int, ...]]  # one sample, channels first
    metric: ClassVar[str] = "acc"  # the key of evaluate() that counts as "accuracy" in reports
    # With model.weights given: True means those weights are the trained baseline (ImageNet), so the
    # baseline is not trained; False means they only initialise it (transfer learning).
    weights_are_baseline: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    # --- model -----------------------------------------------------------------------------
    def model_spec(self) -> dict:
        """What rebuilds the dense architecture: registry name, class count and kwargs."""
        kwargs = dict(self.cfg.model.get("kwargs") or {})
        return {"name": self.cfg.model.name, "num_classes": self.num_classes, "kwargs": kwargs,
                "input_shape": list(self.input_shape)}

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

    # --- data ------------------------------------------------------------------------------
    def datasets(self) -> tuple[Dataset, Dataset]:
        """(train, test) datasets, with ``data.limit_train``/``data.limit_val`` applied."""
        train, test = self._load_datasets()
        return _limit(train, self.cfg.data.get("limit_train")), _limit(test, self.cfg.data.get("limit_val"))

    def _load_datasets(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    # --- metric ----------------------------------------------------------------------------
    def loss_fn(self) -> nn.Module:
        return nn.CrossEntropyLoss()

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


def _limit(ds: Dataset, limit) -> Dataset:
    """The first ``limit`` samples (a fixed, reproducible subset), or the whole dataset."""
    if limit is None or limit >= len(ds):
        return ds
    return Subset(ds, range(int(limit)))
