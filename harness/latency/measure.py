"""Measurement: accuracy comes from the task; MACs/params from torch-pruning; latency is timed here.

Latency is the median wall time of one forward pass of a whole batch (ms per batch) after warm-up,
in eval mode under ``torch.inference_mode``, at a fixed torch thread count; on CUDA it is timed with
events after synchronising.

A speed-up (dense ms ÷ pruned ms) is measured in *pairs*: the dense and the pruned model run one after
the other on the same batch, in alternating order, so a change of machine load hits both sides of a
pair. Pairs are added until the 95% interval of the median per-pair speed-up (distribution-free, from
order statistics) is within ±``measure.interval`` of it, or ``measure.max_seconds`` have passed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

from harness.core.gate import measuring

Forward = Callable[[torch.Tensor], object]  # a module, a compiled model, an ONNX Runtime runner


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, *, warmup: int = 5, repeats: int = 20) -> float:
    """Median milliseconds per forward pass of ``example`` (the whole batch) on its device. ``model`` is a
    module (put in eval mode) or any callable taking ``example`` (a compiled model, an ONNX Runtime session)."""
    if isinstance(model, nn.Module):
        model.eval()
    with measuring():
        for _ in range(warmup):
            model(example)
        return statistics.median(timed(model, example, 1) for _ in range(repeats))


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median: order statistics k and n+1-k of the sorted values,
    with k the largest such that P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2. None below 6 values."""
    n, tail = len(values), (1 - confidence) / 2
    k, cdf = 0, 0.0
    for j in range(n + 1):
        cdf += math.comb(n, j) / 2**n
        if cdf > tail:
            break
        k = j + 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def paired_latency(
    dense: Forward,
    pruned: Forward,
    x: torch.Tensor,
    *,
    warmup: int,
    min_pairs: int,
    max_seconds: float,
    interval: float = 0.03,
) -> dict:
    """Time ``dense`` and ``pruned`` on ``x`` in alternating pairs until the speed-up's 95% interval is
    within ±``interval`` of its median (relative), or ``max_seconds`` have passed; at least ``min_pairs``:
    ``interleaved_latency`` of the two (a round of two models is a pair, its order alternating).

    ``dense`` and ``pruned`` are modules (put in eval mode) or any callables taking ``x`` (a compiled model,
    an ONNX Runtime session)."""
    timed_pair = interleaved_latency(
        {"dense": dense, "pruned": pruned},
        "dense",
        x,
        warmup=warmup,
        min_rounds=min_pairs,
        max_seconds=max_seconds,
        interval=interval,
    )
    d, p = timed_pair["dense"], timed_pair["pruned"]
    speedup = {k: p[k] for k in ("speedup", "speedup_lo", "speedup_hi", "speedup_q1", "speedup_q3")}
    common = {k: p[k] for k in ("passes_per_timing", "converged", "seconds", "others_paused", "others_wait_s")}
    return {"dense_ms": d["ms"], "pruned_ms": p["ms"], **speedup, "pairs": p["rounds"], **common}


@torch.inference_mode()
def interleaved_latency(
    models: dict[str, Forward],
    reference: str,
    x: torch.Tensor,
    *,
    warmup: int,
    min_rounds: int,
    max_seconds: float,
    interval: float = 0.03,
) -> dict[str, dict]:
    """Time several models of one input in *rounds*: each round times every model once, in an order rotated
    round by round, so that a change of the machine's speed (on a shared CPU it moves by a third within
    minutes, and not alike for every model) hits all of them alike. Each model's speed-up over ``reference``
    is the median, over rounds, of the reference's ms ÷ the model's ms in the same round, with its 95%
    interval and quartiles; rounds are added until every interval is within ±``interval`` of its median
    (relative), or ``max_seconds`` have passed; at least ``min_rounds``. Models timed separately, minutes
    apart, cannot be compared this closely: their own intervals are narrower than the drift between them.

    A timing covers enough forward passes to last ~2 ms (sub-millisecond passes are dominated by timer and
    scheduler noise); the ms reported are per forward pass of the batch."""
    if reference not in models:
        raise ValueError(f"reference {reference!r} is not among the models")
    names = list(models)
    for m in models.values():
        if isinstance(m, nn.Module):
            m.eval()
    with measuring() as calm:
        for _ in range(max(1, warmup)):
            for m in models.values():
                m(x)
        passes = {n: passes_for(m, x) for n, m in models.items()}
        ms: dict[str, list[float]] = {n: [] for n in names}
        ratios: dict[str, list[float]] = {n: [] for n in names}
        started, converged, rounds = time.perf_counter(), False, 0
        while True:
            shift = rounds % len(names)
            for n in names[shift:] + names[:shift]:
                ms[n].append(timed(models[n], x, passes[n]))
            for n in names:
                ratios[n].append(ms[reference][-1] / ms[n][-1])
            rounds += 1
            if rounds < max(1, min_rounds):
                continue
            intervals = {n: median_interval(ratios[n]) for n in names if n != reference}
            if all(within(ratios[n], ci, interval) for n, ci in intervals.items()):
                converged = True
                break
            if time.perf_counter() - started >= max_seconds:
                break
    seconds = time.perf_counter() - started
    common = {"rounds": rounds, "converged": converged, "seconds": seconds}
    # the machine's other harness runs held meanwhile (harness.core.gate)
    common.update(others_paused=calm["others_paused"], others_wait_s=calm["waited_s"])
    return {
        n: {**_speedup_summary(ms[n], ratios[n], n != reference), "passes_per_timing": passes[n], **common}
        for n in names
    }


def _speedup_summary(ms: list[float], ratios: list[float], with_interval: bool) -> dict:
    """A model's median ms and its speed-up over the reference: median, 95% interval (not for the reference
    itself) and quartiles over the rounds."""
    ci = median_interval(ratios) if with_interval else None
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "ms": statistics.median(ms),
        "speedup": statistics.median(ratios),
        "speedup_lo": ci[0] if ci else None,
        "speedup_hi": ci[1] if ci else None,
        "speedup_q1": quartiles[0],
        "speedup_q3": quartiles[2],
    }


def within(values: list[float], ci: tuple[float, float] | None, interval: float) -> bool:
    """Whether the interval ``ci`` of the median of ``values`` lies within ±``interval`` (relative) of it."""
    if ci is None:
        return False
    median = statistics.median(values)
    return max(median - ci[0], ci[1] - median) <= interval * median


def on_cuda(x: torch.Tensor | list[torch.Tensor]) -> bool:
    """Whether an input (one tensor, or a detector's list of images) lives on a CUDA device."""
    return (x if isinstance(x, torch.Tensor) else x[0]).is_cuda


def to_device(x: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    return x.to(device) if isinstance(x, torch.Tensor) else [t.to(device) for t in x]


def passes_for(model: Forward, x: torch.Tensor) -> int:
    """Forward passes per timing so that one timing lasts ~2 ms (1 to 1000): sub-millisecond timings are
    dominated by timer and scheduler noise."""
    return max(1, min(1000, math.ceil(2.0 / max(timed(model, x, 1), 1e-3))))


def timed(model: Forward, x: torch.Tensor, passes: int) -> float:
    """Milliseconds per forward pass, over ``passes`` passes."""
    if on_cuda(x):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(passes):
            model(x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / passes
    t0 = time.perf_counter()
    for _ in range(passes):
        model(x)
    return (time.perf_counter() - t0) * 1e3 / passes


def compare_latency(
    dense: nn.Module,
    pruned: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    batch_sizes: Iterable[int],
    device: torch.device,
    *,
    warmup: int,
    repeats: int,
    max_seconds: float = 10.0,
    interval: float = 0.03,
) -> dict[str, dict]:
    """Dense vs pruned latency at each batch size, in alternating pairs (``paired_latency``)."""
    out = {}
    for b in batch_sizes:
        x = to_device(make_input(int(b)), device)
        measured = paired_latency(
            dense, pruned, x, warmup=warmup, min_pairs=repeats, max_seconds=max_seconds, interval=interval
        )
        out[f"b{b}"] = {
            "batch_size": int(b),
            **measured,
            "threads": torch.get_num_threads(),
            "device": device_name(device),
        }
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()}"
