"""Latency of a model on a backend: eager PyTorch, ``torch.compile`` or ONNX Runtime.

All timings are the median wall time of one forward pass of a whole batch (ms per batch) after
warm-up, at a fixed torch (or ORT intra-op) thread count; on CUDA, eager and compile are timed with
events. ``python -m harness bench model=<pruned_model.pt>`` times a saved pruned model.
"""
from __future__ import annotations

import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from harness.measure import latency_ms

BACKENDS = ("eager", "compile", "onnx")


class BackendUnavailable(RuntimeError):
    pass


def runner(model: nn.Module, example: torch.Tensor, backend: str):
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
            raise BackendUnavailable(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
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
    fn = runner(model, example, backend)
    if backend == "onnx":
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return latency_ms(fn, example, warmup=warmup, repeats=repeats)


def environment() -> dict:
    import torchvision

    env = {"machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def bench_command(args) -> int:
    """``python -m harness bench model=<path> [batch=1,64] [backend=eager,onnx] [threads=N] [device=cpu]``."""
    from harness.artifacts import input_shape, model_from_payload
    from harness.errors import ConfigError

    opts = {"batch": "1,64", "backend": "eager", "threads": None, "device": "cpu", "warmup": "5", "repeats": "20"}
    for item in args.overrides:
        key, eq, value = item.partition("=")
        if not eq or key not in {"model", *opts}:
            raise ConfigError(f"bench takes model=<pruned_model.pt> and {', '.join(k + '=' for k in opts)}; got {item!r}")
        opts[key] = value
    if "model" not in opts:
        raise ConfigError("bench needs model=<path to a pruned_model.pt saved by a run>")
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    path = Path(opts["model"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"model={path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    shape = input_shape(payload, path)
    model = model_from_payload(payload).eval().to(opts["device"])
    print(f"{path}: {payload['spec']['name']}, input {tuple(shape)}, {torch.get_num_threads()} threads, {opts['device']}")
    print("| backend | batch | ms per batch (median) | images/s |\n|---|---|---|---|")
    for backend in opts["backend"].split(","):
        for b in opts["batch"].split(","):
            x = torch.randn(int(b), *shape, device=opts["device"])
            try:
                ms = time_backend(model, x, backend, int(opts["warmup"]), int(opts["repeats"]))
                print(f"| {backend} | {b} | {ms:.3f} | {int(b) / ms * 1e3:.1f} |")
            except BackendUnavailable as e:
                print(f"| {backend} | {b} | unavailable: {e} | |")
    return 0
