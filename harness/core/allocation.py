"""How many channels each group keeps, chosen as a knapsack (HALP, NVlabs NeurIPS'22): the kept
importance is maximal under a cost budget, with each group's cost additive in its kept channels at the
dense neighbours' widths. ``prune.allocation=knapsack``; the default ``global`` ranks every channel
against every other instead.
"""

from __future__ import annotations

import math

import numpy as np


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
