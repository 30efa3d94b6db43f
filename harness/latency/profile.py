"""Where the time goes, layer by layer: the answer to "the MACs went down but the latency did not".

Every module is timed with forward pre/post hooks (wall clock; CUDA synchronised at each hook), the dense
and the pruned model in alternating passes on the same batch, medians over passes, as the run's paired
latency is. A leaf's time is its own. A container's *self* time (its time minus its children's) is the
work its ``forward`` does between them: residual adds, reshapes, Python dispatch. The whole model is also
timed without hooks; the difference between that and the sum of the parts is a row of its own
("unattributed"; the hooks' own cost can make it negative).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.gate import measuring
from harness.latency.measure import timed

CONV, LINEAR, BN, ACT, POOL, OTHER, BLOCK = (
    "conv",
    "linear",
    "batchnorm",
    "activation",
    "pooling",
    "other leaf",
    "block (residual add, dispatch)",
)
FIXED_KINDS = (BN, ACT, POOL, OTHER, BLOCK)  # the per-layer costs that do not shrink with the MACs
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def kind_of(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return CONV
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return BN
    if isinstance(module, _ACTIVATIONS):
        return ACT
    if isinstance(module, _POOLS):
        return POOL
    return OTHER if not list(module.children()) else BLOCK


@dataclass
class Layer:
    name: str
    kind: str
    dense_ms: float = 0.0
    pruned_ms: float = 0.0
    dense_macs: int = 0  # per sample, convolutions and linears only
    pruned_macs: int = 0
    widths: str = ""

    @property
    def ratio(self) -> float | None:
        return self.pruned_ms / self.dense_ms if self.dense_ms > 0 else None


@dataclass
class Profile:
    layers: list[Layer]
    dense_whole_ms: float
    pruned_whole_ms: float
    batch: int
    threads: int
    device: str
    passes: int
    by_kind: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for layer in self.layers:
            totals[layer.kind][0] += layer.dense_ms
            totals[layer.kind][1] += layer.pruned_ms
        self.by_kind = {k: (d, p) for k, (d, p) in totals.items()}

    @property
    def dense_sum_ms(self) -> float:
        return sum(layer.dense_ms for layer in self.layers)

    @property
    def pruned_sum_ms(self) -> float:
        return sum(layer.pruned_ms for layer in self.layers)

    def top(self, n: int) -> list[Layer]:
        """The convolutions and linears that hold the most of the pruned model's time."""
        weighted = [layer for layer in self.layers if layer.kind in (CONV, LINEAR)]
        return sorted(weighted, key=lambda layer: -layer.pruned_ms)[:n]

    def shares(self, n: int = 5) -> list[dict]:
        """The ``n`` layers holding the most: their name, share of the pruned model's whole time and ms."""
        return [
            {"layer": layer.name, "share": layer.pruned_ms / self.pruned_whole_ms, "pruned_ms": layer.pruned_ms}
            for layer in self.top(n)
        ]


class _Timer:
    """Hooks on every module that add up each one's wall time over one forward pass."""

    def __init__(self, model: nn.Module, sync: Callable[[], None]):
        self.totals: dict[str, float] = defaultdict(float)
        self.child_totals: dict[str, float] = defaultdict(float)
        self.sync = sync
        self.stack: list[tuple[str, float]] = []
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            self.sync()
            self.stack.append((name, time.perf_counter()))

        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.sync()
            _, start = self.stack.pop()
            elapsed = (time.perf_counter() - start) * 1000
            self.totals[name] += elapsed
            if self.stack:
                self.child_totals[self.stack[-1][0]] += elapsed

        return hook

    def reset(self) -> None:
        self.totals.clear()
        self.child_totals.clear()

    def own_times(self, model: nn.Module) -> dict[str, float]:
        """Each module's own time: a leaf's whole time, a container's time minus its children's."""
        return {
            name: self.totals[name] - (self.child_totals[name] if list(module.children()) else 0.0)
            for name, module in model.named_modules()
            if name in self.totals
        }

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _macs_and_widths(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, str]]:
    """Per-sample MACs and in→out widths of each convolution and linear, from one forward pass."""
    found: dict[str, tuple[int, str]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):

            def hook(m, args, out, name=name):
                k = m.weight[0].numel()  # (in / groups) × kernel
                found[name] = (out[0].numel() * k, f"{m.in_channels}→{m.out_channels}")

        elif isinstance(module, nn.Linear):

            def hook(m, args, out, name=name):
                found[name] = (m.in_features * m.out_features, f"{m.in_features}→{m.out_features}")

        else:
            continue
        handles.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        model(x[:1])
    for handle in handles:
        handle.remove()
    return found


@torch.inference_mode()
@measuring()
def profile_models(
    dense: nn.Module, pruned: nn.Module, x: torch.Tensor, *, passes: int = 20, warmup: int = 3
) -> Profile:
    """Per-layer and whole-model times of ``dense`` and ``pruned`` on batch ``x`` (alternating passes)."""
    dense.eval(), pruned.eval()
    cuda = x.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        dense(x), pruned(x)
    whole = {"dense": [], "pruned": []}
    for i in range(passes):  # whole-model times, no hooks, alternating order
        for side in ("dense", "pruned") if i % 2 == 0 else ("pruned", "dense"):
            whole[side].append(timed(dense if side == "dense" else pruned, x, 1))
    timers = {"dense": _Timer(dense, sync), "pruned": _Timer(pruned, sync)}
    own: dict[str, list[dict[str, float]]] = {"dense": [], "pruned": []}
    try:
        for i in range(passes):
            for side in ("dense", "pruned") if i % 2 == 0 else ("pruned", "dense"):
                model = dense if side == "dense" else pruned
                timers[side].reset()
                model(x)
                own[side].append(timers[side].own_times(model))
    finally:
        for timer in timers.values():
            timer.remove()
    medians = {side: _medians(runs) for side, runs in own.items()}
    kinds = {name: kind_of(m) for name, m in dense.named_modules()}
    kinds.update({name: kind_of(m) for name, m in pruned.named_modules() if name not in kinds})
    macs = {"dense": _macs_and_widths(dense, x), "pruned": _macs_and_widths(pruned, x)}
    layers = []
    for name in dict.fromkeys([*medians["dense"], *medians["pruned"]]):
        dense_macs, dense_w = macs["dense"].get(name, (0, ""))
        pruned_macs, pruned_w = macs["pruned"].get(name, (0, "(removed)" if dense_w else ""))
        layers.append(
            Layer(
                name=name or "(model)",
                kind=kinds[name],
                dense_ms=medians["dense"].get(name, 0.0),
                pruned_ms=medians["pruned"].get(name, 0.0),
                dense_macs=dense_macs,
                pruned_macs=pruned_macs,
                widths=f"{dense_w} / {pruned_w}" if dense_w else "",
            )
        )
    return Profile(
        layers=layers,
        dense_whole_ms=statistics.median(whole["dense"]),
        pruned_whole_ms=statistics.median(whole["pruned"]),
        batch=x.shape[0],
        threads=torch.get_num_threads(),
        device=str(x.device),
        passes=passes,
    )


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for run in runs for name in run)
    return {name: statistics.median(run.get(name, 0.0) for run in runs) for name in names}


def kind_table(p: Profile) -> list[dict]:
    """One row per kind of work, the unattributed remainder and the whole, dense vs pruned."""
    rows = []
    for kind in (CONV, LINEAR, *FIXED_KINDS):
        if kind in p.by_kind:
            d, q = p.by_kind[kind]
            rows.append(_row(kind + (" (fixed per layer)" if kind in FIXED_KINDS else ""), d, q, p))
    rows.append(_row("sum of the above", p.dense_sum_ms, p.pruned_sum_ms, p))
    rows.append(
        _row(
            "unattributed (whole − sum: dispatch outside modules, hook cost)",
            p.dense_whole_ms - p.dense_sum_ms,
            p.pruned_whole_ms - p.pruned_sum_ms,
            p,
        )
    )
    rows.append(_row("whole model (timed without hooks)", p.dense_whole_ms, p.pruned_whole_ms, p))
    return rows


def _row(label: str, dense_ms: float, pruned_ms: float, p: Profile) -> dict:
    return {
        "work": label,
        "dense ms": dense_ms,
        "pruned ms": pruned_ms,
        "pruned/dense": pruned_ms / dense_ms if dense_ms > 0 else float("nan"),
        "share of pruned": pruned_ms / p.pruned_whole_ms,
    }


def layer_table(p: Profile, n: int) -> list[dict]:
    return [
        {
            "layer": layer.name,
            "widths dense / pruned": layer.widths,
            "dense ms": layer.dense_ms,
            "pruned ms": layer.pruned_ms,
            "time pruned/dense": layer.ratio if layer.ratio is not None else float("nan"),
            "MACs pruned/dense": layer.pruned_macs / layer.dense_macs if layer.dense_macs else float("nan"),
            "share of pruned": layer.pruned_ms / p.pruned_whole_ms,
        }
        for layer in p.top(n)
    ]


def markdown(p: Profile, n: int = 10, title: str = "") -> str:
    import pandas as pd

    head = (
        f"# Per-layer profile{': ' + title if title else ''}\n\n"
        f"Batch {p.batch}, {p.threads} thread(s), {p.device}; median of {p.passes} alternating dense/pruned "
        "passes; ms per batch, timed by forward hooks (wall clock), the whole model timed without hooks. "
        f"Whole model: dense {p.dense_whole_ms:.3f} ms, pruned {p.pruned_whole_ms:.3f} ms "
        f"({p.dense_whole_ms / p.pruned_whole_ms:.2f}× faster).\n\n"
    )
    kinds = pd.DataFrame(kind_table(p)).to_markdown(index=False, floatfmt=".3f")
    top = pd.DataFrame(layer_table(p, n)).to_markdown(index=False, floatfmt=".3f")
    return (
        head
        + "## By kind of work\n\n"
        + kinds
        + f"\n\n## The {n} convolutions and linears holding the most of the pruned model's time\n\n"
        + top
        + "\n"
    )


def bar_chart(p: Profile, path: str | Path, n: int = 15, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = p.top(n)[::-1]
    kinds = [(k, *p.by_kind[k]) for k in (CONV, LINEAR, *FIXED_KINDS) if k in p.by_kind]
    kinds.append(("unattributed", p.dense_whole_ms - p.dense_sum_ms, p.pruned_whole_ms - p.pruned_sum_ms))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.35 * len(top) + 1.5)))
    y = range(len(top))
    ax1.barh([i + 0.2 for i in y], [layer.dense_ms for layer in top], height=0.4, label="dense", color="#bbbbbb")
    ax1.barh([i - 0.2 for i in y], [layer.pruned_ms for layer in top], height=0.4, label="pruned", color="#1f77b4")
    ax1.set_yticks(list(y), [layer.name for layer in top], fontsize=8)
    ax1.set_xlabel(f"ms per batch of {p.batch} ({p.threads} thread(s), {p.device})")
    ax1.set_title("layers holding the most of the pruned time")
    ax1.legend()
    yk = range(len(kinds))
    ax2.barh([i + 0.2 for i in yk], [k[1] for k in kinds], height=0.4, label="dense", color="#bbbbbb")
    ax2.barh([i - 0.2 for i in yk], [k[2] for k in kinds], height=0.4, label="pruned", color="#1f77b4")
    ax2.set_yticks(list(yk), [k[0] for k in kinds], fontsize=8)
    ax2.set_xlabel("ms per batch")
    ax2.set_title("by kind of work (BN, activations, blocks: fixed per layer)")
    fig.suptitle(title or "per-layer profile")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
