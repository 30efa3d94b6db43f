"""``python -m harness bench model=<pruned_model.pt>``: a saved pruned model's latency on each backend
(harness.latency.backends), in ms per batch."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.latency import allocator
from harness.latency.backends import BackendUnavailable, time_backend


def bench_command(args) -> int:
    """``python -m harness bench model=<path> [batch=1,64] [backend=eager,onnx] [threads=N] [device=cpu]``."""
    from harness.artifacts import input_shape, model_from_payload
    from harness.config import parse_options
    from harness.core.errors import ConfigError

    defaults = {
        "model": None,
        "batch": "1,64",
        "backend": "eager",
        "threads": None,
        "device": "cpu",
        "warmup": "5",
        "repeats": "20",
    }
    opts = parse_options("bench", defaults, args.overrides)
    if not opts["model"]:
        raise ConfigError("bench needs model=<path to a pruned_model.pt saved by a run>")
    if opts["threads"]:
        torch.set_num_threads(int(opts["threads"]))
    allocator.hold_steady()  # one allocation regime for every timing here (latency/allocator.py)
    path = Path(opts["model"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"model={path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    shape = input_shape(payload, path)
    model = model_from_payload(payload).eval().to(opts["device"])
    print(
        f"{path}: {payload['spec']['name']}, input {tuple(shape)}, {torch.get_num_threads()} threads, {opts['device']}"
    )
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
