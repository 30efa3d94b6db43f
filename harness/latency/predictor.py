"""A learned latency predictor (W-Gates' "latency predict net"): a small MLP from a network's width
fractions (one per channel group) to its measured latency on this device, fitted on random width vectors
timed here. Unlike the lookup table (``table.py``), which adds per-layer times, it is differentiable in
the widths, so a method can put predicted latency into its loss; its held-out error says how far to trust it.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from harness.core.gate import measuring
from harness.core.surgery import ChannelPruner, eval_mode
from harness.core.train import progress
from harness.latency.measure import passes_for, timed


@dataclass
class WidthTimings:
    """Measured latencies of random width vectors: ``widths`` ({group: channels} each), ``fractions``
    (vectors × groups, kept / dense channels, in the order of ``keys``) and ``ms`` (median ms per forward
    pass of the batch)."""

    keys: list[str]
    widths: list[dict[str, int]]
    fractions: torch.Tensor
    ms: torch.Tensor


def time_random_widths(
    model: nn.Module,
    pruner: ChannelPruner,
    batch: torch.Tensor,
    samples: int,
    generator: torch.Generator,
    *,
    repeats: int = 5,
    quiet: bool = True,
) -> WidthTimings:
    """``samples`` width vectors, each group's kept share uniform between its minimum and all of it (the
    dense network first), built with ``pruner.shrink_to`` and timed on ``batch``: the median of ``repeats``
    timings, each lasting ~2 ms or more."""
    groups = pruner.groups(model)
    keys = list(groups)
    low = torch.tensor([groups[k].min_keep / groups[k].channels for k in keys])
    fractions, ms, vectors = [], [], []
    for i in progress(range(samples), desc="latency samples", quiet=quiet):
        share = torch.ones(len(keys)) if i == 0 else low + (1 - low) * torch.rand(len(keys), generator=generator)
        widths = {k: max(groups[k].min_keep, round(float(f) * groups[k].channels)) for k, f in zip(keys, share)}
        net = pruner.shrink_to(copy.deepcopy(model), widths).eval()
        with eval_mode(net), torch.no_grad(), measuring():
            passes = passes_for(net, batch)
            ms.append(statistics.median(timed(net, batch, passes) for _ in range(repeats)))
        fractions.append(torch.tensor([widths[k] / groups[k].channels for k in keys]))
        vectors.append(widths)
    return WidthTimings(keys, vectors, torch.stack(fractions), torch.tensor(ms))


class LatencyPredictor(nn.Module):
    """ms ≈ scale · MLP(width fractions): 3 linear layers (hidden ``hidden``, ReLU), fitted by Adam on the
    mean squared relative error; ``scale`` is the dense network's measured ms."""

    def __init__(self, groups: int, scale: float, hidden: int = 64):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(
            nn.Linear(groups, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(fractions).squeeze(-1)

    def fit(self, fractions: torch.Tensor, ms: torch.Tensor, steps: int = 2000, lr: float = 1e-2) -> None:
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            loss = ((self(fractions) - ms) / ms).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        for p in self.parameters():
            p.requires_grad_(False)


def r_squared(predicted: torch.Tensor, measured: torch.Tensor) -> float:
    """1 − residual / total sum of squares (1: perfect; 0: no better than the mean)."""
    total = float((measured - measured.mean()).pow(2).sum())
    return 1.0 - float((measured - predicted).pow(2).sum()) / max(total, 1e-12)


def mean_relative_error(predicted: torch.Tensor, measured: torch.Tensor) -> float:
    return float(((predicted - measured).abs() / measured).mean())


def fit_and_compare(
    timings: WidthTimings,
    holdout: float,
    table_ms: Callable[[dict[str, int]], float] | None = None,
    generator: torch.Generator | None = None,
    steps: int = 2000,
) -> tuple[LatencyPredictor, dict[str, float]]:
    """Fit a predictor on all but a ``holdout`` share of ``timings`` (the dense network always trains) and
    report its R² and mean relative error on the rest, beside the lookup table's (``table_ms``: widths ->
    predicted ms) on the same held-out networks when given."""
    n = len(timings.ms)
    order = 1 + torch.randperm(n - 1, generator=generator)
    held = order[: max(1, round(holdout * n))]
    train = torch.tensor(sorted(set(range(n)) - set(held.tolist())))
    predictor = LatencyPredictor(len(timings.keys), float(timings.ms[0]))
    predictor.fit(timings.fractions[train], timings.ms[train], steps=steps)
    with torch.no_grad():
        guess = predictor(timings.fractions[held])
    measured = timings.ms[held]
    report = {
        "held_out": float(len(held)),
        "r2": r_squared(guess, measured),
        "rel_error": mean_relative_error(guess, measured),
    }
    if table_ms is not None:
        table = torch.tensor([table_ms(timings.widths[int(i)]) for i in held])
        report.update(table_r2=r_squared(table, measured), table_rel_error=mean_relative_error(table, measured))
    return predictor, report
