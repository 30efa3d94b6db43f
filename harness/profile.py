"""``python -m harness profile <run id | pruned_model.pt> [batch=64] [threads=1] [passes=20] [top=10] [out=DIR]``

Per-layer time of the dense and the pruned model (harness.latency.profile: forward hooks, alternating
passes), as a Markdown table (by kind of work, with the fixed per-layer costs apart from the convolutions,
and the layers holding most of the pruned time), a PNG bar chart and a JSON file. The dense model is the
registry's architecture at full width (random weights: time does not depend on them). Given a run id, the
model comes from the run's MLflow record and the profile is logged back to it under ``profile/``.
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path

import torch

from harness.artifacts import dense_from_payload, fetch_pruned, input_shape, model_from_payload, read_payload
from harness.core.errors import ConfigError
from harness.latency import allocator

OPTIONS = {
    "batch": "64",
    "threads": "1",
    "passes": "20",
    "warmup": "3",
    "top": "10",
    "device": "cpu",
    "out": None,
    "tracking.uri": None,
    "results_dir": "results",
}


def profile_command(args) -> int:
    from harness.config import number_option, parse_options
    from harness.latency import profile as prof

    opts = parse_options("profile", OPTIONS, args.overrides)
    _int = partial(number_option, "profile")
    batch, threads = _int(opts, "batch", 1, 4096), _int(opts, "threads", 1, 512)
    passes, warmup, top = _int(opts, "passes", 3, 10000), _int(opts, "warmup", 0, 1000), _int(opts, "top", 1, 1000)
    if opts["device"] not in ("cpu", "cuda"):
        raise ConfigError(f"profile: device must be cpu or cuda, got {opts['device']!r}")
    if opts["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("profile: device=cuda but no CUDA device is visible; use device=cpu")
    torch.set_num_threads(threads)
    allocator.hold_steady()  # one allocation regime for every timing here (latency/allocator.py)
    with tempfile.TemporaryDirectory() as tmp:
        path, run_id, uri = fetch_pruned(args.source, opts["tracking.uri"], opts["results_dir"], Path(tmp))
        payload = read_payload(path)
        device = torch.device(opts["device"])
        pruned = model_from_payload(payload).to(device)
        dense = dense_from_payload(payload).to(device)
        x = torch.randn(batch, *input_shape(payload, path), generator=torch.Generator().manual_seed(0)).to(device)
        result = prof.profile_models(dense, pruned, x, passes=passes, warmup=warmup)
    out = Path(opts["out"]) if opts["out"] else _default_out(args.source, path, run_id, Path(opts["results_dir"]))
    out.mkdir(parents=True, exist_ok=True)
    title = f"{payload['spec']['name']} ({run_id or Path(args.source).name})"
    text = prof.markdown(result, top, title)
    (out / "profile.md").write_text(text)
    prof.bar_chart(result, out / "profile.png", title=title)
    (out / "profile.json").write_text(json.dumps(_as_json(result), indent=1))
    print(text)
    print(f"written: {out}/profile.md, profile.png, profile.json")
    if run_id:
        from harness.tracking import open_store

        metrics = {
            f"profile/b{batch}_unattributed_share": (result.pruned_whole_ms - result.pruned_sum_ms)
            / result.pruned_whole_ms,
            f"profile/b{batch}_fixed_share": sum(result.by_kind.get(k, (0, 0))[1] for k in prof.FIXED_KINDS)
            / result.pruned_whole_ms,
        }
        files = [("profile", out / name) for name in ("profile.md", "profile.png", "profile.json")]
        open_store(uri).log_to_run(run_id, files, metrics)
        print(f"logged to MLflow run {run_id} under profile/")
    return 0


def _default_out(source: str, path: Path, run_id: str | None, results_dir: Path) -> Path:
    if run_id:
        return results_dir / "profiles" / run_id
    return path.with_name(path.name.removesuffix(".pt") + "_profile")


def _as_json(p) -> dict:
    return {
        "batch": p.batch,
        "threads": p.threads,
        "device": p.device,
        "passes": p.passes,
        "unit": "ms per batch",
        "dense_whole_ms": p.dense_whole_ms,
        "pruned_whole_ms": p.pruned_whole_ms,
        "dense_sum_ms": p.dense_sum_ms,
        "pruned_sum_ms": p.pruned_sum_ms,
        "by_kind": {k: {"dense_ms": d, "pruned_ms": q} for k, (d, q) in p.by_kind.items()},
        "layers": [vars(layer) for layer in p.layers],
    }
