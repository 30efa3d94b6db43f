"""Gate Decorator (You et al., NeurIPS'19): gated BatchNorm, Taylor importance, Tick-Tock, melt.

Each BatchNorm is gated: BN(x)·φ·mask. φ starts at the BN's γ, after which γ is fixed at 1 and
β becomes β/γ (clamped to ±10), so the gated network computes what the dense one did. Channels tied
by a residual add form one group (from torch-pruning's dependency graph): each BN in a group keeps its
own φ, as in the authors' code, but the group has one mask and its score is the sum of its BNs'.

Tick: conv weights frozen; φ, β and the classifier train at a constant lr for one pass over the tick
data while |∂L/∂φ · φ| is accumulated per batch; then the lowest p × (live channels) are masked,
ranked globally, each layer keeping its minimum. Tock: every T ticks, everything trains for a few
epochs with loss + λ·Σ|φ| and a triangular lr. The tick that reaches the target masks the fewest channels that do (with a latency target, its cut
is corrected by paired measurements along the whole masking sequence, so earlier ticks' channels may
come back: ``harness.core.masks``). Then the gates are melted into the BN affine and the masked channels
removed physically, leaving only vanilla layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from harness.core import distributed
from harness.core.allocation import knapsack_step, rank_channels
from harness.core.costs import normalized
from harness.core.hooks import HookSet, channel_scaler, frozen
from harness.core.masks import ChannelMasks
from harness.core.settings import setting
from harness.core.surgery import ChannelGroup, channel_widths
from harness.core.train import TrainingHook
from methods.base import Method, PruneContext, register_method


class Gates(ChannelMasks):
    """φ per channel and one mask per channel group, applied with forward hooks.

    A group's gates sit on its BatchNorms; a group without BN (e.g. a VGG FCN) gets "gated convs":
    the gates sit on the outputs of its convolutions, start at 1 and melt into their weights.
    """

    def __init__(self, model: nn.Module, groups: dict[str, ChannelGroup], beta_clamp: float = 10.0):
        masks = {key: torch.ones(g.channels, device=_device(model)) for key, g in groups.items()}
        super().__init__(model, masks, {k: g.units for k, g in groups.items() if g.units})
        self.groups = {key: g.norms or g.members for key, g in groups.items()}
        self.phi: dict[str, nn.Parameter] = {}
        self.group_of: dict[str, str] = {}
        with torch.no_grad():
            for key, sites in self.groups.items():
                for name in sites:
                    layer = model.get_submodule(name)
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                        gamma = layer.weight.detach().clone()
                        safe = torch.where(gamma.abs() < 1e-8, torch.full_like(gamma, 1e-8), gamma)
                        layer.bias.copy_((layer.bias / safe).clamp(-beta_clamp, beta_clamp))
                        layer.weight.fill_(1.0)
                        layer.weight.requires_grad_(False)
                        self.phi[name] = nn.Parameter(gamma)
                    else:  # gated conv: φ = 1 leaves the function unchanged
                        self.phi[name] = nn.Parameter(torch.ones(groups[key].channels, device=_device(model)))
                    self.group_of[name] = key
        self._hooks = HookSet(model, {})
        self.attach()

    def shifts(self) -> list[nn.Parameter]:
        """What a tick trains besides φ: the BN shifts β (and the gated convs' biases)."""
        return [p for p in (self.model.get_submodule(n).bias for n in self.phi) if p is not None]

    def _scale(self, name: str):
        return lambda: self.phi[name] * self.masks[self.group_of[name]]

    def attach(self) -> None:
        if not self._hooks:
            self._hooks = HookSet(self.model, {n: channel_scaler(self._scale(n)) for n in self.phi})

    def detach(self) -> None:
        self._hooks.remove()

    def parameters(self) -> list[nn.Parameter]:
        return list(self.phi.values())

    def l1(self) -> torch.Tensor:
        return sum(p.abs().sum() for p in self.phi.values())

    @torch.no_grad()
    def melt(self) -> None:
        """Fold φ·mask into each gated layer and remove the hooks: a BN gets γ' = φ·mask and
        β' = β·φ·mask; a gated conv has its filters and bias scaled by φ·mask."""
        self.detach()
        for name, phi in self.phi.items():
            layer = self.model.get_submodule(name)
            scale = phi.detach() * self.masks[self.group_of[name]]
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.weight.copy_(layer.weight * scale)
                layer.weight.requires_grad_(True)
            else:
                layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
            if layer.bias is not None:
                layer.bias.mul_(scale)


class GateSparsity(TrainingHook):
    """λ·Σ|φ|: the tock's sparsity term."""

    def __init__(self, gates: Gates, weight: float):
        self.gates, self.weight = gates, weight

    def extra_loss(self, model):
        return self.weight * self.gates.l1() if self.weight else None


@dataclass
class GbnSettings:
    tick_p: float = setting(
        0.002, "real", "(0, 1]", help="each tick masks p x (live channels), ranked globally; VGG-16: 0.005"
    )
    tick_lr: float = setting(
        0.001, "real", "(0, 100]", help="constant lr of the tick (gates, BN shift and classifier; convs frozen)"
    )
    tick_momentum: float = setting(0.9, "real", "[0, 1)", help="SGD momentum of the tick")
    tick_samples: int | None = setting(
        None,
        "int",
        "[1, inf)",
        nullable=True,
        help="samples per tick pass; null = the whole training set, as in the authors' code",
    )
    tock_first: bool = setting(True, "bool", help="the authors' schedule opens with a tock before the first tick")
    tock_every: int = setting(10, "int", "[0, 100000]", help="T: a tock after every T ticks (0 = never)")
    tock_epochs: int = setting(10, "int", "[0, 100000]", help="epochs of each tock")
    sparsity: float = setting(0.001, "real", "[0, 100]", help="lambda of lambda * sum|phi| during tocks")
    tock_min_lr: float = setting(
        0.001, "real", "(0, 100]", help="triangular lr per iteration: min -> max at mid-tock -> min"
    )
    tock_max_lr: float = setting(0.01, "real", "(0, 100]", help="the triangular lr's peak, at mid-tock")
    tock_momentum: float = setting(0.9, "real", "[0, 1)", help="SGD momentum of the tocks")
    tock_weight_decay: float = setting(0.0005, "real", "[0, 1]", help="weight decay of the tocks")
    group_score: str = setting(
        "sum", choices=("sum", "mean"), help="a residual group's score: the sum over its gates (the authors'), or mean"
    )
    beta_clamp: float = setting(
        10.0, "real", "(0, 1000000]", help="beta/gamma is clamped to +-this when the gates take over gamma"
    )
    max_ticks: int = setting(5000, "int", "[1, 10000000]", help="a safety stop")


@register_method
class GateDecorator(Method):
    name = "gbn"
    description = "Gate Decorator (NeurIPS'19): gated BN, Taylor importance, Tick-Tock schedule, gates melted into BN"
    settings = GbnSettings
    uses_allocation = True  # knapsack: each tick's cut allocated by the knapsack (harness.core.allocation)

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        groups = pruner.groups(model)
        cost_aware = pruner.normalize != "none" or pruner.allocation == "knapsack"
        costs = pruner.channel_costs(model, groups) if cost_aware else None
        gates = Gates(model, groups, settings.beta_clamp)
        removable_floor = {k: g.min_keep for k, g in groups.items()}
        tick = 0
        if ctx.resume_state is not None:
            tick = self._restore(model, gates, ctx)
        elif settings.tock_first and settings.tock_epochs and ctx.target > 0:
            self.tock(model, gates, ctx, 0)
        reduction = gates.reduction(pruner)
        while not gates.finished and reduction < ctx.target:
            if tick >= settings.max_ticks:
                raise RuntimeError(
                    f"gbn: reached method.max_ticks={settings.max_ticks} at {reduction:.3f} MACs "
                    f"reduction, short of {ctx.target}; raise method.max_ticks or method.tick_p"
                )
            scores = self.tick(model, gates, ctx)
            live = gates.live()
            if pruner.normalize != "none":  # Taylor score per unit of what a channel's removal saves
                scores = normalized(scores, costs.per_channel(pruner.normalize, live))
            order = rank_channels(scores, {k: live[k] - removable_floor[k] for k in live}, gates.units)
            if not order:
                break
            n = min(len(order), max(1, int(settings.tick_p * sum(live.values()))))
            if pruner.allocation == "knapsack":  # this tick's cut, allocated by HALP's knapsack instead
                chosen = knapsack_step(scores, removable_floor, order[:n], costs, costs.kind, gates.units)
                order, n = chosen + [c for c in order if c not in set(chosen)], len(chosen)
            reduction = gates.step(pruner, order, n, ctx.target)
            tick += 1
            widths = channel_widths(gates.vanilla(pruner))
            ctx.report.step(
                tick, {**pruner.cost_metrics(reduction), **{f"channels/{k}": v for k, v in widths.items()}}, model
            )
            if settings.tock_every and tick % settings.tock_every == 0 and not gates.finished:
                self.tock(model, gates, ctx, tick // settings.tock_every)
            self._save(model, gates, ctx, tick)
        gates.melt()
        pruner.remove(model, gates.masked_channels())
        return model

    # --- the schedule ----------------------------------------------------------------------
    def tick(self, model: nn.Module, gates: Gates, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """One pass over the tick data training φ, β and the classifier; returns the Taylor score
        per group and channel (+inf for channels already masked). In a distributed run each rank scores
        its shard and the scores are summed; the gradients that train φ, β and the classifier are averaged."""
        trainable = gates.parameters() + gates.shifts()
        trainable += [p for m in _output_layers(model, ctx) for p in m.parameters()]
        opt = torch.optim.SGD(trainable, lr=self.settings.tick_lr, momentum=self.settings.tick_momentum)
        taylor = {n: torch.zeros_like(p) for n, p in gates.phi.items()}
        model.train()
        with frozen(model.parameters(), except_for=trainable):
            for batch in self._tick_batches(ctx):
                loss = ctx.training.step.loss(model, ctx.training.step.to_device(batch, ctx.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for n, phi in gates.phi.items():
                    taylor[n] += (phi.grad * phi).detach().abs()
                distributed.average_gradients(trainable)
                opt.step()
        for t in taylor.values():
            distributed.all_reduce_sum(t)
        scores = {}
        for key, norms in gates.groups.items():
            s = sum(taylor[n] for n in norms).double().cpu()
            if self.settings.group_score == "mean":
                s = s / len(norms)
            scores[key] = torch.where(gates.masks[key].cpu() == 0, torch.full_like(s, float("inf")), s)
        return scores

    def _tick_batches(self, ctx: PruneContext):
        """Batches of the training data until ``method.tick_samples`` samples (all of it when null)."""
        seen = 0
        for batch in ctx.training.loader:
            yield batch
            seen += ctx.training.step.size(batch) * distributed.world_size()  # every rank reads its shard
            if self.settings.tick_samples and seen >= self.settings.tick_samples:
                return

    def tock(self, model: nn.Module, gates: Gates, ctx: PruneContext, index: int) -> None:
        settings = self.settings
        recipe = OmegaConf.create(
            {
                "epochs": settings.tock_epochs,
                "lr": settings.tock_max_lr,
                "min_lr": settings.tock_min_lr,
                "schedule": "triangular",
                "momentum": settings.tock_momentum,
                "weight_decay": settings.tock_weight_decay,
                "nesterov": False,
                "milestones": [],
                "gamma": 0.1,
            }
        )
        offset = index * settings.tock_epochs
        ctx.training.train(
            model,
            ctx.training.loader,
            recipe,
            hooks=[GateSparsity(gates, settings.sparsity)],
            params=list(model.parameters()) + gates.parameters(),
            desc=f"tock {index}",
            on_epoch=lambda e, m: ctx.report.metrics({f"tock/{k}": v for k, v in m.items()}, offset + e),
            evaluate=ctx.report.epoch_metrics,
        )

    # --- checkpoints: after every tick (and its tock) --------------------------------------
    def _save(self, model: nn.Module, gates: Gates, ctx: PruneContext, tick: int) -> None:
        ctx.save_state(
            {
                "tick": tick,
                "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                "phi": {n: p.detach().cpu().clone() for n, p in gates.phi.items()},
                "masks": {k: m.cpu().clone() for k, m in gates.masks.items()},
                "finished": gates.finished,
                **ctx.rng_state(),
            }
        )

    def _restore(self, model: nn.Module, gates: Gates, ctx: PruneContext) -> int:
        state = ctx.resume_state
        model.load_state_dict(state["model"])
        with torch.no_grad():
            for n, p in gates.phi.items():
                p.copy_(state["phi"][n])
        gates.load(state["masks"])
        gates.finished = bool(state.get("finished", False))
        ctx.restore_rng(state)
        return int(state["tick"])


def _output_layers(model: nn.Module, ctx: PruneContext) -> list[nn.Module]:
    return [model.get_submodule(n) for n in ctx.pruner.ignored_names]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
