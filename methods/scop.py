"""SCOP (Tang et al., NeurIPS'20): scientific control with knockoff features, as the authors' code
(huawei-noah/Efficient-Computing, Pruning/SCOP_NeurIPS2020 train.py, pruning_modules.py) does it.

Every network tensor is frozen. A control scale β (per channel, init 0.5, clamped to [0, 1]) sits at
each channel group's BatchNorm outputs (conv outputs where a group has no BN). A batch is [real;
knockoff]: at every controlled layer the real half becomes β·f(X) + (1−β)·f(X̃) while the knockoff
half carries f(X̃) on; the loss is cross-entropy on the real half. β is trained with Adam (lr 4e-3,
betas 0.5/0.9). A channel whose β falls toward the knockoff side serves label-free features as well
as real ones: it is redundant. Score = |γ|·(β − (1 − β)), summed over a group's BNs (the authors').

Each group then loses the same fraction p of its channels (the paper's uniform rate; lowest scores
first, each layer keeping its minimum); p is the smallest rate that meets the MACs target, found by
bisection over the rates where some layer's count changes. BN statistics are recalibrated on the
training data after the surgery, as the authors do, before the common fine-tune.

Knockoffs: the authors draw X̃ from a pre-trained generator whose weights are not available offline.
``knockoff: shuffle`` (the only kind here) permutes the batch, as the MindSpore port does: a declared
deviation, since a permuted image follows X's distribution but is not label-free with respect to its
own label, only with respect to the real image it is mixed with.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core import distributed
from harness.core.errors import ConfigError
from harness.core.hooks import HookSet, frozen, per_channel
from harness.core.settings import setting
from harness.core.surgery import ChannelPruner
from harness.core.train import progress
from methods.base import Method, PruneContext, register_method


class KnockoffControl:
    """β per channel at each site of each group, applied by forward hooks to a [real; knockoff] batch."""

    def __init__(self, model: nn.Module, pruner: ChannelPruner):
        groups = pruner.groups(model)
        self.model = model
        self.sites = {key: g.norms or g.members for key, g in groups.items()}
        device = next(model.parameters()).device
        self.beta = {
            site: nn.Parameter(torch.full((groups[key].channels,), 0.5, device=device))
            for key, sites in self.sites.items()
            for site in sites
        }
        self.hooks = HookSet(model, {site: self._mix(site) for site in self.beta})

    def _mix(self, site: str):
        def hook(module, inputs, output):
            half = output.shape[0] // 2
            b = per_channel(self.beta[site], output)
            real, knock = output[:half], output[half:]
            return torch.cat([b * real + (1 - b) * knock, knock])

        return hook

    def parameters(self) -> list[nn.Parameter]:
        return list(self.beta.values())

    def remove(self) -> None:
        self.hooks.remove()

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        """Per group: Σ over its sites of |γ|·(2β − 1) (just 2β − 1 where a site has no BN scale)."""
        out = {}
        for key, sites in self.sites.items():
            total = 0
            for site in sites:
                layer = self.model.get_submodule(site)
                gamma = (
                    layer.weight.abs()
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.weight is not None
                    else 1.0
                )
                total = total + gamma * (2 * self.beta[site] - 1)
            out[key] = total.detach().cpu().double()
        return out


def make_knockoff(kind: str, x: torch.Tensor) -> torch.Tensor:
    if kind == "shuffle":
        return x[torch.randperm(len(x), device=x.device)]
    raise ValueError(f"unknown knockoff kind {kind!r}")


def uniform_rate_plan(
    pruner: ChannelPruner, model: nn.Module, scores: dict[str, torch.Tensor], target: float
) -> tuple[list[tuple[str, int]], float]:
    """The channels to remove at the smallest uniform rate p that cuts MACs by ``target``, and p. With a
    measured latency target the cut may stop between two rates (p is then the lower one)."""
    groups = pruner.groups(model)
    order = {k: torch.argsort(scores[k], stable=True).tolist() for k in groups if k in scores}

    def plan(p: float) -> list[tuple[str, int]]:
        out = []
        for k, idxs in order.items():
            g = groups[k]
            n = min(math.floor(p * g.channels + 1e-9), g.channels - g.min_keep)
            out += [(k, i) for i in idxs[: max(0, n)]]
        return out

    rates = sorted({i / groups[k].channels for k in order for i in range(groups[k].channels + 1)})
    build = lambda i: pruner.remove(copy.deepcopy(model), plan(rates[i]))  # noqa: E731
    if pruner.reduction(build(len(rates) - 1)) < target:
        raise ConfigError(pruner.unreachable_message(model, target))
    if not pruner.measured_cost:
        rate = rates[pruner.finish(build, target, len(rates) - 1)]
        return plan(rate), rate
    # A measured latency jumps between two uniform rates (several layers narrow at once): the correction
    # walks the channels between consecutive rates one by one, lowest score first.
    sequence: list[tuple[str, int]] = []
    for lower, upper in zip(rates, rates[1:]):
        done = set(plan(lower))
        sequence += sorted((c for c in plan(upper) if c not in done), key=lambda c: float(scores[c[0]][c[1]]))
    k = pruner.finish(lambda k: pruner.remove(copy.deepcopy(model), sequence[:k]), target, len(sequence))
    rate = max(r for r in rates if len(plan(r)) <= k)  # the uniform rate reached; part of the next one on top
    return sequence[:k], rate


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader, device: torch.device, samples: int | None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as plain averages over
    ``samples`` training samples (all of one pass when None). Returns the number of samples used.
    In a distributed run each rank reads its share of ``samples`` and the averages are averaged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x, _ in loader:
            model(x.to(device))
            seen += len(x) * distributed.world_size()
            if samples and seen >= samples:
                break
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.train(was_training)
    with torch.no_grad():  # every rank read as many batches: the mean of the ranks' averages is the average
        for m in norms:
            for stat in (m.running_mean, m.running_var):
                distributed.all_reduce_sum(stat).div_(distributed.world_size())
    return seen


@dataclass
class ScopSettings:
    knockoff: str = setting(
        "shuffle",
        choices=("shuffle",),
        help="knockoffs by permuting the batch (MindSpore port); the authors' generator is not available offline",
    )
    epochs: int = setting(20, "int", "[0, 100000]", help="beta training epochs, every network weight frozen")
    lr: float = setting(0.004, "real", "(0, 100]", help="Adam")
    beta1: float = setting(0.5, "real", "[0, 1)", help="Adam beta1")
    beta2: float = setting(0.9, "real", "[0, 1)", help="Adam beta2")
    recalibrate_samples: int | None = setting(
        None,
        "int",
        "[1, inf)",
        nullable=True,
        help="BN statistics re-estimated after surgery over this many training samples (null: one pass)",
    )


@register_method
class SCOP(Method):
    name = "scop"
    description = "SCOP (NeurIPS'20): knockoff scientific control; beta per channel learned with the network frozen, uniform per-layer rate to the target"
    needs_scores = True
    settings = ScopSettings
    uses_allocation = False  # one uniform rate per layer
    uses_normalize = False

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        settings, pruner = self.settings, ctx.pruner
        control = KnockoffControl(model, pruner)
        try:
            with frozen(model.parameters()):
                self.learn_controls(model, control, ctx)
        finally:
            control.remove()
        scores = control.scores()
        plan, rate = uniform_rate_plan(pruner, model, scores, ctx.target)
        pruner.remove(model, plan)
        recalibrated = recalibrate_bn(model, ctx.training.loader, ctx.device, settings.recalibrate_samples)
        reduction = pruner.reduction(model)
        ctx.report.metrics(
            {
                "scop/rate": rate,
                "scop/recalibration_samples": recalibrated,
                "scop/beta_below_half": float(
                    torch.cat([b.detach().flatten() for b in control.parameters()]).lt(0.5).float().mean()
                ),
            },
            0,
        )
        ctx.report.step(1, pruner.cost_metrics(reduction), model)
        return model

    def learn_controls(self, model: nn.Module, control: KnockoffControl, ctx: PruneContext) -> None:
        """Train β (everything else frozen, BN on its running statistics) on CE of the real half."""
        settings = self.settings
        opt = torch.optim.Adam(control.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2))
        model.eval()
        start = 0
        if ctx.resume_state is not None:
            state = ctx.resume_state
            with torch.no_grad():
                for site, b in control.beta.items():
                    b.copy_(state["beta"][site])
            opt.load_state_dict(state["optimizer"])
            ctx.restore_rng(state)
            start = int(state["epoch"])
        for epoch in range(start, int(settings.epochs)):
            loss_sum = correct = n = 0
            for x, y in progress(ctx.training.loader, desc=f"scop {epoch + 1}/{settings.epochs}", quiet=ctx.quiet):
                x, y = x.to(ctx.device), y.to(ctx.device)
                out = model(torch.cat([x, make_knockoff(settings.knockoff, x)]))[: len(x)]
                loss = ctx.training.loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(control.parameters())
                opt.step()
                with torch.no_grad():
                    for b in control.parameters():
                        b.clamp_(0, 1)
                loss_sum += loss.item() * len(x)
                correct += (out.argmax(1) == y).sum().item() if out.dim() == 2 else 0
                n += len(x)
            betas = torch.cat([b.detach().flatten() for b in control.parameters()])
            ctx.report.metrics(
                {
                    "scop/loss": loss_sum / max(n, 1),
                    "scop/train_acc": correct / max(n, 1),
                    "scop/beta_mean": betas.mean().item(),
                    "scop/beta_below_half": betas.lt(0.5).float().mean().item(),
                },
                epoch,
            )
            ctx.save_state(
                {
                    "epoch": epoch + 1,
                    "beta": {k: b.detach().clone() for k, b in control.beta.items()},
                    "optimizer": copy.deepcopy(opt.state_dict()),
                    **ctx.rng_state(),
                }
            )
