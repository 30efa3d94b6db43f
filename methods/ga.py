"""GA channel pruning (Hu et al., arXiv 1805.11394, 2018): a RECONSTRUCTION.

No public code; the abstract and a third-party reading note say: layer by layer, each layer's pruning ratio
from a sensitivity analysis, the channels to keep chosen by a genetic algorithm whose fitness is the next
layer's reconstruction error (a "two-step approximation" makes it cheap), and a distillation fine-tune from
the unpruned network after each layer. What is built here (shared/reference/methods_more.md, section 4,
the proposed design), with our choices marked in the settings' help:

1. **Sensitivity** on the validation split: every channel group pruned alone (its lowest-L1 channels) at
   each of ``ratios``; what it costs is the rise of the task's loss on ``sensitivity_samples`` held-out
   images (the loss, not the accuracy: smoother on few images, and defined for every task).
2. **Allocation:** greedily, the group step with the least loss rise per unit of the pruner's cost saved
   (MACs, or predicted latency), one channel at a time; the shortest prefix of that sequence that meets the
   target (``ChannelPruner.finish``: a latency target is then corrected by measurement; only the counts
   matter, so the lowest-L1 channels stand in for the GA's choice there).
3. **Per group, in network order:** the inputs of the group's consumer layers (convolutions and linear
   layers reading its channels) on ``samples`` training images; their outputs with a channel subset S are
   linear in S, so the reconstruction error of every keep vector is the quadratic form rᵀGr (r the removed
   channels, G the Gram matrix of the channels' contributions, summed over the consumers' mean squared
   errors). The GA (population, generations, tournament selection, uniform crossover, bit-flip mutation,
   repair to the exact count, the best kept) runs on G from ``positions`` sampled output positions per image;
   the second step re-scores its ``rescore`` best on G from 4× the images at every position.
4. The group's channels go (the shared surgery), then ``kd_epochs / groups`` of distillation from the
   dense network; the common fine-tune follows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from harness.core import distributed
from harness.core.errors import ConfigError
from harness.core.gate import gated
from harness.core.settings import setting
from harness.core.surgery import ChannelGroup, ChannelPruner, eval_mode
from harness.core.train import progress
from methods.base import Method, PruneContext, register_method
from methods.l1 import FilterL1Importance
from methods.teacher import distill

_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


@dataclass
class GASettings:
    ratios: list = setting(
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "list",
        help="shares of a group's channels the sensitivity scan removes",
    )
    sensitivity_samples: int = setting(1024, "int", "[1, 1000000]", help="validation images per sensitivity point")
    samples: int = setting(64, "int", "[1, 100000]", help="training images whose consumer inputs the GA's fitness uses")
    positions: int = setting(16, "int", "[0, 100000]", help="output positions sampled per image in step 1 (0: all)")
    population: int = setting(32, "int", "[2, 100000]", help="keep vectors per generation")
    generations: int = setting(30, "int", "[0, 100000]", help="GA generations per group")
    tournament: int = setting(3, "int", "[1, 1000]", help="individuals drawn per tournament selection")
    mutation: float | None = setting(None, "real", "[0, 1]", help="bit-flip probability (null: 1 / channels)")
    rescore: int = setting(
        5, "int", "[0, 1000]", help="best candidates re-scored on 4x the images, every position (0: off)"
    )
    kd_epochs: float = setting(
        1.0, "real", "[0, 1000]", help="distillation after the groups, in epochs, all groups together"
    )
    kd_lr: float = setting(0.01, "real", "(0, 10]", help="SGD lr of the distillation steps [D]")
    temperature: float = setting(4.0, "real", "(0, 100]", help="KD temperature [D]")
    alpha: float = setting(0.9, "real", "[0, 1]", help="weight of the KD term against the labels' loss [D]")
    seed: int = setting(0, "int", "[0, 1000000000]", help="the GA's random generator")
    needs_validation: bool = setting(True, "bool", help="the sensitivity scan runs on the validation split")


@register_method
class GAChannelPruning(Method):
    name = "ga"
    description = "GA channel pruning (Hu et al. 2018), RECONSTRUCTED from the abstract: sensitivity-set ratios, a genetic search per layer on reconstruction error, KD after each layer"
    needs_scores = True
    settings = GASettings
    reconstruction = True
    uses_allocation = False  # the sensitivity scan allocates
    uses_normalize = False

    def check_target(self, model: nn.Module, pruner: ChannelPruner, target: float) -> None:
        self.refuse_tied_units(pruner.groups(model), "evolves keep vectors over single channels")

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        ctx.require_validation("method ga (its sensitivity scan)")
        settings, pruner = self.settings, ctx.pruner
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        groups = pruner.groups(model)
        lowest_l1 = {k: torch.argsort(FilterL1Importance()(g.group), stable=True).tolist() for k, g in groups.items()}
        generator = torch.Generator().manual_seed(int(settings.seed))
        state = ctx.resume_state
        if state is not None:  # the counts were decided; rebuild the groups done so far, then go on
            counts, done = dict(state["counts"]), list(state["done"])
            pruner.shrink_to(model, state["widths"])
            model.load_state_dict(state["model"])
            generator.set_state(state["generator"])
            ctx.restore_rng(state)
        else:
            counts, done = self.allocate(model, ctx, groups, lowest_l1), []
            ctx.report.metrics({f"ga/removed/{k}": n for k, n in counts.items()}, 0)
        kd_steps = round(float(settings.kd_epochs) * len(ctx.training.loader))
        per_group = -(-kd_steps // max(1, len(counts)))
        todo = [k for k in groups if k in counts]
        for step, key in enumerate(progress(todo, desc="ga", quiet=ctx.quiet), 1):
            if key in done:
                continue
            group = pruner.groups(model)[key]
            removed, metrics, history = self.select(model, group, counts[key], lowest_l1[key], ctx, generator)
            pruner.remove(model, [(key, i) for i in distributed.broadcast(removed)])
            for generation, error in enumerate(history):
                ctx.report.metrics({f"ga/{key}/fitness": error}, generation)
            kd = distill(
                model, teacher, ctx.training.loader, min(per_group, kd_steps - per_group * (step - 1)),
                loss_fn=ctx.training.loss_fn, lr=float(settings.kd_lr), temperature=float(settings.temperature),
                alpha=float(settings.alpha), device=ctx.device, desc=f"ga kd {key}", quiet=ctx.quiet,
            )  # fmt: skip
            ctx.report.metrics({f"ga/{key}/{k}": v for k, v in {**metrics, **kd}.items()}, step)
            reduction = pruner.reduction(model)
            ctx.report.step(step, pruner.cost_metrics(reduction), model)
            done.append(key)
            ctx.save_state(
                {
                    "counts": counts,
                    "done": done,
                    "widths": pruner.group_widths(model),
                    "model": copy.deepcopy(model.state_dict()),
                    "generator": generator.get_state(),
                    **ctx.rng_state(),
                }
            )
        return model

    def allocate(
        self, model: nn.Module, ctx: PruneContext, groups: dict[str, ChannelGroup], lowest_l1: dict[str, list[int]]
    ) -> dict[str, int]:
        """{group: channels to remove}: the shortest prefix of the greedy allocation that meets the target."""
        pruner = ctx.pruner
        sequence = distributed.broadcast(
            self.allocation_sequence(model, ctx, groups, lowest_l1) if distributed.is_main() else None
        )

        def counts_at(k: int) -> dict[str, int]:
            counts: dict[str, int] = {}
            for key in sequence[:k]:
                counts[key] = counts.get(key, 0) + 1
            return counts

        def build(k: int) -> nn.Module:
            chosen = [(key, i) for key, n in counts_at(k).items() for i in lowest_l1[key][:n]]
            return pruner.remove(copy.deepcopy(model), chosen)

        if pruner.reduction(build(len(sequence))) < ctx.target:
            raise ConfigError(pruner.unreachable_message(model, ctx.target))
        return counts_at(pruner.finish(build, ctx.target, len(sequence)))

    # --- 1-2: sensitivity and allocation -----------------------------------------------------
    def allocation_sequence(
        self, model: nn.Module, ctx: PruneContext, groups: dict[str, ChannelGroup], lowest_l1: dict[str, list[int]]
    ) -> list[str]:
        """One group key per channel, in the order the greedy allocation removes them."""
        pruner, settings = ctx.pruner, self.settings
        batches, seen = [], 0
        for x, y in ctx.val_loader:
            batches.append((x.to(ctx.device), y.to(ctx.device)))
            seen += len(x)
            if seen >= settings.sensitivity_samples:
                break
        base_loss = held_out_loss(model, batches, ctx.training.loss_fn)
        options: dict[str, list[tuple[int, float, float]]] = {}  # per group: (removed, loss rise, cost saved)
        scan = [(k, r) for k in groups for r in sorted(float(r) for r in settings.ratios)]
        for key, ratio in progress(scan, desc="ga sensitivity", quiet=ctx.quiet):
            g = groups[key]
            n = min(round(ratio * g.channels), g.channels - g.min_keep)
            if n <= 0 or any(n == m for m, _, _ in options.get(key, [])):
                continue
            pruned = pruner.remove(copy.deepcopy(model), [(key, i) for i in lowest_l1[key][:n]])
            rise = held_out_loss(pruned, batches, ctx.training.loss_fn) - base_loss
            options.setdefault(key, []).append((n, rise, pruner.reduction(pruned)))
        ctx.report.metrics({f"ga/sensitivity/{k}/{n}": rise for k, opts in options.items() for n, rise, _ in opts}, 0)
        return greedy_sequence(options)

    # --- 3: the GA on one group --------------------------------------------------------------
    def select(
        self,
        model: nn.Module,
        group: ChannelGroup,
        n_remove: int,
        lowest_l1: list[int],
        ctx: PruneContext,
        generator: torch.Generator,
    ) -> tuple[list[int], dict[str, float], list[float]]:
        """The channels of ``group`` to remove (``n_remove`` of them), what the choice's search logged, and the
        GA's best relative error per generation."""
        settings = self.settings
        consumers = consumer_inputs(group)
        if not consumers:  # nothing reads these channels through a layer the fitness can model
            return lowest_l1[:n_remove], {"fallback_l1": 1.0}, []
        coarse = contribution_gram(
            model, consumers, ctx, settings.samples, settings.positions, group.channels, generator
        )
        keep = group.channels - n_remove
        population, history = genetic_search(
            coarse,
            keep,
            population=int(settings.population),
            generations=int(settings.generations),
            tournament=int(settings.tournament),
            mutation=settings.mutation if settings.mutation is not None else 1.0 / group.channels,
            generator=generator,
        )
        exact = coarse
        if settings.rescore:
            exact = contribution_gram(model, consumers, ctx, 4 * settings.samples, 0, group.channels, generator)
            population = population[: int(settings.rescore)]
        best = population[int(torch.argmin(errors(exact, population)))]
        l1 = torch.ones(group.channels, dtype=torch.bool)
        l1[lowest_l1[:n_remove]] = False
        energy = max(float(exact.sum()), 1e-12)  # the full output's squared norm, 1ᵀG1
        metrics = {
            "rel_error": float(errors(exact, best[None])[0]) / energy,
            "rel_error_l1": float(errors(exact, l1[None])[0]) / energy,
            "fitness_first": history[0] / energy,
            "fitness_last": history[-1] / energy,
        }
        return torch.nonzero(~best).flatten().tolist(), metrics, [h / energy for h in history]


def held_out_loss(model: nn.Module, batches: list, loss_fn: nn.Module) -> float:
    total, n = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(x)
            n += len(x)
    return total / max(n, 1)


def greedy_sequence(options: dict[str, list[tuple[int, float, float]]]) -> list[str]:
    """Per group, options (channels removed, loss rise, cost saved) in increasing removal; the loss rises
    are made non-decreasing first (noise on few images), then the next step taken is always the one with
    the least rise per cost saved. Returns one group key per channel, in that order."""
    steps: dict[str, list[tuple[int, float, float]]] = {}
    for key, opts in options.items():
        rise, out = float("-inf"), [(0, 0.0, 0.0)]
        for n, r, saved in sorted(opts):
            rise = max(rise, r)
            out.append((n, rise, saved))
        steps[key] = out
    at = {key: 0 for key in steps}
    sequence: list[str] = []
    while True:
        best, price = None, float("inf")
        for key, opts in steps.items():
            if at[key] + 1 >= len(opts):
                continue
            (_, r0, s0), (_, r1, s1) = opts[at[key]], opts[at[key] + 1]
            p = (r1 - r0) / max(s1 - s0, 1e-12)
            if best is None or p < price:
                best, price = key, p
        if best is None:
            return sequence
        n0, n1 = steps[best][at[best]][0], steps[best][at[best] + 1][0]
        sequence += [best] * (n1 - n0)
        at[best] += 1


def consumer_inputs(group: ChannelGroup) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """The layers reading ``group``'s channels that the fitness models (convolutions without groups, linear
    layers): (layer, their input indices, the group channel each index belongs to)."""
    out = []
    for item in group.group:
        module = item.dep.target.module
        if item.dep.handler not in _IN_FNS:
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue  # a grouped convolution's outputs are pruned with its inputs: not a reconstruction
        out.append((module, torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)))
    return out


@torch.no_grad()
def contribution_gram(
    model: nn.Module,
    consumers: list,
    ctx: PruneContext,
    samples: int,
    positions: int,
    channels: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """G (channels × channels): G[c, d] = Σ over consumers of <Z_c, Z_d> / (that consumer's output elements),
    Z_c being channel c's contribution to the consumer's output on the first ``samples`` training images
    (``positions`` random output positions per image; 0: all). Removing the channels r then costs rᵀGr,
    the sum of the consumers' mean squared output errors."""
    captured: dict[int, list[torch.Tensor]] = {id(m): [] for m, _, _ in consumers}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, key=id(m): captured[key].append(args[0].detach()))
        for m, _, _ in consumers
    ]
    seen = 0
    try:
        with eval_mode(model):
            for x, _ in ctx.training.loader:
                model(x[: samples - seen].to(ctx.device))
                seen += min(len(x), samples - seen)
                if seen >= samples:
                    break
    finally:
        for h in handles:
            h.remove()
    gram = torch.zeros(channels, channels, dtype=torch.float64)
    for module, idxs, roots in consumers:
        elements, part = 0, torch.zeros_like(gram)
        for inputs in captured[id(module)]:
            z = contributions(module, inputs, idxs, positions, generator)  # (indices, elements)
            z = torch.zeros(channels, z.shape[1], dtype=z.dtype).index_add_(0, roots, z.cpu())
            part += (z @ z.T).double()
            elements += z.shape[1]
        gram += part / max(elements, 1)
    return gram


def contributions(
    module: nn.Module, inputs: torch.Tensor, idxs: torch.Tensor, positions: int, generator: torch.Generator
) -> torch.Tensor:
    """(len(idxs), output elements): what each of ``module``'s input indices ``idxs`` adds to its output on
    ``inputs`` (no bias: it cancels in the error), at ``positions`` sampled output positions (0: all)."""
    idxs = idxs.to(inputs.device)
    if isinstance(module, nn.Linear):
        x = inputs.flatten(0, -2)[:, idxs]  # (n, k)
        w = module.weight[:, idxs]  # (out, k)
        return torch.einsum("nk,ok->kno", x, w).flatten(1)
    cols = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
    n, _, length = cols.shape
    cols = cols.view(n, module.in_channels, -1, length)[:, idxs]  # (n, k, kh*kw, L)
    if positions and positions < length:
        cols = cols[..., torch.randperm(length, generator=generator)[:positions].to(cols.device)]
    w = module.weight.flatten(2)[:, idxs]  # (out, k, kh*kw)
    return torch.einsum("nkpl,okp->knol", cols, w).flatten(1)


def errors(gram: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The reconstruction error rᵀGr of each row of ``keep`` (bool, individuals × channels)."""
    removed = (~keep).to(gram.dtype)
    return ((removed @ gram) * removed).sum(1)


def repaired(keep: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Each row with exactly ``count`` channels kept: the kept ones first, in random order, then random others."""
    priority = keep.float() + 0.5 * torch.rand(keep.shape, generator=generator)
    out = torch.zeros_like(keep)
    return out.scatter_(1, priority.topk(count, dim=1).indices, True)


def genetic_search(
    gram: torch.Tensor,
    keep: int,
    *,
    population: int,
    generations: int,
    tournament: int,
    mutation: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, list[float]]:
    """A GA over keep vectors with exactly ``keep`` ones, minimising ``errors(gram, ·)``: a Bernoulli start
    at the keep ratio, then per generation tournament selection, uniform crossover, bit-flip mutation,
    repair, and the best individual carried over. Returns the last population, best first, and the best
    error after each generation (the start first)."""
    channels = gram.shape[0]
    pop = repaired(torch.rand(population, channels, generator=generator) < keep / channels, keep, generator)
    fit = errors(gram, pop)
    history = [float(fit.min())]
    for _ in gated(range(generations)):  # a pause point while another run times latency
        elite = pop[int(torch.argmin(fit))]
        drawn = torch.randint(population, (population, tournament), generator=generator)
        parents = pop[drawn.gather(1, fit[drawn].argmin(1, keepdim=True)).squeeze(1)]
        mates = parents.roll(1, 0)
        children = torch.where(torch.rand(population, channels, generator=generator) < 0.5, parents, mates)
        children ^= torch.rand(population, channels, generator=generator) < mutation
        pop = repaired(children, keep, generator)
        pop[0] = elite
        fit = errors(gram, pop)
        history.append(float(fit.min()))
    order = torch.argsort(fit)
    return pop[order], history
