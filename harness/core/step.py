"""The task's training step: how a batch reaches the device and becomes a loss. Every training loop (the
baseline, the fine-tune, a method's own pruning-phase training) goes through it, so a task whose model
computes its own losses (a detector: images and target dicts in, a dict of losses out) trains under every
method that needs nothing more than a loss to minimise.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn


class TrainStep:
    """A task's step. ``scores`` says whether ``model(x)`` is one tensor of per-class scores that a loss
    reads: methods that compare, distil or perturb those outputs (KD, adversarial masks, knockoff inputs)
    need it and refuse a task without it."""

    scores: ClassVar[bool] = False

    def to_device(self, batch: Any, device: torch.device) -> Any:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The scalar loss of ``model`` on ``batch`` (already on the device), with gradients."""
        raise NotImplementedError

    def size(self, batch: Any) -> int:
        """How many samples ``batch`` holds."""
        return len(batch[0])


class SupervisedStep(TrainStep):
    """``loss_fn(model(x), y)`` on (inputs, labels) tensors: classification and segmentation."""

    scores = True

    def __init__(self, loss_fn: nn.Module):
        self.loss_fn = loss_fn

    def to_device(self, batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(model(x), y)
