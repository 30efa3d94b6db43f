"""How many channels each group keeps, chosen as a knapsack (HALP, NVlabs NeurIPS'22): the kept
importance is maximal under a cost budget, with each group's cost additive in its kept channels at the
dense neighbours' widths. ``prune.allocation=knapsack``; the default ``global`` ranks every channel
against every other instead.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from harness.core.costs import ChannelCosts


def knapsack(
    values: dict[str, list[float]], costs: dict[str, list[float]], budget: float, bins: int = 4000
) -> dict[str, int]:
    """{group: index of the option chosen}. ``values[g][i]`` / ``costs[g][i]`` are the kept importance and
    the cost of group g's option i; the sum of the chosen options' costs stays within ``budget`` and their
    summed value is maximal (exact for integer costs when ``bins`` >= budget; otherwise costs are rounded
    up to 1/``bins`` of the budget, so the budget is never exceeded). Raises ValueError if no choice fits."""
    keys = list(values)
    scale = bins / budget if budget > 0 else 1.0
    units = {g: [math.ceil(c * scale - 1e-9) for c in costs[g]] for g in keys}
    capacity = int(math.floor(budget * scale + 1e-9))
    best = np.full(capacity + 1, -np.inf)
    best[0] = 0.0
    choice: list[np.ndarray] = []
    for g in keys:
        new = np.full(capacity + 1, -np.inf)
        pick = np.full(capacity + 1, -1, dtype=np.int64)
        for i, (v, u) in enumerate(zip(values[g], units[g])):
            if u > capacity:
                continue
            shifted = np.full(capacity + 1, -np.inf)
            shifted[u:] = best[: capacity + 1 - u] + v
            better = shifted > new
            new[better], pick[better] = shifted[better], i
        best = new
        choice.append(pick)
    if not np.isfinite(best).any():
        raise ValueError("no choice of widths fits the budget")
    at = int(np.argmax(best))
    out: dict[str, int] = {}
    for g, pick in zip(reversed(keys), reversed(choice)):
        i = int(pick[at])
        out[g] = i
        at -= units[g][i]
    return out


def knapsack_step(
    scores: dict[str, torch.Tensor],
    floor: dict[str, int],
    global_step: list[tuple[str, int]],
    costs: ChannelCosts,
    kind: str,
    units: dict[str, list[tuple[int, ...]]] | None = None,
) -> list[tuple[str, int]]:
    """One step of an iterative schedule (Gate Decorator's tick) allocated by the knapsack, as HALP prunes
    step by step: the live channels (finite ``scores``; removed ones are +inf) to remove so that the kept
    score is maximal under the cost that removing ``global_step`` (the global ranking's choice) would leave.
    Each group gives up its lowest-scored channels (whole ``units`` of a grouped conv), down to ``floor``;
    its cost (``kind``: macs or latency) is taken at the other groups' live widths."""
    units = units or {}
    live = {k: int(torch.isfinite(s).sum()) for k, s in scores.items()}
    taken = {k: sum(1 for g, _ in global_step if g == k) for k in scores}
    orders, values, options, budget = {}, {}, {}, 0.0
    for key, s in scores.items():
        order = rank_channels({key: s}, {key: live[key] - floor[key]}, {key: units[key]} if key in units else None)
        step = len(units[key][0]) if key in units else 1
        counts = list(range(0, len(order) + 1, step))
        removed = np.concatenate([[0.0], np.cumsum([float(s[i]) for _, i in order])])
        kept_score = float(s[torch.isfinite(s)].sum())
        orders[key] = order
        values[key] = [kept_score - removed[r] for r in counts]
        options[key] = counts
        budget += costs.group_cost(kind, key, live[key] - taken[key], live)
    group_costs = {k: [costs.group_cost(kind, k, live[k] - r, live) for r in options[k]] for k in scores}
    try:
        picks = knapsack(values, group_costs, budget)
    except ValueError:
        return global_step
    chosen = [c for key, i in picks.items() for c in orders[key][: options[key][i]]]
    return chosen or global_step


def rank_channels(
    scores: dict[str, torch.Tensor], removable: dict[str, int], units: dict[str, list[tuple[int, ...]]] | None = None
) -> list[tuple[str, int]]:
    """Global ranking: (group, channel) pairs by ascending score, taking at most ``removable[group]``
    from each group. Channels scored +inf (already gone) are never listed. In a group with ``units``
    (grouped convolutions), a unit is ranked by its channels' mean score and listed whole, consecutively."""
    units = units or {}
    candidates = []
    for key, t in scores.items():
        values = t.tolist()
        for rank, unit in enumerate(units.get(key) or [(i,) for i in range(len(values))]):
            score = sum(values[i] for i in unit) / len(unit)
            if score != float("inf"):
                candidates.append((score, key, rank, unit))
    taken: dict[str, int] = {}
    order = []
    for _, key, _, unit in sorted(candidates):
        if taken.get(key, 0) + len(unit) <= removable.get(key, 0):
            taken[key] = taken.get(key, 0) + len(unit)
            order += [(key, idx) for idx in unit]
    return order
