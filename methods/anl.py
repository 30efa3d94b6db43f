"""Adversarial Noise Layers (ANL, arXiv 1805.08000) as a regulariser that composes with any method.

A noise layer sits on the output of each chosen layer and is active only in training. With
probability ``prob`` per step it adds ``eps`` times the direction that increases the loss, taken
from the gradient of that feature map in the previous backward pass (so it costs no extra pass):
per sample, the gradient scaled to unit RMS. In eval mode, and in any exported model, the layers
are inert: they are forward hooks that return nothing unless the module is training, and
``detach()`` removes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core import settings
from harness.core.hooks import HookSet
from harness.core.settings import setting
from harness.core.train import TrainingHook
from methods.base import REGULARIZERS, register_method, register_regularizer
from methods.random import NoPruning


@dataclass
class AnlSettings:
    eps: float = setting(
        0.1, "real", "[0, 100]", help="noise size, as the RMS of the per-sample noise on each feature map"
    )
    prob: float = setting(0.5, "real", "[0, 1]", help="chance per training step that a noise layer is active")
    layers: str = setting(
        "BatchNorm2d", "str", help="regex on module type names or full module names: where noise layers sit"
    )


@register_regularizer
class AdversarialNoise(TrainingHook):
    """ANL's noise layers, as a regulariser of every training phase (``regularizer=anl``)."""

    name = "anl"
    description = "Adversarial noise layers (arXiv 1805.08000) on feature maps during training"
    settings = AnlSettings

    def __init__(self, settings: AnlSettings):
        self.settings = settings  # typed: an instance of its settings dataclass, as a method's
        self.eps, self.prob = settings.eps, settings.prob
        self.pattern = re.compile(settings.layers)
        self.grads: dict[str, torch.Tensor] = {}
        self._hooks = HookSet(None, {})

    def targets(self, model: nn.Module) -> list[str]:
        """Names of the modules whose outputs get noise: ``layers`` matched against the module's
        type name (e.g. BatchNorm2d) or its full name (e.g. layer2.0.bn1)."""
        return [
            n
            for n, m in model.named_modules()
            if n and (self.pattern.fullmatch(type(m).__name__) or self.pattern.fullmatch(n))
        ]

    def attach(self, model: nn.Module) -> AdversarialNoise:
        self.detach()
        self._hooks = HookSet(model, {n: self._hook(n) for n in self.targets(model)})
        return self

    def detach(self) -> None:
        self._hooks.remove()
        self.grads = {}

    def _hook(self, name: str):
        def noise_layer(module, inputs, output):
            if not module.training or not torch.is_grad_enabled():
                return None
            if output.requires_grad:
                output.register_hook(lambda g: self.grads.__setitem__(name, g.detach()))
            g = self.grads.get(name)
            if g is None or g.shape != output.shape or torch.rand(()) >= self.prob:
                return None
            rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
            return output + self.eps * g / rms.view(-1, *([1] * (g.dim() - 1)))

        return noise_layer


def create_regularizer(cfg) -> AdversarialNoise | None:
    """The regulariser named by ``cfg.regularizer.name``, or None."""
    reg = cfg.regularizer
    if reg.name == "none":
        return None
    cls = REGULARIZERS.get(reg.name)
    return cls(settings.instantiate(cls.settings, reg))


@register_method
class AnlOnly(NoPruning):
    """Trains the baseline and fine-tunes it with ANL, without pruning (method=anl)."""

    name = "anl"
    description = "ANL (arXiv 1805.08000) only: baseline and fine-tuning with adversarial noise layers, no pruning"
    finetunes = True
