"""Group Fisher pruning (Liu et al., ICML'21), after the authors' code (jshilong/FisherPruning) and
MMRazor's classification port.

Every channel group (torch-pruning's dependency graph: a conv's filters, its BN, and every layer that
reads them, residual streams included) gets one binary mask, applied to the *inputs* of the layers
that consume it. Training goes on at a lowered lr; for each sample the mask's gradient is
g = Σ_hw A ⊙ ∂L/∂A, summed over every consumer of the group *before* squaring (one shared mask), and
Σ_n g² is accumulated. Every ``interval`` iterations the ``channels_per_step`` live channels of
lowest score / cost (``prune.normalize``: memory by default, the paper's) are masked globally and the
accumulators reset, until the MACs (or latency) target is met. The masks sit after BN and ReLU, so
removing the masked channels physically afterwards leaves the function unchanged.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from harness.core import distributed
from harness.core.allocation import rank_channels
from harness.core.costs import normalized
from harness.core.hooks import per_channel
from harness.core.masks import ChannelMasks
from harness.core.settings import setting
from harness.core.surgery import ChannelGroup
from harness.core.train import progress
from methods.base import Method, PruneContext, register_method

_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


class InputMasks(ChannelMasks):
    """One mask per channel group, multiplied into the input of every layer that reads the group, and
    the Fisher score Σ_n (Σ_consumers Σ_hw A ⊙ ∂L/∂A)² accumulated per channel."""

    def __init__(self, model: nn.Module, groups: dict[str, ChannelGroup]):
        names = {m: n for n, m in model.named_modules()}
        first = next(model.parameters())
        device = first.device
        masks = {key: torch.ones(g.channels, device=device, dtype=first.dtype) for key, g in groups.items()}
        super().__init__(model, masks, {k: g.units for k, g in groups.items() if g.units})
        self.fisher = {key: torch.zeros(g.channels, dtype=torch.float64) for key, g in groups.items()}
        self.linear_fed = set()  # groups read by a linear layer (prune_linear_inputs=false leaves them whole)
        # consumer layer -> [(group key, its input channels, the group's channels they carry)]
        self.reads: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for key, g in groups.items():
            for item in g.group:
                name = names.get(item.dep.target.module)
                if item.dep.handler not in _IN or name is None:
                    continue
                idx = torch.tensor([int(getattr(i, "idx", i)) for i in item.idxs], device=device)
                root = torch.tensor([int(r) for r in item.root_idxs], device=device)
                self.reads.setdefault(name, []).append((key, idx, root))
                if isinstance(item.dep.target.module, nn.Linear):
                    self.linear_fed.add(key)
        self._batch: dict[str, torch.Tensor] = {}  # this batch's per-sample mask gradients, per group
        self._handles: list = []
        self.attach()

    def attach(self) -> None:
        if not self._handles:
            self._handles = [
                self.model.get_submodule(name).register_forward_pre_hook(self._hook(entries))
                for name, entries in self.reads.items()
            ]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, entries):
        def hook(module, args):
            x = args[0]
            mask = torch.ones(x.shape[1], device=x.device, dtype=x.dtype)
            for key, idx, root in entries:
                mask[idx] = self.masks[key][root].to(x.dtype)
            out = x * per_channel(mask, x)
            if out.requires_grad:
                kept = x.detach()
                out.register_hook(lambda grad: self._collect(entries, grad, kept))
            return (out, *args[1:])

        return hook

    def _collect(self, entries, grad: torch.Tensor, x: torch.Tensor) -> None:
        g = grad * x  # ∂L/∂m for every sample and position, summed over the map below
        g = g.flatten(2).sum(2) if g.dim() > 2 else g
        for key, idx, root in entries:
            n = self.masks[key].numel()
            acc = self._batch.setdefault(key, torch.zeros(g.shape[0], n, device=g.device, dtype=torch.float64))
            acc.index_add_(1, root, g[:, idx].double())

    def mask_gradients(self) -> dict[str, torch.Tensor]:
        """The last backward pass's per-sample mask gradients, [samples, channels] per group (for tests)."""
        return {k: v.clone() for k, v in self._batch.items()}

    def accumulate(self) -> None:
        """Square the per-sample group gradients (summed over consumers) and add them up over samples."""
        for key, g in self._batch.items():
            self.fisher[key] += (g**2).sum(0).cpu()
        self._batch = {}

    def reset(self) -> None:
        for f in self.fisher.values():
            f.zero_()
        self._batch = {}


@dataclass
class GfpSettings:
    interval: int = setting(
        25, "int", "[1, 1000000]", help="d: iterations of accumulated Fisher scores per decision (paper: 25)"
    )
    channels_per_step: int = setting(
        1, "int", "[1, 100000]", help="live channels masked at each decision, least score/cost first (paper: 1)"
    )
    lr_ratio: float = setting(
        0.04, "real", "(0, 10]", help="the pruning phase trains at this x the fine-tune lr (MMRazor's lr_ratio)"
    )
    prune_linear_inputs: bool = setting(
        True, "bool", help="prune channels read by a linear layer (the authors'); false reproduces MMRazor"
    )
    max_epochs: int = setting(1000, "int", "[1, 1000000]", help="a safety stop: passes over the data while pruning")


@register_method
class GroupFisher(Method):
    name = "gfp"
    description = (
        "Group Fisher pruning (ICML'21): coupled-channel Fisher scores / memory saved, one channel per interval"
    )
    settings = GfpSettings
    uses_allocation = False
    default_normalize = "memory"  # the paper's default; prune.normalize=macs|none override it

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        groups = pruner.groups(model)
        masks = InputMasks(model, groups)
        costs = pruner.channel_costs(model, groups)
        floor = {k: g.min_keep for k, g in groups.items()}
        if not settings.prune_linear_inputs:  # MMRazor: a channel a linear layer reads is never pruned
            floor.update({k: groups[k].channels for k in masks.linear_fed})
        params = [p for p in model.parameters() if p.requires_grad]
        recipe = ctx.training.finetune_recipe
        opt = torch.optim.SGD(
            params,
            lr=settings.lr_ratio * recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=bool(recipe.nesterov),
        )
        iteration, decision, epoch = 0, 0, 0
        if ctx.resume_state is not None:
            iteration, decision, epoch = self._restore(model, masks, opt, ctx)
        reduction = masks.reduction(pruner)
        while not masks.finished and reduction < ctx.target:
            if epoch >= settings.max_epochs:
                raise RuntimeError(
                    f"gfp: reached method.max_epochs={settings.max_epochs} at {reduction:.3f} reduction, short of "
                    f"{ctx.target}; raise method.max_epochs or method.channels_per_step"
                )
            model.train()
            for batch in progress(ctx.training.loader, desc=f"gfp epoch {epoch + 1}", quiet=ctx.quiet):
                loss = ctx.training.step.loss(model, ctx.training.step.to_device(batch, ctx.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                masks.accumulate()
                distributed.average_gradients(params)
                opt.step()
                iteration += 1
                if iteration % settings.interval:
                    continue
                decision += 1
                reduction = self.decide(model, masks, groups, floor, costs, ctx, decision, reduction)
                if masks.finished:
                    break
            epoch += 1
            if not masks.finished:
                self._save(model, masks, opt, ctx, iteration, decision, epoch)
        masks.detach()
        return pruner.remove(model, masks.masked_channels())

    def decide(self, model, masks, groups, floor, costs, ctx: PruneContext, decision: int, reduction: float) -> float:
        """Mask the globally least important live channels (score / cost); returns the new reduction."""
        pruner = ctx.pruner
        for f in masks.fisher.values():
            distributed.all_reduce_sum(f)
        live = masks.live()
        scores = {
            k: torch.where(masks.masks[k].cpu() == 0, torch.full_like(f, float("inf")), f)
            for k, f in masks.fisher.items()
        }
        if any(torch.isnan(s).any() for s in scores.values()):
            print(f"warning: gfp: NaN importance at decision {decision}, step skipped", file=sys.stderr, flush=True)
            ctx.report.metrics({"prune/nan_skipped": 1.0}, decision)
            masks.reset()
            return reduction
        saved = costs.per_channel(pruner.normalize, live)
        scores = normalized(scores, saved)
        order = rank_channels(scores, {k: live[k] - floor[k] for k in live}, masks.units)
        masks.reset()
        if not order:
            raise RuntimeError(
                f"gfp: every group is at its minimum at {reduction:.3f} reduction, short of {ctx.target}; "
                "lower the target or prune.min_channels_ratio"
            )
        before = set(masks.masked_channels())
        reduction = masks.step(pruner, order, min(len(order), self.settings.channels_per_step), ctx.target)
        chosen = [c for c in masks.masked_channels() if c not in before]
        metrics = {**pruner.cost_metrics(reduction), "removed": float(len(masks.masked_channels()))}
        metrics[f"cost_{pruner.normalize}"] = sum(saved[k] for k, _ in chosen)
        ctx.report.step(decision, metrics, model if decision % 10 == 0 or masks.finished else None)
        return reduction

    # --- checkpoints: after every pass over the data ---------------------------------------
    def _save(self, model, masks: InputMasks, opt, ctx: PruneContext, iteration, decision, epoch) -> None:
        ctx.save_state(
            {
                "iteration": iteration,
                "decision": decision,
                "epoch": epoch,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "masks": {k: m.cpu().clone() for k, m in masks.masks.items()},
                "fisher": {k: f.clone() for k, f in masks.fisher.items()},
                "optimizer": opt.state_dict(),
                **ctx.rng_state(),
            }
        )

    def _restore(self, model, masks: InputMasks, opt, ctx: PruneContext) -> tuple[int, int, int]:
        state = ctx.resume_state
        model.load_state_dict(state["model"])
        masks.load(state["masks"])
        for k in masks.fisher:
            masks.fisher[k].copy_(state["fisher"][k])
        opt.load_state_dict(state["optimizer"])
        ctx.restore_rng(state)
        return int(state["iteration"]), int(state["decision"]), int(state["epoch"])
