"""Pruning to a measured latency target: the pruner's cost becomes the lookup table's predicted latency
(``PredictedLatency``), and a one-shot choice made on it is corrected by real paired measurements
(``Corrected``). ``prepare`` builds both for a run, before any training."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from harness.core import distributed
from harness.core.surgery import ChannelPruner, smallest_prefix
from harness.latency.measure import paired_latency
from harness.latency.table import LatencyTable, narrowed_copies


def reduction_from_speedup(speedup: float | None) -> float | None:
    """The cut of the latency that a speed-up (dense ms / pruned ms) means: 1 - 1/speed-up."""
    return 1 - 1 / speedup if speedup else None


class PredictedLatency:
    """A pruner cost: the lookup table's ms per batch for a model (``LatencyTable.predict``)."""

    name, target_key, what = "latency_ms", "prune.latency_reduction", "the predicted latency"

    def __init__(self, table: LatencyTable):
        self.table = table

    def __call__(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        return float(self.table.predict(model, example_inputs))

    def layer_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> dict:
        return self.table.layer_ms(model, example_inputs)

    def correct(
        self, prefix: int, target: float, build: Callable[[int], nn.Module], predicted: Callable[[int], float], n: int
    ) -> int:
        return prefix


@dataclass
class Corrected:
    """A cost whose one-shot choice is corrected by measuring candidates for real: ``measured_reduction``
    times one, from ``measured_from`` on (the run's final target; intermediate steps trust the cost)."""

    cost: object
    measured_reduction: Callable[[nn.Module], float]
    measured_from: float = 0.0
    tolerance: float = 0.02
    corrections: list[dict] = field(default_factory=list)  # what each measurement gave, for the run's log
    # Points the measurements at the trained dense model once there is one (the run's final measurement
    # compares with it; before the baseline trains, the untrained copy stands in)
    compare_with: Callable[[nn.Module], None] = lambda dense: None
    searches: int = 5  # measurements while the target is not bracketed yet
    bracketed: int = 8  # measurements in all once it is
    confirm: bool = True  # time a candidate within tolerance once more and accept on the mean of the two
    measured = True

    @staticmethod
    def is_bracketed(measured: dict[int, float], target: float) -> bool:
        return any(m < target for m in measured.values()) and any(m > target for m in measured.values())

    @property
    def name(self) -> str:
        return self.cost.name

    @property
    def target_key(self) -> str:
        return self.cost.target_key

    @property
    def what(self) -> str:
        return self.cost.what

    def __call__(self, model: nn.Module, example_inputs: torch.Tensor) -> float:
        return self.cost(model, example_inputs)

    def layer_ms(self, model: nn.Module, example_inputs: torch.Tensor) -> dict:
        return self.cost.layer_ms(model, example_inputs)

    def correct(
        self, k: int, target: float, build: Callable[[int], nn.Module], predicted: Callable[[int], float], n: int
    ) -> int:
        """The cost's prefix length ``k`` corrected by real measurements until one is within ``tolerance`` of
        ``target``: at most ``searches`` of them while every measurement lies on one side of the target, at
        most ``bracketed`` in all once one lies below and one above. The next prefix comes from the cost (its
        prediction aimed by the last miss, scaled by the measured-per-predicted slope of the last two
        measurements) until the target is bracketed; from then on from the straight line between the
        closest measurement on either side, drawn over the *prediction* (a removal order's prefix can be far
        from linear in its cost: GA's allocation sequence, a uniform width scale), strictly inside the
        bracket. A candidate measured within tolerance is measured again (``confirm``) and judged on the mean
        of the two: a single paired measurement can land points away from the next one of the same network
        (results/bench/allocator_in_run.md). Returns the prefix measured closest (means where measured twice)."""
        if target < self.measured_from - 1e-9:
            return k
        measured: dict[int, float] = {}
        predicted_at: dict[int, float] = {}
        trace: list[dict] = []  # this search's candidates, in order (a confirmed one once, with its mean)
        taken = 0  # measurements, confirmations included: the caps count these
        while taken < (self.bracketed if self.is_bracketed(measured, target) else self.searches):
            candidate = build(k)
            measured[k], predicted_at[k] = self.measured_reduction(candidate), predicted(k)
            taken += 1
            self.corrections.append({"prefix": k, "predicted": predicted_at[k], "measured": measured[k]})
            if self.confirm and abs(target - measured[k]) <= self.tolerance:
                again = self.measured_reduction(candidate)
                taken += 1
                self.corrections.append({**self.corrections[-1], "measured": again, "confirming": True})
                measured[k] = (measured[k] + again) / 2
            miss = target - measured[k]
            trace.append({"prefix": k, "predicted": predicted_at[k], "measured": measured[k]})
            if abs(miss) <= self.tolerance:
                break
            if self.is_bracketed(measured, target):
                lo = max(j for j, m in measured.items() if m < target)  # the tightest bracket by position:
                hi = min(j for j, m in measured.items() if m > target)  # noise can reorder values
                if hi - lo <= 1:  # nothing between them (or noise put a longer prefix below a shorter one)
                    break
                share = (target - measured[lo]) / (measured[hi] - measured[lo])
                if predicted_at[hi] > predicted_at[lo]:
                    aim = predicted_at[lo] + share * (predicted_at[hi] - predicted_at[lo])
                    nxt = smallest_prefix(predicted, aim, hi, lo)
                else:  # the prediction does not rise across the bracket: fall back to the position
                    nxt = round(lo + (hi - lo) * share)
                nxt = min(max(nxt, lo + 1), hi - 1)
            else:  # aim the prediction by the miss, at the slope measured so far (1 until two measurements)
                # never the empty prefix: its "measurement" is the dense model against itself, noise alone
                nxt = max(smallest_prefix(predicted, trace[-1]["predicted"] + miss / slope(trace), n), 1)
            if nxt in measured:
                break
            k = nxt
        return min(measured, key=lambda j: abs(target - measured[j]))


def slope(trace: list[dict]) -> float:
    """Measured change per predicted change between the last two measurements of ``trace`` (within 0.2-5;
    1 before two): a table that overstates what each channel saves makes every aimed step too short."""
    if len(trace) < 2:
        return 1.0
    a, b = trace[-2], trace[-1]
    dp, dm = b["predicted"] - a["predicted"], b["measured"] - a["measured"]
    if abs(dp) < 1e-9 or dm / dp <= 0:
        return 1.0
    return min(max(dm / dp, 0.2), 5.0)


def prepare(
    pruner: ChannelPruner,
    model: nn.Module,
    example: torch.Tensor,
    batch: torch.Tensor,
    target: float,
    results_dir: str | Path,
    *,
    warmup: int,
    min_pairs: int,
    interval: float,
    max_seconds: float,
    round_to: int | None = None,
    say: Callable[[str], None] = lambda msg: None,
) -> tuple[LatencyTable, Corrected]:
    """Before any training: the per-layer latency table for this device, threads and ``batch`` size (built
    once, cached) and its calibration on ``model``; from then on ``pruner``'s cost is the predicted latency,
    corrected by paired measurements on ``batch`` for prunings that reach for ``target``."""
    device = batch.device
    table = LatencyTable(batch.shape[0], device, results_dir, say=say, align=round_to)
    dense = copy.deepcopy(model).to(device).eval()
    reference = {"dense": dense}  # the trained baseline replaces it (``Corrected.compare_with``)
    if distributed.is_main():  # one process times; the others would share its cores
        kept, pruner.example_inputs = pruner.example_inputs, example
        try:
            table.prepare(dense, example, lambda: narrowed_copies(dense, pruner))
        finally:
            pruner.example_inputs = kept
    table.data, table.line = distributed.broadcast((table.data, table.line) if distributed.is_main() else None)

    def measured_reduction(candidate) -> float:  # rank 0 times, every rank gets its number
        value = None
        if distributed.is_main():
            timing = paired_latency(
                reference["dense"],
                candidate.eval(),
                batch,
                warmup=warmup,
                min_pairs=min_pairs,
                interval=interval,
                max_seconds=max_seconds,
            )
            value = reduction_from_speedup(timing["speedup"])
        return float(distributed.broadcast(value))

    cost = Corrected(PredictedLatency(table), measured_reduction, measured_from=target)
    cost.compare_with = lambda trained: reference.update(dense=trained.eval())
    pruner.use_cost(cost, model)
    return table, cost
