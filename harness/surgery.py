"""Physical channel removal through torch-pruning's DependencyGraph. Every method prunes through here.

A *group* is a set of coupled channels that must be removed together (a conv's filters, its BN, the
next layer's input channels, and every layer tied to them by a residual add). Groups are keyed by
the name of their root module, so a key stays valid on a deep copy of the model.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from harness.errors import ConfigError

Importance = Callable[[tp.dependency.Group], torch.Tensor]
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)


@dataclass
class ChannelGroup:
    key: str                   # name of the root module
    group: tp.dependency.Group
    channels: int              # current number of channels
    min_keep: int              # the per-layer minimum (from the dense model's widths)
    members: list[str]         # names of the conv/linear layers whose outputs are in the group
    norms: list[str]           # names of the BatchNorm layers in the group (same channel indices)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Tracing and counting run forward passes; in train mode those would move BN running stats."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_macs_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of one forward pass on ``example_inputs``, counted by torch-pruning (MACs, not FLOPs)."""
    with eval_mode(model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


class ChannelPruner:
    """Removes channels from a model, globally ranked, down to a MACs target.

    ``ignored`` names layers whose output channels are fixed (the classifier). Every layer keeps at
    least ``max(1, int(min_channels_ratio * dense_channels))`` channels.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignored: list[nn.Module],
                 min_channels_ratio: float = 0.1, round_to: int | None = None):
        self.example_inputs = example_inputs
        self.round_to = round_to
        names = {m: n for n, m in model.named_modules()}
        self.ignored_names = [names[m] for m in ignored]
        self.min_keep = {n: max(1, int(min_channels_ratio * _out_channels(m)))
                         for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.base_macs, self.base_params = count_macs_params(model, example_inputs)

    # --- inspection ------------------------------------------------------------------------
    def groups(self, model: nn.Module) -> dict[str, ChannelGroup]:
        with eval_mode(model):
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=self.example_inputs)
        names = {m: n for n, m in model.named_modules()}
        ignored = [model.get_submodule(n) for n in self.ignored_names]
        out = {}
        for g in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
            members = [names[item.dep.target.module] for item in g
                       if item.dep.handler in _OUT_FNS and item.dep.target.module in names]
            norms = [names[item.dep.target.module] for item in g
                     if item.dep.handler == tp.prune_batchnorm_out_channels and item.dep.target.module in names]
            root = g[0].dep.target.module
            out[names[root]] = ChannelGroup(names[root], g, _out_channels(root),
                                            max(self.min_keep.get(n, 1) for n in members), members, norms)
        return out

    def reduction(self, model: nn.Module) -> float:
        """1 - MACs(model) / MACs(dense model)."""
        return 1.0 - count_macs_params(model, self.example_inputs)[0] / self.base_macs

    # --- pruning ---------------------------------------------------------------------------
    def removal_order(self, model: nn.Module, importance: Importance) -> list[tuple[str, int]]:
        """Every removable (group, channel), least important first, capped by each group's minimum."""
        groups = self.groups(model)
        scores = {}
        for key, cg in groups.items():
            group_scores = importance(cg.group)
            if group_scores is None:
                continue
            group_scores = torch.as_tensor(group_scores, dtype=torch.float64).detach().cpu()
            if group_scores.numel() != cg.channels or not torch.isfinite(group_scores).all():
                raise RuntimeError(f"importance for group {key!r} has shape {tuple(group_scores.shape)} or "
                                   f"non-finite values; expected {cg.channels} finite scores")
            scores[key] = group_scores
        return rank_channels(scores, {k: g.channels - g.min_keep for k, g in groups.items()})

    def remove(self, model: nn.Module, channels: list[tuple[str, int]]) -> nn.Module:
        """Physically remove ``channels`` [(group key, channel index)] from ``model``, in place."""
        by_group: dict[str, list[int]] = {}
        for key, idx in channels:
            by_group.setdefault(key, []).append(idx)
        groups = self.groups(model)
        for key, idxs in by_group.items():
            groups[key].group.prune(idxs=sorted(idxs))
        return model

    def prune_lowest(self, model: nn.Module, importance: Importance, n: int) -> int:
        """Remove the ``n`` globally least important channels (fewer if the minimums bind). Returns how many."""
        order = self.removal_order(model, importance)[:n]
        self.remove(model, order)
        return len(order)

    def prune_to_target(self, model: nn.Module, importance: Importance, target: float) -> nn.Module:
        """Remove the fewest least-important channels whose removal cuts MACs by at least ``target``.

        Scores are computed once; a binary search over the length of the removal order finds the
        smallest prefix that reaches the target, so the result overshoots the target by at most the
        MACs of one channel. Returns ``model``, pruned in place.
        """
        if target <= 0:
            return model
        order = self.removal_order(model, importance)
        groups = self.groups(model)
        chosen = lambda k: self.rounded(order[:k], order, groups)  # noqa: E731
        trial = lambda k: self.reduction(self.remove(copy.deepcopy(model), chosen(k)))  # noqa: E731
        if trial(len(order)) < target:
            raise ConfigError(self.unreachable_message(model, target))
        lo, hi = 0, len(order)  # trial(hi) >= target; find the smallest such k
        while lo < hi:
            mid = (lo + hi) // 2
            if trial(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        return self.remove(model, chosen(lo))

    def rounded(self, selection: list[tuple[str, int]], order: list[tuple[str, int]],
                groups: dict[str, ChannelGroup]) -> list[tuple[str, int]]:
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
        groups = self.groups(model)
        return self.remove(model, [(k, i) for k, w in widths.items() for i in range(w, groups[k].channels)])

    def max_reduction(self, model: nn.Module) -> float:
        """The largest MACs reduction the per-layer minimums allow. Also the check, before any training,
        that this model's structure can be pruned at all: a ConfigError names what cannot."""
        check_supported(model)
        pruned = copy.deepcopy(model)
        try:
            self.remove(pruned, self.removal_order(pruned, lambda g: torch.zeros(len(g[0].idxs))))
            return self.reduction(pruned)
        except (RuntimeError, ZeroDivisionError, IndexError, ValueError) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{type(model).__name__} cannot be pruned by the channel surgery: removing channels "
                              f"breaks a layer ({type(e).__name__}: {detail}); choose another model") from None

    def unreachable_message(self, model: nn.Module, target: float) -> str:
        return (f"prune.flops_reduction={target} is unreachable: keeping every layer at its minimum "
                f"(prune.min_channels_ratio) removes at most {self.max_reduction(model):.3f} of the MACs; "
                "lower the target or prune.min_channels_ratio")


def check_supported(model: nn.Module) -> None:
    """Grouped convolutions (1 < groups < channels: ResNeXt, RegNet) need channels removed in whole
    groups, which the surgery does not do yet: refuse them by name. Depthwise convolutions are fine."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            raise ConfigError(f"layer {name} is a grouped convolution (groups={m.groups}, {m.in_channels} -> "
                              f"{m.out_channels} channels): the channel surgery does not prune grouped convolutions "
                              "yet (depthwise ones are fine); choose another model")


def rank_channels(scores: dict[str, torch.Tensor], removable: dict[str, int]) -> list[tuple[str, int]]:
    """Global ranking: (group, channel) pairs by ascending score, taking at most ``removable[group]``
    from each group. Channels scored +inf (already gone) are never listed."""
    candidates = sorted((float(v), key, i) for key, t in scores.items() for i, v in enumerate(t.tolist())
                        if v != float("inf"))
    taken: dict[str, int] = {}
    order = []
    for _, key, idx in candidates:
        if taken.get(key, 0) < removable.get(key, 0):
            taken[key] = taken.get(key, 0) + 1
            order.append((key, idx))
    return order


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

    def forward(self, x):
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
