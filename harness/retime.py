"""``python -m harness retime <run id | pruned_model.pt> ... [batch=128] [threads=1] [seconds=120] [log=true]
[missing=fail|skip]``

Times several pruned models of one architecture and their dense original *together*, in interleaved rounds
(harness.latency.measure.interleaved_latency), so that their latencies can be compared with each other: each
run's own measurement was taken when the run ended, and on a shared CPU the machine's speed drifts by more
between two runs than a run's own interval admits (results/bench/latency_target_methods.notes.md). A study
that matches methods at equal *measured* latency retimes each seed's final models in one pass. Given run ids,
every run gets the figures under ``retime/b<batch>/`` and a tag naming the runs timed with it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

from harness.artifacts import dense_from_payload, fetch_pruned, input_shape, model_from_payload, read_payload
from harness.core.errors import ConfigError
from harness.latency import allocator

OPTIONS = {
    "batch": "128",
    "threads": "1",
    "seconds": "120",
    "min_rounds": "10",
    "interval": "0.02",
    "warmup": "3",
    "device": "cpu",
    "log": "true",
    "missing": "fail",
    "out": None,
    "tracking.uri": None,
    "results_dir": "results",
}


def _options(overrides: list[str]) -> dict:
    from harness.config import number_option, parse_options

    opts = parse_options("retime", OPTIONS, overrides)
    _number = partial(number_option, "retime")
    parsed = {
        "batches": [],
        "threads": _number(opts, "threads", 1, 512),
        "seconds": _number(opts, "seconds", 1, 86400, float),
        "min_rounds": _number(opts, "min_rounds", 6, 100000),
        "interval": _number(opts, "interval", 0.001, 1, float),
        "warmup": _number(opts, "warmup", 0, 1000),
    }
    for b in str(opts["batch"]).split(","):
        parsed["batches"].append(_number({"batch": b.strip()}, "batch", 1, 4096))
    if opts["device"] not in ("cpu", "cuda"):
        raise ConfigError(f"retime: device must be cpu or cuda, got {opts['device']!r}")
    if opts["device"] == "cuda" and not torch.cuda.is_available():
        raise ConfigError("retime: device=cuda but no CUDA device is visible; use device=cpu")
    if opts["missing"] not in ("fail", "skip"):
        raise ConfigError(f"retime: missing must be fail or skip, got {opts['missing']!r}")
    if str(opts["log"]).lower() not in ("true", "false"):
        raise ConfigError(f"retime: log must be true or false, got {opts['log']!r}")
    return {**opts, **parsed, "log": str(opts["log"]).lower() == "true"}


def retime_command(args) -> int:
    from harness.latency.measure import device_name, interleaved_latency

    items = [*args.items, *args.overrides]
    sources = [i for i in items if "=" not in i or Path(i).expanduser().is_file()]
    opts = _options([i for i in items if i not in sources])
    if not sources:
        raise ConfigError("retime needs the models to time: MLflow run ids or pruned_model.pt files")
    if len(set(sources)) != len(sources):
        raise ConfigError("retime: a model is named twice; name each run id or file once")
    torch.set_num_threads(opts["threads"])
    allocator.hold_steady()  # one allocation regime for every timing here (latency/allocator.py)
    device = torch.device(opts["device"])
    with tempfile.TemporaryDirectory() as tmp:
        loaded = []  # (label, run id or None, store uri, payload)
        for i, source in enumerate(sources):
            try:
                path, run_id, uri = fetch_pruned(source, opts["tracking.uri"], opts["results_dir"], Path(tmp) / str(i))
            except ConfigError as e:
                if opts["missing"] == "fail":
                    raise
                print(f"skipped (missing=skip): {e}", file=sys.stderr)
                continue
            loaded.append((run_id or str(path), run_id, uri, read_payload(path)))
    if not loaded:
        raise ConfigError("retime: none of the models given could be loaded")
    specs = {json.dumps(_architecture(p, label), sort_keys=True) for label, _, _, p in loaded}
    if len(specs) > 1:
        names = sorted({p["spec"]["name"] for _, _, _, p in loaded})
        raise ConfigError(
            f"retime compares pruned models of one dense architecture and input; these come from {len(specs)} "
            f"({', '.join(names)}): run it once per architecture"
        )
    payload = loaded[0][3]
    models = {"dense": dense_from_payload(payload).to(device)}
    models.update({label: model_from_payload(p).to(device) for label, _, _, p in loaded})
    shape = input_shape(payload, loaded[0][0])
    where = device_name(device)
    rows = []
    for batch in opts["batches"]:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
        timed = interleaved_latency(
            models,
            "dense",
            x,
            warmup=opts["warmup"],
            min_rounds=opts["min_rounds"],
            max_seconds=opts["seconds"],
            interval=opts["interval"],
        )
        rows += [{"batch": batch, "model": name, **t} for name, t in timed.items()]
    text = _markdown(rows, where, opts["threads"], payload["spec"]["name"])
    print(text)
    if opts["out"]:
        out = Path(opts["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "retime.md").write_text(text)
        (out / "retime.json").write_text(json.dumps(rows, indent=1))
        print(f"written: {out}/retime.md, retime.json")
    if opts["log"]:
        _log(loaded, rows, text)
    return 0


def _architecture(payload: dict, label: str) -> dict:
    spec = payload["spec"]
    return {k: spec.get(k) for k in ("name", "num_classes", "kwargs")} | {"input": input_shape(payload, label)}


def reduction(speedup: float | None) -> float | None:
    """Latency reduction (1 - pruned ÷ dense) from a speed-up (dense ÷ pruned)."""
    return None if speedup is None else 1 - 1 / speedup


def _markdown(rows: list[dict], where: str, threads: int, arch: str) -> str:
    first = rows[0]
    lines = [
        f"# {arch}: pruned models retimed together with their dense original",
        "",
        f"{where}, {threads} thread(s), eager PyTorch, float32, inference mode; ms = median wall time of one "
        "forward pass of the whole batch; every model timed once per round, in rotated order; speed-up = the "
        f"median over rounds of dense ms ÷ model ms in the same round, with its 95% interval; "
        f"{first['rounds']} rounds in {first['seconds']:.0f} s at batch {first['batch']}"
        f"{'' if first['converged'] else ' (stopped at seconds=, before every interval met interval=)'}; "
        f"other harness runs on this machine {'paused' if first['others_paused'] else 'NOT paused'} meanwhile.",
        "",
        "| batch | model | ms per batch | speed-up [95%] | latency ↓ % [95%] | rounds |",
        "|--:|:--|--:|:--|:--|--:|",
    ]
    for r in rows:
        if r["model"] == "dense":
            lines.append(f"| {r['batch']} | dense | {r['ms']:.2f} | 1 | 0 | {r['rounds']} |")
            continue
        lo, hi = r["speedup_lo"], r["speedup_hi"]
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""
        red = f" [{100 * reduction(lo):.1f}, {100 * reduction(hi):.1f}]" if lo is not None else ""
        lines.append(
            f"| {r['batch']} | {r['model']} | {r['ms']:.2f} | {r['speedup']:.3f}{ci} | "
            f"{100 * reduction(r['speedup']):.1f}{red} | {r['rounds']} |"
        )
    return "\n".join(lines) + "\n"


def _log(loaded, rows: list[dict], text: str) -> None:
    from harness.tracking import open_store

    ids = [run_id for _, run_id, _, _ in loaded if run_id]
    with tempfile.TemporaryDirectory() as tmp:
        md = Path(tmp) / "retime.md"
        md.write_text(text)
        for label, run_id, uri, _ in loaded:
            if not run_id:
                continue
            metrics, tags = {}, {}
            for r in rows:
                if r["model"] != label:
                    continue
                dense = next(d for d in rows if d["model"] == "dense" and d["batch"] == r["batch"])
                key = f"retime/b{r['batch']}"
                metrics |= {
                    f"{key}/ms": r["ms"],
                    f"{key}/dense_ms": dense["ms"],
                    f"{key}/speedup": r["speedup"],
                    f"{key}/reduction": reduction(r["speedup"]),
                    f"{key}/rounds": r["rounds"],
                    f"{key}/others_paused": float(bool(r["others_paused"])),
                }
                if r["speedup_lo"] is not None:
                    metrics |= {
                        f"{key}/speedup_lo": r["speedup_lo"],
                        f"{key}/speedup_hi": r["speedup_hi"],
                        f"{key}/reduction_lo": reduction(r["speedup_lo"]),
                        f"{key}/reduction_hi": reduction(r["speedup_hi"]),
                    }
                tags[f"{key}/with"] = ",".join(i for i in ids if i != run_id)[:5000]
            open_store(uri).log_to_run(run_id, [("retime", md)], metrics, tags)
            print(f"logged to MLflow run {run_id} under retime/")
