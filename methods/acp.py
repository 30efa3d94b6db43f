"""ACP (Chang et al.): automatic channel pruning by clustering and particle swarm search, after the
authors' particle_cifar.py (JingfeiChang/ACP-Automatic-Channel-Pruning).

1. Clustering: each channel group's feature maps (its root layer's output) are averaged over
   ``samples`` training images; DBSCAN (cosine metric, ``min_samples``, ``eps``; scikit-learn) runs over
   the group's channels, and clusters + noise points is the group's preliminary width. With
   ``eps: null``, ε is bisected to the smallest value whose widths meet the MACs target.
2. Search: ``particles`` width vectors start around the preliminary widths (particle i moves each
   width by i·s, s ∈ {−1, 0, 1}); ``cycles`` of PSO follow, with the authors' inertia (0.6 → 0.425),
   c1 = c2 = 2, one random R per particle, constriction 0.729, velocities clipped to ±``max_velocity``
   channels and positions moved by ``step_scale``·v. Widths stay within [the group's minimum, its
   width]; one dimension per coupled group keeps residual adds consistent. Every candidate is scaled
   (all widths by one factor) to the largest size that meets the MACs target, so all are at or beyond
   it; with ``exact_target`` (default) one that overshoots is widened back too, so the swarm compares
   width *shapes* at the target's cost (the authors' search has no cost constraint at all).
3. Fitness: the candidate inherits the baseline's largest-L1 filters, trains for ``fitness_epochs``
   with the fine-tuning recipe's settings, and is scored on the **validation split** (the authors'
   code scores on the test set). Fitness is cached by width vector; the best candidate's trained
   weights are what the common fine-tune starts from, as in the authors' code.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from harness.core.clusters import dbscan_count, site_outputs
from harness.core.settings import setting
from harness.core.train import progress
from harness.core.widths import WidthSpace
from methods.base import Method, PruneContext, register_method
from methods.l1 import FilterL1Importance


class CandidateFitness:
    """A width vector's fitness: validation accuracy after ``recipe.epochs`` of training of the candidate
    that inherits the baseline's largest-L1 filters. Cached by width vector (a hit trains nothing); the
    best candidate and its trained model are kept."""

    def __init__(self, space: WidthSpace, ctx: PruneContext, recipe, on_call=lambda: None):
        self.space, self.ctx, self.recipe, self.on_call = space, ctx, recipe, on_call
        self.cache: dict[tuple[int, ...], float] = {}
        self.trained = 0
        self.best: dict = {"fitness": -1.0, "widths": None, "model": None}

    def __call__(self, widths: tuple[int, ...]) -> float:
        self.on_call()
        if widths in self.cache:
            return self.cache[widths]
        candidate = self.space.build(widths)
        if self.recipe.epochs:
            self.ctx.training.train(candidate, self.ctx.training.loader, self.recipe, desc="acp fitness")
        self.trained += 1
        score = self.cache[widths] = self.ctx.validate(candidate)
        if score > self.best["fitness"]:
            self.best.update(fitness=score, widths=widths, model=candidate)
        return score


@dataclass
class AcpSettings:
    needs_validation: bool = setting(
        True, "bool", help="candidates are scored on data.val_fraction (the authors' code scores on the test set)"
    )
    eps: float | None = setting(
        None,
        "real",
        "(0, 2]",
        nullable=True,
        help="DBSCAN epsilon (cosine); null: bisected to meet prune.flops_reduction. Paper: ResNet-56 0.035/0.075, VGG-16 0.010, ResNet-50 0.040",
    )
    min_samples: int = setting(5, "int", "[1, 100000]", help="DBSCAN min_samples")
    samples: int = setting(
        200, "int", "[1, 1000000]", help="training images whose feature maps are averaged for the clustering"
    )
    particles: int = setting(10, "int", "[1, 10000]", help="swarm size")
    cycles: int = setting(8, "int", "[0, 10000]", help="swarm iterations")
    fitness_epochs: int = setting(
        3,
        "int",
        "[0, 100000]",
        help="training of each candidate (fine-tune recipe's lr, momentum, wd) before it is scored",
    )
    inertia_start: float = setting(0.6, "real", "[0, 10]", help="w decreases linearly to inertia_end over the cycles")
    inertia_end: float = setting(0.425, "real", "[0, 10]", help="the inertia weight at the last cycle")
    c1: float = setting(2.0, "real", "[0, 100]", help="cognitive coefficient (towards a particle's best)")
    c2: float = setting(2.0, "real", "[0, 100]", help="social coefficient (towards the swarm's best)")
    constriction: float = setting(0.729, "real", "(0, 10]", help="Clerc's constriction factor on the velocity")
    max_velocity: float = setting(2.0, "real", "(0, 100000]", help="channels")
    step_scale: float = setting(2.0, "real", "(0, 100]", help="position += step_scale x velocity (the authors' r = 2)")
    exact_target: bool = setting(
        True, "bool", help="every candidate scaled to the target's cost (false: any cost at or beyond the target)"
    )


@register_method
class ACP(Method):
    name = "acp"
    description = "ACP: per-layer DBSCAN clustering of feature maps for preliminary widths, then a particle swarm search of the widths scored on the validation split"
    needs_scores = True
    settings = AcpSettings
    uses_allocation = False
    uses_normalize = False

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        ctx.require_validation("method acp (it scores candidates on validation data)")
        space = WidthSpace(model, ctx.pruner, FilterL1Importance())  # a width keeps its largest-L1 filters
        if ctx.resume_state is not None and "prelim" in ctx.resume_state:
            prelim = tuple(ctx.resume_state["prelim"])
        else:
            prelim = self.preliminary_widths(model, space, ctx)
        best_widths, best_model = self.search(space, prelim, ctx)
        if ctx.pruner.measured_cost:
            best_model = self.measured_finish(space, best_widths, best_model, ctx)
        reduction = ctx.pruner.reduction(best_model)
        ctx.report.step(1, ctx.pruner.cost_metrics(reduction), best_model)
        return best_model

    def measured_finish(self, space: WidthSpace, widths: tuple[int, ...], model: nn.Module, ctx: PruneContext):
        """A latency target: the best widths scaled by the one factor whose paired measurement meets the
        target (the swarm searched on the lookup table's prediction). Narrower widths are cut from the best
        candidate's trained weights (its smallest-L1 filters go); a wider one is rebuilt from the baseline,
        as every candidate is, and loses the candidate's fitness training (logged: acp/finish_rebuilt)."""
        chosen = space.finish(widths, ctx.target)
        ctx.report.metrics({"acp/finish_scale": sum(chosen) / max(sum(widths), 1)}, 0)
        if chosen == widths:
            return model
        if all(c <= w for c, w in zip(chosen, widths)):
            trained = WidthSpace(model, ctx.pruner, FilterL1Importance())
            by_key = dict(zip(space.keys, chosen))
            return trained.build(tuple(by_key[k] for k in trained.keys))
        ctx.report.metrics({"acp/finish_rebuilt": 1.0}, 0)
        return space.build(chosen)

    # --- 1. clustering -----------------------------------------------------------------------
    def preliminary_widths(self, model: nn.Module, space: WidthSpace, ctx: PruneContext) -> tuple[int, ...]:
        settings = self.settings
        groups = ctx.pruner.groups(model)
        sites = {k: groups[k].members[0] for k in space.keys}
        maps = site_outputs(model, sites, ctx.training.loader, int(settings.samples), ctx.device)
        widths_at = lambda eps: space.clip([dbscan_count(maps[k], eps, int(settings.min_samples)) for k in space.keys])  # noqa: E731
        if settings.eps is not None:
            eps = float(settings.eps)
        else:  # the smallest ε (to 1e-4) whose clustered widths meet the target, or the largest tried
            lo, hi = 0.0, 2.0
            for _ in range(15):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if space.reduction(widths_at(mid)) >= ctx.target else (mid, hi)
            eps = hi
        widths = widths_at(eps)
        ctx.report.metrics({"acp/eps": eps, "acp/clustered_reduction": space.reduction(widths)}, 0)
        return space.repair(widths, ctx.target, self.settings.exact_target)

    # --- 2 and 3. particle swarm over widths, fitness on the validation split ------------------------
    def search(self, space: WidthSpace, prelim: tuple[int, ...], ctx: PruneContext):
        settings = self.settings
        rng = random.Random(torch.initial_seed())
        recipe = OmegaConf.merge(
            ctx.training.finetune_recipe, {"epochs": int(settings.fitness_epochs), "tail_epochs": 0}
        )
        total = int(settings.particles) * (int(settings.cycles) + 1)
        bar = progress(range(total), desc="acp candidates", quiet=ctx.quiet)
        fitness = self.fitness = CandidateFitness(space, ctx, recipe, on_call=lambda: bar.update(1))
        best = fitness.best
        if ctx.resume_state is not None and "swarm" in ctx.resume_state:
            swarm = self._restore(ctx.resume_state, space, fitness, rng, ctx)
        else:
            dims = len(space.keys)
            position = [
                space.repair(
                    space.clip([w + i * rng.choice((-1, 0, 1)) for w in prelim]), ctx.target, settings.exact_target
                )
                for i in range(int(settings.particles))
            ]
            velocity = [
                [rng.uniform(-settings.max_velocity, settings.max_velocity) for _ in range(dims)] for _ in position
            ]
            score = [fitness(p) for p in position]
            swarm = {
                "cycle": 0,
                "position": position,
                "velocity": velocity,
                "score": score,
                "personal": list(zip(score, position)),
            }
            self._log_cycle(swarm, best, space, ctx)
            self._save(swarm, prelim, fitness, rng, ctx)
        position, velocity, score, personal = (swarm[k] for k in ("position", "velocity", "score", "personal"))
        for cycle in range(swarm["cycle"], int(settings.cycles)):
            w = settings.inertia_start - (settings.inertia_start - settings.inertia_end) * cycle / max(
                1, int(settings.cycles) - 1
            )
            for i in range(len(position)):
                r = rng.random()
                velocity[i] = [
                    max(
                        -settings.max_velocity,
                        min(
                            settings.max_velocity,
                            settings.constriction * (w * v + settings.c1 * r * (pb - x) + settings.c2 * r * (gb - x)),
                        ),
                    )
                    for v, x, pb, gb in zip(velocity[i], position[i], personal[i][1], best["widths"])
                ]
                moved = space.clip([x + settings.step_scale * v for x, v in zip(position[i], velocity[i])])
                position[i] = space.repair(moved, ctx.target, settings.exact_target)
                score[i] = fitness(position[i])
                if score[i] > personal[i][0]:
                    personal[i] = (score[i], position[i])
            swarm["cycle"] = cycle + 1
            self._log_cycle(swarm, best, space, ctx)
            self._save(swarm, prelim, fitness, rng, ctx)
        bar.close()
        ctx.report.metrics({"acp/candidates_trained": fitness.trained, "acp/cache_hits": total - fitness.trained}, 0)
        return best["widths"], best["model"]

    # --- checkpoints: after the first population and after every cycle -----------------------------
    @staticmethod
    def _save(swarm, prelim, fitness: CandidateFitness, rng: random.Random, ctx: PruneContext) -> None:
        best = fitness.best
        ctx.save_state(
            {
                "prelim": list(prelim),
                "swarm": {
                    **swarm,
                    "position": [list(p) for p in swarm["position"]],
                    "personal": [[s, list(p)] for s, p in swarm["personal"]],
                },
                "cache": [[list(w), s] for w, s in fitness.cache.items()],
                "trained": fitness.trained,
                "best": {
                    "fitness": best["fitness"],
                    "widths": list(best["widths"]),
                    "model": copy.deepcopy(best["model"].state_dict()),
                },
                "py_rng": list(rng.getstate()[1]),
                **ctx.rng_state(),
            }
        )

    @staticmethod
    def _restore(state, space: WidthSpace, fitness: CandidateFitness, rng: random.Random, ctx: PruneContext) -> dict:
        swarm = dict(state["swarm"])
        swarm["position"] = [tuple(p) for p in swarm["position"]]
        swarm["personal"] = [(s, tuple(p)) for s, p in swarm["personal"]]
        fitness.cache = {tuple(w): s for w, s in state["cache"]}
        fitness.trained = int(state["trained"])
        widths = tuple(state["best"]["widths"])
        model = space.build(widths)
        model.load_state_dict(state["best"]["model"])
        fitness.best.update(fitness=state["best"]["fitness"], widths=widths, model=model)
        rng.setstate((3, tuple(state["py_rng"]), None))
        ctx.restore_rng(state)
        return swarm

    @staticmethod
    def _log_cycle(swarm, best, space, ctx) -> None:
        score = swarm["score"]
        metrics = {"acp/best_fitness": best["fitness"], "acp/mean_fitness": sum(score) / len(score)}
        metrics.update(
            {
                f"acp/particle{i}_{space.pruner.cost_name}": space.pruner.base_cost * (1 - space.reduction(p))
                for i, p in enumerate(swarm["position"])
            }
        )
        ctx.report.metrics(metrics, swarm["cycle"])
