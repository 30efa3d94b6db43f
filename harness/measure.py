"""Measurement: accuracy comes from the task; MACs/params from torch-pruning; latency is timed here.

Latency is the median wall time of one forward pass of a whole batch (ms per batch) after warm-up,
in eval mode under ``torch.inference_mode``, at a fixed torch thread count; on CUDA it is timed with
events after synchronising.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

from harness.surgery import count_macs_params  # noqa: F401  (re-exported: the one MACs counter)


@torch.inference_mode()
def latency_ms(model: nn.Module, example: torch.Tensor, *, warmup: int = 5, repeats: int = 20) -> float:
    """Median milliseconds per forward pass of ``example`` (the whole batch) on its device."""
    model.eval()
    cuda = example.is_cuda
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            model(example)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def compare_latency(dense: nn.Module, pruned: nn.Module, make_input, batch_sizes, device: torch.device,
                    *, warmup: int, repeats: int) -> dict[str, dict]:
    """Dense vs pruned latency at each batch size, interleaved so both see the same machine load."""
    out = {}
    for b in batch_sizes:
        x = make_input(int(b)).to(device)
        dense_ms = latency_ms(dense, x, warmup=warmup, repeats=repeats)
        pruned_ms = latency_ms(pruned, x, warmup=warmup, repeats=repeats)
        out[f"b{b}"] = {"batch_size": int(b), "dense_ms": dense_ms, "pruned_ms": pruned_ms,
                        "speedup": dense_ms / pruned_ms, "threads": torch.get_num_threads(),
                        "device": device_name(device)}
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    import platform

    return f"cpu:{platform.processor() or platform.machine()}"
