"""Physical channel removal through torch-pruning's DependencyGraph. Every method prunes through here.

A *group* is a set of coupled channels that must be removed together (a conv's filters, its BN, the
next layer's input channels, and every layer tied to them by a residual add). Groups are keyed by
the name of their root module, so a key stays valid on a deep copy of the model.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from harness.core.allocation import knapsack, rank_channels
from harness.core.convs import is_depthwise, is_grouped
from harness.core.costs import NORMALIZE, ChannelCosts, normalized
from harness.core.errors import ConfigError

Importance = Callable[[tp.dependency.Group], torch.Tensor]
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


@dataclass
class ChannelGroup:
    key: str  # name of the root module
    group: tp.dependency.Group
    channels: int  # current number of channels
    min_keep: int  # the per-layer minimum (from the dense model's widths)
    members: list[str]  # names of the conv/linear layers whose outputs are the group's channels, in order
    norms: list[str]  # names of the BatchNorm layers in the group (same channel indices)
    # Channels that can only go together, or None: a grouped convolution on the group's channels keeps
    # the same positions in each of its groups, so position p of every group is one unit.
    units: list[tuple[int, ...]] | None = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Tracing and counting run forward passes; in train mode those would move BN running stats."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]] | None:
    """Parameters a model uses outside any layer torch-pruning knows (SSD-VGG's L2-norm scale), with the
    dimension that follows the channels, as the model declares them (``model.unwrapped_parameters()``)."""
    declared = getattr(model, "unwrapped_parameters", None)
    return declared() if callable(declared) else None


class _FixedWidth(tp.pruner.BasePruningFunc):
    """torch-pruning's handler for a layer whose channels must not change (``fixed_channels``): groups that
    reach it are left out, so these never run."""

    # Distinct functions on purpose: torch-pruning couples a layer's inputs to its outputs when its two
    # handlers are the same one, and a shuffle's output channel c is not its input channel c.
    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise RuntimeError(f"{type(layer).__name__} keeps its output channels")

    def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise RuntimeError(f"{type(layer).__name__} keeps its input channels")

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None


def fixed_width_layers(model: nn.Module) -> dict[type, _FixedWidth]:
    """{layer type: handler} for the layers a model marks ``fixed_channels`` (ShuffleNetV2's channel shuffle):
    traced as single nodes, and no channel that reaches them is pruned."""
    return {type(m): _FixedWidth() for m in model.modules() if getattr(m, "fixed_channels", False)}


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of one forward pass on ``example_inputs``, counted by torch-pruning (MACs, not FLOPs)."""
    with eval_mode(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


class MacsCost:
    """What a pruner cuts by default: the MACs of one forward pass of the example input. Another cost
    (predicted latency, ``harness.latency.target``) has the same four members."""

    name, target_key, what = "macs", "prune.flops_reduction", "the MACs"

    def __call__(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        return float(count_macs_params(model, example_inputs)[0])

    def correct(
        self, prefix: int, target: float, build: Callable[[int], nn.Module], predicted: Callable[[int], float], n: int
    ) -> int:
        """The prefix of the removal order to keep, given the one chosen on this cost (``prefix``): a
        cost that can be measured for real corrects its choice here; MACs are exact."""
        return prefix


class ChannelPruner:
    """Removes channels from a model, globally ranked, down to a target on its *cost*: MACs, or with
    ``use_cost`` another one, e.g. predicted latency (harness.latency.target). Methods see only ``reduction``.

    ``ignored`` names layers whose output channels are fixed (the classifier). Every layer keeps at
    least ``max(1, int(min_channels_ratio * dense_channels))`` channels. ``normalize`` (``prune.normalize``)
    divides every score by what removing that channel saves (``harness.core.costs``) before ranking.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        ignored: list[nn.Module],
        min_channels_ratio: float = 0.1,
        round_to: int | None = None,
        normalize: str = "none",
        allocation: str = "global",
    ):
        if normalize not in NORMALIZE:
            raise ConfigError(f"prune.normalize must be one of {', '.join(NORMALIZE)}, got {normalize!r}")
        if allocation not in ("global", "knapsack"):
            raise ConfigError(f"prune.allocation must be global or knapsack, got {allocation!r}")
        self.allocation = allocation
        self.example_inputs = example_inputs
        self.round_to = round_to
        self.normalize = normalize
        names = {m: n for n, m in model.named_modules()}
        self.ignored_names = [names[m] for m in ignored]
        self.min_keep = {
            n: max(1, int(min_channels_ratio * _out_channels(m)))
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        }
        self.base_macs, self.base_params = count_macs_params(model, example_inputs)
        self.cost_model, self.base_cost = MacsCost(), float(self.base_macs)
        self.unscored: list[str] = []

    def use_cost(self, cost: MacsCost, dense: nn.Module) -> None:
        """Prune to a target on ``cost`` (see ``MacsCost``): ``reduction`` becomes 1 - cost(model) / cost(dense)."""
        self.cost_model = cost
        self.base_cost = float(cost(dense, self.example_inputs))

    @property
    def measured_cost(self) -> bool:
        """Whether the cost corrects its choices by real measurements (a latency target)."""
        return bool(getattr(self.cost_model, "measured", False))

    @property
    def cost_name(self) -> str:
        return self.cost_model.name

    @property
    def target_key(self) -> str:
        return self.cost_model.target_key

    # --- inspection ------------------------------------------------------------------------
    def groups(self, model: nn.Module) -> dict[str, ChannelGroup]:
        fixed = fixed_width_layers(model)
        with eval_mode(model):
            try:
                graph = tp.DependencyGraph().build_dependency(
                    model,
                    example_inputs=self.example_inputs,
                    unwrapped_parameters=unwrapped_parameters(model),
                    customized_pruners=fixed or None,
                )
            except ZeroDivisionError:  # torch-pruning's index mapping through a reshape of the channel axis
                raise _reshape_refusal(model) from None
        names = {m: n for n, m in model.named_modules()}
        ignored = [model.get_submodule(n) for n in self.ignored_names]
        out = {}
        for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            if fixed and any(type(item.dep.target.module) in fixed for item in g):
                continue  # reaches a layer whose channels must not change
            root = g[0].dep.target.module
            producers = [item for item in g if item.dep.handler in _OUT_FNS and item.dep.target.module in names]
            # Layers whose channel c is the group's channel c. Not those a concatenation put in the group
            # with part of its channels (GhostNet's halves): the methods hook and score these.
            channels = _out_channels(root)
            members = [names[i.dep.target.module] for i in producers if is_aligned(i, channels)] or [names[root]]
            norms = [
                names[item.dep.target.module]
                for item in g
                if item.dep.handler == tp.prune_batchnorm_out_channels
                and item.dep.target.module in names
                and is_aligned(item, channels)
            ]
            units = grouped_conv_units(g, channels)
            min_keep = max(self.min_keep.get(names[item.dep.target.module], 1) for item in producers)
            if units:  # at least one whole unit stays
                min_keep = max(min_keep, len(units[0]))
            out[names[root]] = ChannelGroup(names[root], g, channels, min_keep, members, norms, units)
        return out

    def channel_costs(self, model: nn.Module, groups: dict[str, ChannelGroup] | None = None) -> ChannelCosts:
        """What removing one channel of each group of ``model`` saves (MACs, memory, predicted latency when the
        pruner's cost is the latency table's), see ``harness.core.costs``."""
        layer_ms = getattr(self.cost_model, "layer_ms", None)
        return ChannelCosts(
            model,
            self.example_inputs,
            groups if groups is not None else self.groups(model),
            layer_ms(model, self.example_inputs) if layer_ms else None,
        )

    def cost(self, model: nn.Module) -> float:
        return self.cost_model(model, self.example_inputs)

    def reduction(self, model: nn.Module) -> float:
        """1 - cost(model) / cost(dense model): of the MACs, or of the predicted latency."""
        return 1.0 - self.cost(model) / self.base_cost

    def cost_metrics(self, reduction: float) -> dict[str, float]:
        """A pruning step's log entry for a model at ``reduction``: its cost (MACs or ms) and the reduction."""
        return {self.cost_name: self.base_cost * (1 - reduction), "reduction": reduction}

    # --- pruning ---------------------------------------------------------------------------
    def removal_order(self, model: nn.Module, importance: Importance, normalize: bool = True) -> list[tuple[str, int]]:
        """Every removable (group, channel), least important first, capped by each group's minimum; the scores
        divided by each channel's cost under ``prune.normalize`` unless ``normalize`` is False."""
        groups = self.groups(model)
        return rank_channels(
            self.scores(model, importance, groups, normalize),
            {k: g.channels - g.min_keep for k, g in groups.items()},
            {k: g.units for k, g in groups.items() if g.units},
        )

    def scores(
        self, model: nn.Module, importance: Importance, groups: dict[str, ChannelGroup], normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """{group: one score per channel}, divided by the channel's cost under ``normalize``. Groups the
        criterion cannot score are left out and listed in ``unscored``."""
        scores = {}
        self.unscored = []  # groups the criterion cannot score (slimming: no BatchNorm): never pruned
        for key, cg in groups.items():
            group_scores = importance(cg.group)
            if group_scores is None:
                self.unscored.append(key)
                continue
            group_scores = torch.as_tensor(group_scores, dtype=torch.float64).detach().cpu()
            if group_scores.numel() != cg.channels or not torch.isfinite(group_scores).all():
                raise RuntimeError(
                    f"importance for group {key!r} has shape {tuple(group_scores.shape)} or "
                    f"non-finite values; expected {cg.channels} finite scores"
                )
            scores[key] = group_scores
        if normalize and self.normalize != "none":
            scores = normalized(scores, self.channel_costs(model, groups).per_channel(self.normalize))
        return scores

    def remove(self, model: nn.Module, channels: list[tuple[str, int]]) -> nn.Module:
        """Physically remove ``channels`` [(group key, channel index)] from ``model``, in place. In a group
        tied to a grouped convolution, a unit with any channel selected goes whole (``complete_units``)."""
        by_group: dict[str, list[int]] = {}
        for key, idx in channels:
            by_group.setdefault(key, []).append(idx)
        groups = self.groups(model)
        for key, idxs in by_group.items():
            cg = groups[key]
            groups[key].group.prune(idxs=complete_units(idxs, cg.units, cg.channels) if cg.units else sorted(idxs))
        return model

    def finish(self, build: Callable[[int], nn.Module], target: float, n: int, lo: int = 0) -> int:
        """The candidate that meets ``target``: candidates 0..n, ``build(k)`` the network of the k-th, pruning
        more as k grows (a removal order's prefix, a uniform rate, a budget step). The smallest k in [lo, n]
        whose reduction under this pruner's cost reaches the target, then, for a cost that can be measured
        (a latency target), corrected by paired measurements in either direction over all n + 1."""
        trial = lambda k: self.reduction(build(k))  # noqa: E731
        return self.cost_model.correct(smallest_prefix(trial, target, n, lo), target, build, trial, n)

    def prune_to_target(self, model: nn.Module, importance: Importance, target: float) -> nn.Module:
        """Remove the fewest least-important channels whose removal cuts MACs by at least ``target``.

        Scores are computed once; a binary search over the length of the removal order finds the
        smallest prefix that reaches the target, so the result overshoots the target by at most the
        MACs of one channel. Returns ``model``, pruned in place.
        """
        if target <= 0:
            return model
        if self.allocation == "knapsack":
            return self.prune_by_knapsack(model, importance, target)
        order = self.removal_order(model, importance)
        groups = self.groups(model)
        chosen = lambda k: self.rounded(order[:k], order, groups)  # noqa: E731
        build = lambda k: self.remove(copy.deepcopy(model), chosen(k))  # noqa: E731
        trial = lambda k: self.reduction(build(k))  # noqa: E731
        if trial(len(order)) < target:
            if self.unscored:
                raise ConfigError(
                    f"{self.target_key}={target} is unreachable with this method's criterion: it scores "
                    f"{len(groups) - len(self.unscored)} of the {len(groups)} channel groups (not e.g. "
                    f"{self.unscored[0]}, which has no BatchNorm if the criterion is slimming's), and pruning only "
                    f"those removes at most {trial(len(order)):.3f}; choose another method or lower the target"
                )
            raise ConfigError(self.unreachable_message(model, target))
        return self.remove(model, chosen(self.finish(build, target, len(order))))

    def prune_by_knapsack(self, model: nn.Module, importance: Importance, target: float) -> nn.Module:
        """HALP's allocation: per group, its channels by ascending score; how many each group keeps is a
        knapsack maximising the kept score under a budget of MACs, or of predicted latency with a latency
        target (each group's cost additive in its kept channels, at the neighbours' current widths:
        ``harness.core.costs``). The budget is bisected to the largest one whose network, built and costed,
        still meets ``target``; a measured latency then corrects that choice as it corrects a ranking's."""
        groups = self.groups(model)
        scores = self.scores(model, importance, groups)
        channel_costs = self.channel_costs(model, groups)
        kind = channel_costs.kind
        orders, values, costs = {}, {}, {}
        for key, g in groups.items():
            order = []
            if key in scores:
                removable = {key: g.channels - g.min_keep}
                order = rank_channels({key: scores[key]}, removable, {key: g.units} if g.units else None)
            unit = len(g.units[0]) if g.units else 1  # a grouped convolution's channels go in whole units
            steps = list(range(0, len(order) + 1, unit))
            removed = np.concatenate([[0.0], np.cumsum([float(scores[key][i]) for _, i in order])])
            total = float(scores[key].sum()) if key in scores else 0.0
            orders[key] = (order, steps)
            values[key] = [total - removed[r] for r in steps]
            costs[key] = [channel_costs.group_cost(kind, key, g.channels - r) for r in steps]
        floor = [c for order, _ in orders.values() for c in order]  # every group at its minimum: the cheapest

        def chosen(budget: float) -> list[tuple[str, int]]:
            try:
                picks = knapsack(values, costs, budget)
            except ValueError:  # below the cheapest choice once costs are rounded to the budget's bins
                return floor
            return [c for key, pick in picks.items() for c in orders[key][0][: orders[key][1][pick]]]

        # Candidates from the largest budget down to the smallest: k-th is budget_at(k). The target is met
        # by bisection on k under the pruner's cost, then, for a measured cost, corrected as a one-shot
        # ranking's prefix is (MacsCost.correct): the knapsack choice at each budget is the "prefix".
        lo = sum(min(c) for c in costs.values())
        hi = sum(max(c) for c in costs.values())
        steps = 1024
        budget_at = lambda k: hi - (hi - lo) * k / steps  # noqa: E731
        build = lambda k: self.remove(copy.deepcopy(model), chosen(budget_at(k)))  # noqa: E731
        trial = lambda k: self.reduction(build(k))  # noqa: E731
        if trial(steps) < target:
            raise ConfigError(self.unreachable_message(model, target))
        return self.remove(model, chosen(budget_at(self.finish(build, target, steps))))

    def rounded(
        self, selection: list[tuple[str, int]], order: list[tuple[str, int]], groups: dict[str, ChannelGroup]
    ) -> list[tuple[str, int]]:
        """With ``round_to``, remove more of each touched group's least important channels so that
        what is left is a multiple of ``round_to`` (fast kernels like aligned widths), never fewer
        than the group's minimum."""
        if not self.round_to:
            return selection
        r = self.round_to
        counts: dict[str, int] = {}
        for key, _ in selection:
            counts[key] = counts.get(key, 0) + 1
        out = []
        for key, n in counts.items():
            g = groups[key]
            keep = max((g.channels - n) // r * r, -(-g.min_keep // r) * r, min(r, g.channels))
            ranked = [idx for k, idx in order if k == key]
            out += [(key, idx) for idx in ranked[: max(0, g.channels - keep)]]
        return out

    def group_widths(self, model: nn.Module) -> dict[str, int]:
        """{group key: channels}: with ``shrink_to``, what a checkpoint needs to rebuild a pruned model's shapes."""
        return {k: g.channels for k, g in self.groups(model).items()}

    def shrink_to(self, model: nn.Module, widths: dict[str, int]) -> nn.Module:
        """Cut each group of ``model`` (in place) to ``widths[key]`` channels, dropping its last ones. Only
        the shapes are meant to match: load the pruned model's state_dict afterwards."""
        groups, chosen = self.groups(model), []
        for key, width in widths.items():
            g = groups[key]
            if g.units:  # whole units from the last, so that the grouped convolution stays valid
                drop = []
                for unit in reversed(g.units):
                    if len(drop) + len(unit) <= g.channels - width:
                        drop += unit
                chosen += [(key, i) for i in drop]
            else:
                chosen += [(key, i) for i in range(width, g.channels)]
        return self.remove(model, chosen)

    def max_reduction(self, model: nn.Module) -> float:
        """The largest MACs reduction the per-layer minimums allow. Also the check, before any training,
        that this model's structure can be pruned at all: a ConfigError names what cannot."""
        check_supported(model)
        pruned = copy.deepcopy(model)
        try:  # every channel goes: the scores do not matter
            everything = self.removal_order(pruned, lambda g: torch.zeros(len(g[0].idxs)), normalize=False)
            self.remove(pruned, everything)
            return self.reduction(pruned)
        except (RuntimeError, ZeroDivisionError, IndexError, ValueError) as e:
            if "is invalid for input of size" in str(e):  # a view of the channel axis broke: a shuffle's
                raise _reshape_refusal(model) from None
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"{type(model).__name__} cannot be pruned by the channel surgery: removing channels "
                f"breaks a layer ({type(e).__name__}: {detail}); choose another model"
            ) from None

    def unreachable_message(self, model: nn.Module, target: float) -> str:
        what = self.cost_model.what
        return (
            f"{self.target_key}={target} is unreachable: keeping every layer at its minimum "
            f"(prune.min_channels_ratio) removes at most {self.max_reduction(model):.3f} of {what}; "
            "lower the target or prune.min_channels_ratio"
        )


def smallest_prefix(reduction_at: Callable[[int], float], goal: float, n: int, lo: int = 0) -> int:
    """The smallest k in [lo, n] with reduction_at(k) >= goal (binary search, reduction_at rising with k;
    n if none reaches it)."""
    hi = n
    while lo < hi:
        mid = (lo + hi) // 2
        if reduction_at(mid) >= goal:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _reshape_refusal(model: nn.Module) -> ConfigError:
    return ConfigError(
        f"{type(model).__name__} cannot be pruned by the channel surgery: it reshapes the channel axis (a channel "
        "shuffle?), which torch-pruning cannot map channels through; choose another model, or make that step a "
        "layer marked fixed_channels (tasks/models/shufflenet.py does so for ShuffleNetV2)"
    )


def check_supported(model: nn.Module) -> None:
    """What the surgery cannot prune, refused by name before any training. Grouped convolutions
    (ResNeXt, RegNet) are pruned by whole units (``grouped_conv_units``); depthwise ones channel by channel."""
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d) and m.groups > 1:
            raise ConfigError(
                f"layer {name} is a grouped transposed convolution, which the channel surgery does "
                "not prune; choose another model"
            )


def grouped_conv_units(group: tp.dependency.Group, channels: int) -> list[tuple[int, ...]] | None:
    """The channels of a group that must be removed together, or None when any channel may go alone.

    A grouped convolution with g groups of w channels (on its input or its output) stays valid only if
    every group loses the same positions: channel c is position c mod w of group c // w, and the g
    channels at one position form a unit. (torch-pruning's conv in-channel pruning assumes this too.)
    Root channels that reach one layer channel by two paths are tied too (``_channel_ties``).
    Units of several such layers in one group are merged."""
    parent = list(range(channels))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def tie(members: list[int]) -> None:
        for other in members[1:]:
            parent[find(other)] = find(members[0])

    constrained = False
    for item in group:
        layer, handler = item.dep.target.module, item.dep.handler
        if not is_grouped(layer) or handler not in (tp.prune_conv_out_channels, tp.prune_conv_in_channels):
            continue
        width = (layer.out_channels if handler == tp.prune_conv_out_channels else layer.in_channels) // layer.groups
        by_position: dict[int, list[int]] = {}
        for idx, root in root_pairs(item):
            by_position.setdefault(idx % width, []).append(root)
        for members in by_position.values():
            tie(members)
        constrained = True
    for pair in _channel_ties(group):
        tie(list(pair))
        constrained = True
    if not constrained:
        return None
    units: dict[int, list[int]] = {}
    for c in range(channels):
        units.setdefault(find(c), []).append(c)
    return [tuple(u) for u in units.values()]


def _channel_ties(group: tp.dependency.Group) -> list[tuple[int, int]]:
    """Pairs of root channels that reach one channel of a layer by two paths, so that removing either
    removes it: a channel-preserving op's (activation, norm, depthwise conv) output c and its input's c
    belong to one root channel unless a concatenation put both into the group through different channels
    (GhostNet: primary features concatenated with a depthwise "cheap" copy of them). torch-pruning keeps
    one root per layer channel when it merges the paths, so the pairs are read edge by edge."""
    kinds = {tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.BN, tp.ops.OPTYPE.DEPTHWISE_CONV, tp.ops.OPTYPE.ELEMENTWISE}
    roots: dict[tuple[int, int], int] = {}  # (id of graph node, its output channel) -> root channel
    outputs = [item for item in group if getattr(item.dep.handler, "__name__", "") == "prune_out_channels"]
    for item in outputs:
        for idx, root in root_pairs(item):
            roots[(id(item.dep.target), idx)] = root
    ties = []
    for item in outputs:
        node = item.dep.target
        preserving = node.type in (tp.ops.OPTYPE.BN, tp.ops.OPTYPE.ELEMENTWISE) or is_depthwise(node.module)
        if not preserving or len(node.inputs) != 1 or node.inputs[0].type not in kinds:
            continue
        multiplier = node.module.out_channels // node.module.in_channels if is_depthwise(node.module) else 1
        for c, root in root_pairs(item):
            other = roots.get((id(node.inputs[0]), c // multiplier))
            if other is not None and other != root:
                ties.append((root, other))
    return ties


def root_pairs(item: tp._helpers.GroupItem) -> list[tuple[int, int]]:
    """(channel of the item's layer, channel of the group's root it goes with): torch-pruning's merged
    groups keep the second in ``root_idxs``; they coincide when a group has no concatenation or split."""
    idxs = [int(i) for i in item.idxs]
    return list(zip(idxs, [int(r) for r in getattr(item, "root_idxs", None) or idxs]))


def is_aligned(item: tp._helpers.GroupItem, channels: int) -> bool:
    """Whether the item's layer channel c is its group's channel c for all ``channels`` of the group: not so
    for a layer a concatenation put in the group with part of its channels (GhostNet's halves), which
    methods must neither gate nor score as the group's."""
    return root_pairs(item) == [(c, c) for c in range(channels)]


def complete_units(idxs: list[int], units: list[tuple[int, ...]], channels: int) -> list[int]:
    """``idxs`` grown to whole units (a unit with any channel selected goes); if that would remove every
    channel, the partly selected units stay instead."""
    selected = set(idxs)
    whole = [u for u in units if selected.issuperset(u)]
    touched = [u for u in units if selected.intersection(u)]
    chosen = touched if sum(map(len, touched)) < channels else whole
    return sorted(c for u in chosen for c in u)


# --- removing whole residual blocks (GAL) ---------------------------------------------------------------
class ShortcutOnly(nn.Module):
    """What a residual block becomes when GAL removes it: its shortcut (identity or projection), and
    the ReLU after the add when the block had one. The shortcut keeps its attribute name, so the names
    of its layers (and their per-layer minimums) do not change."""

    def __init__(self, block: nn.Module, shortcut_name: str | None, relu: bool):
        super().__init__()
        self.shortcut_name, self.relu = shortcut_name, relu
        if shortcut_name is not None:
            self.add_module(shortcut_name, getattr(block, shortcut_name))

    def spec(self) -> dict:
        """What rebuilds it from the dense block (saved with a pruned model; see harness/artifacts.py)."""
        return {"kind": "shortcut_only", "shortcut": self.shortcut_name, "relu": self.relu}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = getattr(self, self.shortcut_name)(x) if self.shortcut_name else x
        return F.relu(out) if self.relu else out


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by name."""
    return {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
