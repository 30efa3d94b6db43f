"""What removing one channel of a group saves: the normalisation of ``prune.normalize``.

Group Fisher pruning (Liu et al., ICML'21) divides a channel's importance by the cost its removal
saves, so that a cheap channel must be much less important than an expensive one to go first. The
costs are analytic, from each layer's kernel and output size and the *live* widths (a method that
masks channels before removing them passes its live counts), so they can be recomputed at every
decision without tracing the model again:

- ``macs``: the MACs of one output filter of each producer (at its live input width) plus those of one
  input channel of each consumer (at its live output width). A depthwise convolution is counted once.
- ``memory``: the activation elements of the producers' output maps for one sample (GFP's default).
- ``latency``: the predicted ms per batch one channel's removal saves in each producer and consumer, from
  the latency lookup table at the live widths (``layer_ms``; only with ``prune.target=latency``, whose
  table times the layers at the target batch on this device).
- ``none``: 1 for every group (the scores are left as they are).

``group_cost`` is a group's own cost at a given kept width (its producers and consumers, the rest at their
live widths): the additive model ``prune.allocation=knapsack`` solves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from harness.core.convs import is_depthwise

NORMALIZE = ("none", "macs", "memory", "latency")
_FLOOR = {"latency": 1e-6}  # a saving of 0 would make a score infinite; counts floor at 1

_OUT = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
_IN = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


@dataclass
class _Layer:
    kernel: int  # elements of one filter's spatial kernel (1 for a linear layer)
    spatial: int  # output elements per channel for one sample (1 for a linear layer)
    groups: int
    depthwise: bool
    in_channels: int
    out_channels: int


@dataclass
class _Consumer:
    key: str  # the group whose channels this layer reads
    name: str
    per_channel: int  # input features per group channel (a flatten before a linear layer: H x W)


class ChannelCosts:
    """Per-channel removal costs of every channel group of ``model`` (``groups`` from
    ``ChannelPruner.groups``), at the dense widths or at live ones given per group."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, groups: dict, layer_ms: dict | None = None):
        names = {m: n for n, m in model.named_modules()}
        self.layer_ms = layer_ms  # {layer: ms at (in, out) widths}, for kind="latency"
        self.layers = _geometry(model, example_inputs)
        self.channels = {key: g.channels for key, g in groups.items()}
        self.producers: dict[str, list[str]] = {}
        self.consumers: dict[str, list[_Consumer]] = {}
        self.out_group: dict[str, str] = {}
        for key, g in groups.items():
            for item in g.group:
                name = names.get(item.dep.target.module)
                if name not in self.layers:
                    continue
                if item.dep.handler in _OUT:
                    self.producers.setdefault(key, []).append(name)
                    self.out_group[name] = key
                elif item.dep.handler in _IN:
                    expansion = max(1, len(item.idxs) // max(1, len(set(item.root_idxs))))
                    self.consumers.setdefault(key, []).append(_Consumer(key, name, expansion))
        self.reads: dict[str, list[_Consumer]] = {}
        for cons in self.consumers.values():
            for c in cons:
                self.reads.setdefault(c.name, []).append(c)

    @property
    def kind(self) -> str:
        """What a budget over these costs is in: the predicted latency when the table's times are given."""
        return "latency" if self.layer_ms is not None else "macs"

    def per_channel(self, kind: str, live: dict[str, int] | None = None) -> dict[str, float]:
        """{group key: what removing one of its channels saves} under ``kind`` (``NORMALIZE``), at the
        ``live`` widths (default: the widths the groups were built at)."""
        if kind not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}, got {kind!r}")
        live = {**self.channels, **(live or {})}
        out = {}
        for key in self.channels:
            if kind == "none":
                out[key] = 1.0
            elif kind == "memory":
                out[key] = float(sum(self.layers[p].spatial for p in self.producers.get(key, [])))
            elif kind == "latency":
                before, after = (self.group_cost("latency", key, k, live) for k in (live[key], live[key] - 1))
                out[key] = before - after
            else:
                out[key] = self._macs_saved(key, live)
        floor = _FLOOR.get(kind, 1.0)
        return {k: max(v, floor) for k, v in out.items()}

    def group_cost(self, kind: str, key: str, kept: int, live: dict[str, int] | None = None) -> float:
        """The MACs or predicted ms of group ``key``'s producers and consumers with ``kept`` of its channels
        (the other groups at their ``live`` widths)."""
        live = {**self.channels, **(live or {}), key: kept}
        if kind == "latency" and self.layer_ms is None:
            raise ValueError("latency costs need the latency table's layer times (prune.target=latency)")
        total = 0.0
        names = {*self.producers.get(key, []), *(c.name for c in self.consumers.get(key, []))}
        for name in names:
            layer = self.layers[name]
            cin, cout = self._live_in(name, live), self._live_out(name, live)
            if kind == "latency":
                total += self.layer_ms[name](cin, cout) if name in self.layer_ms else 0.0
            else:
                fan_in = 1 if layer.depthwise else cin / layer.groups
                total += layer.kernel * layer.spatial * cout * fan_in
        return total

    def total_macs(self, live: dict[str, int] | None = None) -> float:
        """MACs of the conv and linear layers at the ``live`` widths (no BN or activations): a fast estimate
        of the cost of a width vector, without building the network."""
        live = {**self.channels, **(live or {})}
        total = 0.0
        for name, layer in self.layers.items():
            out = self._live_out(name, live)
            fan_in = 1 if layer.depthwise else self._live_in(name, live) / layer.groups
            total += layer.kernel * layer.spatial * out * fan_in
        return total

    def total(self, live: dict[str, int] | None = None) -> float:
        """The conv and linear layers' cost at the ``live`` widths in this object's ``kind``: their MACs, or,
        with the latency table's layer times, the sum of their predicted ms (no BN alone, adds or pooling)."""
        if self.layer_ms is None:
            return self.total_macs(live)
        live = {**self.channels, **(live or {})}
        return sum(
            ms(self._live_in(name, live), self._live_out(name, live))
            for name, ms in self.layer_ms.items()
            if name in self.layers
        )

    def _live_out(self, name: str, live: dict[str, int]) -> int:
        key = self.out_group.get(name)
        return live[key] if key is not None else self.layers[name].out_channels

    def _live_in(self, name: str, live: dict[str, int]) -> int:
        removed = sum((self.channels[c.key] - live[c.key]) * c.per_channel for c in self.reads.get(name, []))
        return self.layers[name].in_channels - removed

    def _macs_saved(self, key: str, live: dict[str, int]) -> float:
        saved = 0.0
        for name in self.producers.get(key, []):
            layer = self.layers[name]
            fan_in = 1 if layer.depthwise else self._live_in(name, live) / layer.groups
            saved += layer.kernel * layer.spatial * fan_in
        for c in self.consumers.get(key, []):
            layer = self.layers[c.name]
            if layer.depthwise:  # its output channel goes with the input one: counted as a producer
                continue
            saved += layer.kernel * layer.spatial * self._live_out(c.name, live) / layer.groups * c.per_channel
        return saved


def _geometry(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, _Layer]:
    """Kernel and output size of every conv and linear layer, from one forward pass."""
    layers: dict[str, _Layer] = {}
    handles = []

    def keep(name: str):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                kernel = module.kernel_size[0] * module.kernel_size[1]
                layers[name] = _Layer(
                    kernel,
                    output.shape[2] * output.shape[3],
                    module.groups,
                    # with a channel multiplier its outputs are counted as a grouped conv's (as before)
                    is_depthwise(module) and module.out_channels == module.in_channels,
                    module.in_channels,
                    module.out_channels,
                )
            else:
                spatial = output[0].numel() // module.out_features
                layers[name] = _Layer(1, spatial, 1, False, module.in_features, module.out_features)

        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(keep(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_inputs[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers


def normalized(scores: dict[str, torch.Tensor], costs: dict[str, float]) -> dict[str, torch.Tensor]:
    """Each group's scores divided by what one of its channels saves (``ChannelCosts.per_channel``)."""
    return {key: s / costs[key] for key, s in scores.items()}
