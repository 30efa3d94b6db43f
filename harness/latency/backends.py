"""Backends a model's latency is measured on: eager PyTorch, ``torch.compile`` or ONNX Runtime.

Each backend gives a callable taking the input batch, timed by ``harness.latency.measure`` like an
eager model: the median wall time of one forward pass of a whole batch (ms per batch) after warm-up,
at a fixed torch (or ORT intra-op) thread count; on CUDA, eager and compile are timed with events.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from harness.latency.measure import latency_ms

BACKENDS = ("eager", "compile", "onnx")


class BackendUnavailable(RuntimeError):
    pass


def runner(model: nn.Module, example: torch.Tensor, backend: str) -> Callable[[torch.Tensor], object]:
    """A callable that runs one forward pass of ``example`` on ``backend``."""
    model = model.eval()
    if backend == "eager":
        return model
    if backend == "compile":
        try:
            compiled = torch.compile(model)
            with torch.inference_mode():
                compiled(example)
            return compiled
        except Exception as e:  # no compiler toolchain, unsupported op, ...
            raise BackendUnavailable(
                f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            ) from None
    if backend == "onnx":
        return _onnx_runner(model, example)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def _onnx_runner(model, example):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("onnxruntime is not installed (pip install -e '.[bench]')") from None
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    try:  # the dynamo exporter (needs onnxscript); it writes weights beside the .onnx file
        torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=None)
        how = "dynamo"
    except Exception:  # the documented fallback: the TorchScript exporter
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"], opset_version=17)
        how = "torchscript"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: example.cpu().numpy()}

    def run(_x=None):
        return session.run(None, feed)

    run.exporter = how
    return run


def time_backend(model: nn.Module, example: torch.Tensor, backend: str, warmup: int, repeats: int) -> float:
    """Median ms per forward pass of ``example`` on ``backend``, through the one timer (``measure.timed``)."""
    return latency_ms(runner(model, example, backend), example, warmup=warmup, repeats=repeats)


def environment() -> dict:
    import torchvision

    env = {
        "machine": platform.processor() or platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
