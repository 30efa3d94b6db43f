"""Weight-dependent gates (W-Gates, Li et al., ECCV-W 2020 / TCSVT 2022): a RECONSTRUCTION.

No public code and no full text at hand; the abstracts say: the pruning decision for a filter is a learned
function of the filter's own weights (no free gate parameter), a binary gate trained end to end, and an
efficiency term in the loss from a latency predict net (or FLOPs) on the network's encoding, the open-gate
counts. What is built here (shared/reference/methods_more.md, section 3, the proposed design):

1. **Gates from weights.** Per channel group, each producer layer has one linear map (shared over its
   filters) from a filter's flattened weights to a score; the group's score per channel is the sum over its
   producers, so coupled channels get one gate, standardised over the group's channels plus a learned
   shift per group (ours: see ``WeightGates.scores``). gate = 1[score > 0] forward, a clipped
   straight-through gradient (for |score| <= 4) backward; the ``min_keep`` top-scoring channels of a group stay open. The
   gates multiply the group's BN outputs (its convolutions' outputs without BN): the forward pass is the
   pruned network.
2. **Cost**, ``cost=flops``: the conv and linear MACs at the open-gate counts (``ChannelCosts.total_macs``,
   differentiable through the gates); ``cost=latency`` (with ``prune.target=latency``): an MLP on the
   groups' open fractions fitted to ``latency_samples`` random width vectors timed on this machine at the
   target batch (``harness.latency.predictor``), its held-out R² and error logged beside the lookup table's.
3. **Training:** weights and gate maps jointly (SGD, ``lr``) on the task loss + λ·max(0, cost / target
   cost − 1), λ growing by ``lam`` per epoch, until the first step whose gates meet the target (at most
   ``epochs``; a gate whose score falls below −1 gets no gradient, so training on past the target only
   closes more). The gates are then frozen (how many flipped in the last epoch is logged), the
   closed channels removed and the cut finished on the pruner's cost (a measured latency included) along
   the channels ordered by score; then the common fine-tune.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core import distributed
from harness.core.costs import ChannelCosts
from harness.core.errors import ConfigError, NumericalError
from harness.core.hooks import HookSet, channel_scaler
from harness.core.settings import setting
from harness.core.surgery import ChannelGroup, ChannelPruner
from harness.core.train import progress
from harness.latency.predictor import LatencyPredictor, fit_and_compare, time_random_widths
from methods.base import Method, PruneContext, register_method


@dataclass
class WGatesSettings:
    cost: str = setting(
        "flops", choices=("flops", "latency"), help="the efficiency term: MACs, or a fitted latency predictor"
    )
    epochs: int = setting(4, "int", "[1, 1000]", help="most epochs of joint training of weights and gates [D]")
    lr: float = setting(0.01, "real", "(0, 10]", help="SGD lr (momentum 0.9) of the weights [D]")
    gate_lr: float = setting(0.1, "real", "(0, 100]", help="SGD lr (no momentum) of the gate maps and shifts [D]")
    lam: float = setting(2.0, "real", "(0, 1000]", help="λ of the hinge cost term grows by this much per epoch [D]")
    latency_samples: int = setting(300, "int", "[8, 100000]", help="random width vectors timed for the predictor")
    holdout: float = setting(0.2, "real", "(0, 0.9]", help="share of the timed vectors held out to report its error")
    seed: int = setting(0, "int", "[0, 1000000000]", help="the width vectors' random generator")


OPEN_AT_START = 3.0  # a group's shift at the start: scores are z-scores + 3, so all gates are open
WINDOW = 4.0  # the straight-through gradient passes for |score| <= WINDOW


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _site(name: str) -> str:
    return name.replace(".", "__")


class WeightGates(nn.Module):
    """The gate maps of every group of ``model`` and the hooks that apply the gates (``attach``/``detach``).
    ``current`` holds this forward pass's gates, computed once per pass by a pre-hook on the model."""

    def __init__(self, model: nn.Module, groups: dict[str, ChannelGroup]):
        super().__init__()
        self._model = [model]  # not a submodule: the gate maps are trained beside it
        self.members = {key: list(g.members) for key, g in groups.items()}
        self.sites = {key: list(g.norms or g.members) for key, g in groups.items()}
        self.min_keep = {key: g.min_keep for key, g in groups.items()}
        self.maps = nn.ModuleDict()
        for members in self.members.values():
            for name in members:
                weight = model.get_submodule(name).weight
                linear = nn.Linear(weight[0].numel(), 1, bias=False).to(weight.device)
                nn.init.normal_(linear.weight, 0.0, 1.0 / weight[0].numel() ** 0.5)
                self.maps[_site(name)] = linear
        # One shift per group; every score starts at 3 + its z-score: open, and inside the gradient's window.
        self.shifts = nn.ParameterDict(
            {_site(key): nn.Parameter(torch.tensor(OPEN_AT_START, device=_device(model))) for key in self.members}
        )
        self.current: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def scores(self) -> dict[str, torch.Tensor]:
        """Per group, one score per channel: the sum over its producers of the map of each filter's weights,
        standardised over the group's channels, plus the group's shift. (The standardisation is ours: with
        a raw linear map the shared shift moves a whole layer's gates across the threshold at once.)"""
        out = {}
        for key, members in self.members.items():
            raw = sum(self.maps[_site(n)](self.model.get_submodule(n).weight.flatten(1)).squeeze(1) for n in members)
            z = (raw - raw.mean()) / (raw.std() + 1e-8) if raw.numel() > 1 else raw * 0
            out[key] = z + self.shifts[_site(key)]
        return out

    def gates(self) -> dict[str, torch.Tensor]:
        """Per group, 0/1 per channel (1[score > 0], the ``min_keep`` highest always 1) with a clipped
        straight-through gradient (1 / WINDOW for |score| <= WINDOW, else 0)."""
        out = {}
        for key, s in self.scores().items():
            window = (s / WINDOW).clamp(-1.0, 1.0)
            gate = (s > 0).to(s.dtype) + (window - window.detach())  # exactly 0 or 1 forward
            forced = torch.zeros_like(s, dtype=torch.bool)
            forced[s.detach().topk(min(self.min_keep[key], s.numel())).indices] = True
            out[key] = torch.where(forced, torch.ones_like(gate), gate)
        return out

    def open_counts(self) -> dict[str, torch.Tensor]:
        return {key: g.sum() for key, g in self.current.items()}

    def attach(self) -> None:
        if self._hooks:
            return
        scalers = HookSet(
            self.model,
            [
                (site, channel_scaler(lambda key=key: self.current[key]))
                for key, sites in self.sites.items()
                for site in sites
            ],
        )
        refresh = self.model.register_forward_pre_hook(lambda module, args: self._refresh())
        self._hooks = [scalers, refresh]

    def _refresh(self) -> None:
        self.current = self.gates()

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


@register_method
class WGates(Method):
    name = "wgates"
    description = "W-Gates (Li et al. 2020), RECONSTRUCTED from the abstracts: binary gates computed from each filter's weights, trained with a MACs or fitted-latency cost"
    settings = WGatesSettings
    reconstruction = True
    uses_allocation = False  # the gates decide the widths
    uses_normalize = False

    def check_target(self, model: nn.Module, pruner: ChannelPruner, target: float) -> None:
        if self.settings.cost == "latency" and pruner.cost_name == "macs":
            raise ConfigError(
                "method.cost=latency trains against latency measured at measure.target_batch: use it with "
                "prune.target=latency prune.latency_reduction=<r>, or set method.cost=flops"
            )

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        groups = pruner.groups(model)
        gates = WeightGates(model, groups)
        cost, metrics = self.cost_term(model, gates, groups, ctx)
        ctx.report.metrics({f"wgates/{k}": v for k, v in metrics.items()}, 0)
        opt = torch.optim.SGD(
            [
                {"params": model.parameters(), "weight_decay": 5e-4},
                # no momentum: a shift pushed the same way for epochs would close a whole layer in one step
                {"params": gates.parameters(), "weight_decay": 0.0, "lr": float(settings.gate_lr), "momentum": 0.0},
            ],
            lr=float(settings.lr),
            momentum=0.9,
        )
        epoch, step = 0, 0
        state = ctx.resume_state
        if state is not None:
            model.load_state_dict(state["model"])
            gates.load_state_dict(state["gates"])
            opt.load_state_dict(state["optimizer"])
            ctx.restore_rng(state)
            epoch, step = int(state["epoch"]), int(state["step"])
        gates.attach()
        flipped = 0
        try:
            met = state is not None and bool(state["met"])
            while epoch < int(settings.epochs) and not met:
                before = {k: (s > 0) for k, s in _detached(gates.scores()).items()}
                step, met, sums = self._epoch(model, gates, cost, opt, ctx, epoch, step)
                distributed.sync_buffers(model)
                epoch += 1
                with torch.no_grad():
                    gates._refresh()
                    ratio = float(cost(gates.open_counts()))
                after = {k: (s > 0) for k, s in _detached(gates.scores()).items()}
                flipped = sum(int((before[k] != after[k]).sum()) for k in after)
                ctx.report.metrics(
                    {
                        "wgates/loss": sums["loss"] / max(sums["n"], 1),
                        "wgates/cost": ratio,
                        "wgates/lambda": float(settings.lam) * step / len(ctx.training.loader),
                        "wgates/flipped": flipped,
                        "wgates/open": sum(float(c) for c in gates.open_counts().values()),
                        **{f"wgates/open/{k}": float(c) for k, c in gates.open_counts().items()},
                    },
                    epoch,
                )
                ctx.report.step(epoch, {"cost_ratio": ratio}, model)
                ctx.save_state(
                    {
                        "epoch": epoch,
                        "step": step,
                        "met": met,
                        "model": copy.deepcopy(model.state_dict()),
                        "gates": copy.deepcopy(gates.state_dict()),
                        "optimizer": copy.deepcopy(opt.state_dict()),
                        **ctx.rng_state(),
                    }
                )
            ctx.report.metrics({"wgates/flipped_last_epoch": flipped, "wgates/met_by_gates": float(met)}, epoch)
        finally:
            gates.detach()
        return self.freeze(model, gates, ctx)

    def _epoch(self, model, gates: WeightGates, cost, opt, ctx: PruneContext, epoch: int, step: int):
        """One pass over the training data (or until the gates meet the target): the task's loss plus the
        cost term, its weight ramped up with the steps. Returns the step count, whether the gates met the
        target, and the pass's loss and cost sums."""
        settings = self.settings
        limit = 1.0 - ctx.target  # the target's share of the dense cost
        trained = [*model.parameters(), *gates.parameters()]
        steps_per_epoch = len(ctx.training.loader)
        model.train()
        sums, met = {"loss": 0.0, "cost": 0.0, "n": 0}, False
        for batch in progress(ctx.training.loader, desc=f"wgates {epoch + 1}/{settings.epochs}", quiet=ctx.quiet):
            batch = ctx.training.step.to_device(batch, ctx.device)
            task_loss = ctx.training.step.loss(model, batch)  # the forward pass sets this batch's gates
            ratio = cost(gates.open_counts())
            lam = float(settings.lam) * (step + 1) / steps_per_epoch
            loss = task_loss + lam * torch.relu(ratio / limit - 1.0)
            value = distributed.mean_scalar(loss.item())
            if not torch.isfinite(torch.tensor(value)):
                raise NumericalError(f"wgates: the loss became {value} at step {step + 1}; lower method.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(trained)
            opt.step()
            step += 1
            size = ctx.training.step.size(batch)
            sums["loss"] += value * size
            sums["cost"] += float(ratio.detach()) * size
            sums["n"] += size
            with torch.no_grad():
                gates._refresh()
                met = float(cost(gates.open_counts())) <= limit
            if met:  # the first step whose gates meet the target ends the training
                break
        return step, met, sums

    def freeze(self, model: nn.Module, gates: WeightGates, ctx: PruneContext) -> nn.Module:
        """Remove the closed channels, the cut finished on the pruner's cost along the channels by score."""
        pruner = ctx.pruner
        with torch.no_grad():
            scores = _detached(gates.scores())
        names = {m: n for n, m in model.named_modules()}
        order = pruner.removal_order(model, lambda group: scores[names[group[0].dep.target.module]], normalize=False)
        closed = sum(1 for key, i in order if scores[key][i] <= 0)
        build = lambda k: pruner.remove(copy.deepcopy(model), order[:k])  # noqa: E731
        if pruner.reduction(build(len(order))) < ctx.target:
            raise ConfigError(pruner.unreachable_message(model, ctx.target))
        k = pruner.finish(build, ctx.target, len(order))
        ctx.report.metrics({"wgates/closed_by_gates": closed, "wgates/removed": k}, 0)
        return pruner.remove(model, order[:k])

    def cost_term(self, model: nn.Module, gates: WeightGates, groups: dict[str, ChannelGroup], ctx: PruneContext):
        """(open counts -> cost as a share of the dense network's, what was logged about it)."""
        if self.settings.cost == "flops":
            costs = ChannelCosts(model, ctx.pruner.example_inputs, groups)
            dense = costs.total_macs()
            return (lambda counts: costs.total_macs(counts) / dense), {}
        if ctx.latency_batch is None:
            raise ConfigError("method.cost=latency needs prune.target=latency (the batch it measures on)")
        generator = torch.Generator().manual_seed(int(self.settings.seed))
        pruner = ctx.pruner
        if distributed.is_main():
            timings = time_random_widths(
                model, pruner, ctx.latency_batch, int(self.settings.latency_samples), generator, quiet=ctx.quiet
            )
            table_ms = lambda widths: pruner.cost(pruner.shrink_to(copy.deepcopy(model), widths))  # noqa: E731
            predictor, report = fit_and_compare(timings, float(self.settings.holdout), table_ms, generator)
            shared = (timings.keys, predictor.state_dict(), float(timings.ms[0]), report)
        else:
            shared = None
        keys, weights, dense_ms, report = distributed.broadcast(shared)
        predictor = LatencyPredictor(len(keys), dense_ms)
        predictor.load_state_dict(weights)
        predictor.requires_grad_(False)
        full = {k: groups[k].channels for k in keys}
        dense = float(predictor(torch.ones(len(keys))))

        def ratio(counts: dict[str, torch.Tensor]) -> torch.Tensor:
            fractions = torch.stack([torch.as_tensor(counts[k], dtype=torch.float32) / full[k] for k in keys])
            return predictor(fractions.cpu()) / dense

        return ratio, {f"predictor/{k}": v for k, v in report.items()}


def _detached(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: s.detach() for k, s in scores.items()}
