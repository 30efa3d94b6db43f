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

from harness.latency.gate import measuring

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


@torch.inference_mode()
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
    within ±``interval`` of its median (relative), or ``max_seconds`` have passed; at least ``min_pairs``.

    A timing covers enough forward passes to last ~2 ms (sub-millisecond passes are dominated by timer
    and scheduler noise); the ms reported are per forward pass of the batch. ``dense`` and ``pruned`` are
    modules (put in eval mode) or any callables taking ``x`` (a compiled model, an ONNX Runtime session)."""
    for m in (dense, pruned):
        if isinstance(m, nn.Module):
            m.eval()
    with measuring() as calm:
        for _ in range(max(1, warmup)):
            dense(x), pruned(x)
        passes = passes_for(dense, x)
        dense_ms, pruned_ms, ratios = [], [], []
        started, converged, ci = time.perf_counter(), False, None
        while True:
            if len(ratios) % 2 == 0:
                d, p = timed(dense, x, passes), timed(pruned, x, passes)
            else:
                p, d = timed(pruned, x, passes), timed(dense, x, passes)
            dense_ms.append(d), pruned_ms.append(p), ratios.append(d / p)
            if len(ratios) < max(1, min_pairs):
                continue
            ci = median_interval(ratios)
            median = statistics.median(ratios)
            if ci is not None and max(median - ci[0], ci[1] - median) <= interval * median:
                converged = True
                break
            if time.perf_counter() - started >= max_seconds:
                break
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "dense_ms": statistics.median(dense_ms),
        "pruned_ms": statistics.median(pruned_ms),
        "speedup": statistics.median(ratios),
        "speedup_lo": ci[0] if ci else None,
        "speedup_hi": ci[1] if ci else None,
        "speedup_q1": quartiles[0],
        "speedup_q3": quartiles[2],
        "pairs": len(ratios),
        "passes_per_timing": passes,
        "converged": converged,
        "seconds": time.perf_counter() - started,
        "others_paused": calm["others_paused"],  # the machine's other harness runs held (harness.latency.gate)
        "others_wait_s": calm["waited_s"],
    }


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
    interval; rounds are added until every interval is within ±``interval`` of its median (relative), or
    ``max_seconds`` have passed; at least ``min_rounds``. Models timed separately, minutes apart, cannot be
    compared this closely: their own intervals are narrower than the drift between them."""
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
        passes = {n: passes_for(m, x) for n, m in models.items()}  # each timing lasts ~2 ms or more
        ms: dict[str, list[float]] = {n: [] for n in names}
        started, converged, rounds = time.perf_counter(), False, 0
        while True:
            shift = rounds % len(names)
            for n in names[shift:] + names[:shift]:
                ms[n].append(timed(models[n], x, passes[n]))
            rounds += 1
            if rounds < max(1, min_rounds):
                continue
            speedups = {n: [r / t for r, t in zip(ms[reference], ms[n])] for n in names if n != reference}
            intervals = {n: median_interval(v) for n, v in speedups.items()}
            if all(
                ci is not None and max(med - ci[0], ci[1] - med) <= interval * med
                for n, ci in intervals.items()
                for med in [statistics.median(speedups[n])]
            ):
                converged = True
                break
            if time.perf_counter() - started >= max_seconds:
                break
    out = {}
    for n in names:
        ratios = [r / t for r, t in zip(ms[reference], ms[n])]
        ci = median_interval(ratios) if n != reference else None
        out[n] = {
            "ms": statistics.median(ms[n]),
            "speedup": statistics.median(ratios),
            "speedup_lo": ci[0] if ci else None,
            "speedup_hi": ci[1] if ci else None,
            "rounds": rounds,
            "passes_per_timing": passes[n],
            "converged": converged,
            "seconds": time.perf_counter() - started,
            "others_paused": calm["others_paused"],
        }
    return out


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
