"""Functionality-oriented filter pruning (Qin et al., arXiv 1811.02639 / 1810.07322): a RECONSTRUCTION.

No public code; the abstracts say only that filters should be judged by their *function* (what they
respond to), that magnitude ranking keeps filters that duplicate each other, and that pruning the
functionally redundant ones loses little accuracy, so that retraining becomes unnecessary. What is built
here (shared/reference/methods_more.md, section 5, the proposed design), and which choices are ours:

1. A signature per channel of every prunable group, taken at the group's root convolution's output:
   ``signature=response`` (default) its spatially pooled response on each of ``probe`` training images;
   ``signature=actmax`` the input that maximises its mean response (gradient ascent from noise, all of a
   layer's channels as one batch, ``actmax_steps`` Adam steps with L2 and jitter), flattened.
2. Per group, average-linkage agglomerative clustering by cosine distance (``harness.core.clusters``).
   One distance threshold τ for the whole network, the smallest that meets the target (MACs or, with a
   latency target, the measured latency: ``ChannelPruner.finish`` over the dendrograms' merge heights).
3. One channel per cluster stays, the one with the largest mean signature (most active); the rest go
   through the shared surgery. A group keeps at least its minimum (the most active of the others).

The claim to test is "no retraining needed": every run records the accuracy right after pruning
(``pruned_acc``), with no BN recalibration, as for every other method; ``finetune.epochs=0`` is the
no-retraining run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.clusters import Dendrogram, site_outputs
from harness.core.errors import ConfigError
from harness.core.hooks import FeatureTap, frozen
from harness.core.settings import setting
from harness.core.surgery import eval_mode
from harness.core.train import progress
from methods.base import Method, PruneContext, register_method


@dataclass
class FunctionalSettings:
    signature: str = setting(
        "response",
        choices=("response", "actmax"),
        help="a channel's function: pooled responses on probe images, or the input that maximises it",
    )
    probe: int = setting(256, "int", "[2, 100000]", help="training images whose responses are the signatures")
    actmax_steps: int = setting(100, "int", "[1, 100000]", help="gradient-ascent steps per layer (actmax)")
    actmax_lr: float = setting(0.05, "real", "(0, 100]", help="Adam lr of the ascent (actmax)")
    actmax_l2: float = setting(1e-3, "real", "[0, 100]", help="L2 penalty on the optimised input (actmax)")
    actmax_jitter: int = setting(2, "int", "[0, 64]", help="random shift in pixels at every step (actmax)")


def kept_per_cluster(labels: list[int], activity: torch.Tensor, min_keep: int) -> list[int]:
    """Channel indices to keep: the most active of each cluster, then the most active of the rest up to
    ``min_keep``."""
    best: dict[int, int] = {}
    for i, label in enumerate(labels):
        if label not in best or activity[i] > activity[best[label]]:
            best[label] = i
    kept = set(best.values())
    for i in sorted(range(len(labels)), key=lambda i: -float(activity[i])):
        if len(kept) >= min_keep:
            break
        kept.add(i)
    return sorted(kept)


@register_method
class FunctionalPruning(Method):
    name = "functional"
    description = "Functionality-oriented pruning (Qin et al. 2018), RECONSTRUCTED from the abstracts: channels clustered by what they respond to, one kept per cluster"
    needs_scores = True
    settings = FunctionalSettings
    reconstruction = True
    uses_allocation = False  # the clusters decide the widths
    uses_normalize = False

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        pruner = ctx.pruner
        groups = pruner.groups(model)
        sites = {k: g.members[0] for k, g in groups.items()}
        responses = site_outputs(
            model, sites, ctx.training.loader, int(self.settings.probe), ctx.device, per_image=True
        )
        activity = {k: rows.mean(1) for k, rows in responses.items()}  # how strongly each channel responds
        if self.settings.signature == "actmax":
            signatures = {
                k: self.actmax(model, site, ctx) for k, site in progress(sites.items(), desc="actmax", quiet=ctx.quiet)
            }
        else:
            signatures = responses
        trees = {k: Dendrogram(rows) for k, rows in signatures.items()}
        thresholds = sorted({0.0, *(h for tree in trees.values() for h in tree.heights)})

        def plan(threshold: float) -> list[tuple[str, int]]:
            out = []
            for key, tree in trees.items():
                kept = set(kept_per_cluster(tree.labels(threshold), activity[key], groups[key].min_keep))
                out += [(key, i) for i in range(groups[key].channels) if i not in kept]
            return out

        build = lambda k: pruner.remove(copy.deepcopy(model), plan(thresholds[k]))  # noqa: E731
        if pruner.reduction(build(len(thresholds) - 1)) < ctx.target:
            raise ConfigError(pruner.unreachable_message(model, ctx.target))
        k = pruner.finish(build, ctx.target, len(thresholds) - 1)
        pruner.remove(model, plan(thresholds[k]))
        metrics = {f"functional/clusters/{key}": len(set(tree.labels(thresholds[k]))) for key, tree in trees.items()}
        ctx.report.metrics({"functional/threshold": thresholds[k], **metrics}, 0)
        ctx.report.step(1, pruner.cost_metrics(pruner.reduction(model)), model)
        return model

    def actmax(self, model: nn.Module, site: str, ctx: PruneContext) -> torch.Tensor:
        """(channels, pixels): per channel of ``site``, an input optimised to maximise its mean response."""
        settings = self.settings
        shape = next(iter(ctx.training.loader))[0].shape[1:]
        channels = _out_channels(model.get_submodule(site))
        generator = torch.Generator().manual_seed(0)
        x = (0.1 * torch.randn(channels, *shape, generator=generator)).to(ctx.device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=float(settings.actmax_lr))
        tap = FeatureTap(model, [site])
        try:
            with eval_mode(model), frozen(model.parameters()):
                for _ in range(int(settings.actmax_steps)):
                    shift = [
                        int(v)
                        for v in torch.randint(
                            -settings.actmax_jitter, settings.actmax_jitter + 1, (2,), generator=generator
                        )
                    ]
                    model(torch.roll(x, shifts=shift, dims=(-2, -1)))
                    out = tap.features()[0]
                    response = out.flatten(2).mean(2) if out.dim() > 2 else out
                    loss = -response.diagonal().sum() + float(settings.actmax_l2) * x.pow(2).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            tap.remove()
        return x.detach().flatten(1).cpu()


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
