"""Network Slimming (Liu et al., ICCV'17): sparse training with λ·Σ|γ| on the BN scales, then a
global |γ| threshold down to the MACs target.

The sparsity is applied as the authors do, as a sub-gradient λ·sign(γ) added after backward. It
starts from the shared baseline and trains for ``method.sparse_epochs`` with the fine-tuning recipe's
schedule fitted to those epochs.
Channels tied by a residual add are scored by the mean |γ| of their BNs and removed together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from omegaconf import OmegaConf

from harness.core.errors import ConfigError
from harness.core.settings import setting
from harness.core.surgery import is_aligned
from harness.core.train import TrainingHook
from methods.base import Method, PruneContext, register_method


class BNSparsity(TrainingHook):
    """Adds λ·sign(γ) to every BatchNorm scale's gradient: the sub-gradient of λ·Σ|γ|."""

    def __init__(self, weight: float):
        self.weight = weight

    def after_backward(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.grad is not None:
                m.weight.grad.add_(self.weight * torch.sign(m.weight.detach()))


@dataclass
class SlimmingSettings:
    sparsity: float = setting(
        1e-05, "real", "[0, 100]", help="lambda: the paper's 1e-5 for ResNets/DenseNets; use 1.0e-4 for VGG"
    )
    sparse_epochs: int = setting(
        10, "int", "[0, 100000]", help="sparse training from the shared baseline, with the task's fine-tuning recipe"
    )


class BNScaleImportance(tp.importance.Importance):
    """Mean |γ| over the group's BatchNorm layers whose channels are the group's own. Raw, with no per-group
    normalisation: the paper's threshold is global over all scales. (torch-pruning's BNScaleImportance
    also averages BatchNorms a concatenation put in with part of the channels, GhostNet's halves, and
    indexes past the group there.)"""

    @torch.no_grad()
    def __call__(self, group):
        channels = len(group[0].idxs)
        scales = [
            item.dep.target.module.weight.detach()[item.idxs].abs()
            for item in group
            if item.dep.handler == tp.prune_batchnorm_out_channels
            and item.dep.target.module.affine
            and is_aligned(item, channels)
        ]
        return torch.stack(scales).mean(0) if scales else None


@register_method
class NetworkSlimming(Method):
    name = "slimming"
    description = "Network Slimming (Liu et al., ICCV'17): L1 sparsity on BN scales, global |gamma| threshold"
    settings = SlimmingSettings

    def check_model(self, model: nn.Module) -> None:
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigError(
                f"Network Slimming scores channels by their BatchNorm scale and {type(model).__name__} "
                "has no BatchNorm layer (LayerNorm or none); choose another method"
            )

    def importance(self):
        return BNScaleImportance()

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings = self.settings
        if settings.sparse_epochs:
            # The fine-tuning recipe's schedule, fitted to the sparse epochs (no tail stage).
            recipe = OmegaConf.merge(ctx.training.finetune_recipe, {"epochs": settings.sparse_epochs, "tail_epochs": 0})
            ctx.training.train(
                model,
                ctx.training.loader,
                recipe,
                hooks=[BNSparsity(settings.sparsity)],
                desc="sparse",
                on_epoch=lambda e, m: ctx.report.metrics({f"sparse/{k}": v for k, v in m.items()}, e),
                evaluate=lambda m: {**ctx.report.epoch_metrics(m), "gamma_l1": _gamma_l1(m)},
            )
        return super().prune(model, ctx)


def _gamma_l1(model: nn.Module) -> float:
    return sum(
        m.weight.detach().abs().sum().item()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    )
