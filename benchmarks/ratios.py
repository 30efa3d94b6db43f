"""Measured speed-ups of pruned models, their efficiency (speed-up ÷ MACs ratio), and the harness's
own cost, each as a ratio measured side by side in one run. Writes results/bench/*.md.

    python benchmarks/ratios.py                      # everything (about 15 minutes on 2 CPU cores)
    python benchmarks/ratios.py --models resnet56 --backends eager --skip-overhead

Latency: median ms per batch after warm-up; dense and pruned are timed in alternating pairs on the same
batch (harness.latency.measure.paired_latency, what every run does), pairs added until the speed-up's 95%
interval is within ±3% of its median or --max-seconds pass. MACs ratio = dense MACs / pruned MACs
(batch 1); efficiency = speed-up / MACs ratio (1.0 = the speed-up that the MACs promise).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import MODELS, dense_and_pruned  # noqa: E402
from harness.latency.backends import BackendUnavailable, environment, runner  # noqa: E402
from harness.latency.measure import paired_latency  # noqa: E402


def latency_rows(
    models, targets, rounds, batches, backends, repeats, device: str = "cpu", max_seconds: float = 20.0
) -> list[dict]:
    rows = []
    for name in models:
        for target in targets:
            for round_to in rounds:
                dense, pruned, size, dense_macs, pruned_macs = dense_and_pruned(name, target, round_to)
                dense, pruned = dense.to(device), pruned.to(device)
                for batch in batches:
                    for backend in backends:
                        if name == "resnet50" and backend != "eager" and batch > 1 and device == "cpu":
                            continue  # compile/ONNX of ResNet-50 at batch 64 takes too long for this machine
                        x = torch.randn(batch, 3, size, size, device=device)
                        reps = max(6, repeats // 4) if name == "resnet50" and batch > 1 and device == "cpu" else repeats
                        try:
                            fd, fp = runner(dense, x, backend), runner(pruned, x, backend)
                        except BackendUnavailable as e:
                            print(f"{name} {backend}: {e}", file=sys.stderr)
                            continue
                        m = paired_latency(fd, fp, x, warmup=2, min_pairs=reps, max_seconds=max_seconds)
                        ratio = dense_macs / pruned_macs
                        row = {
                            "device": device,
                            "model": name,
                            "target": target,
                            "round_to": round_to or "-",
                            "batch": batch,
                            "backend": backend,
                            "dense ms": m["dense_ms"],
                            "pruned ms": m["pruned_ms"],
                            "speed-up": m["speedup"],
                            "95% interval": _interval(m),
                            "pairs": m["pairs"],
                            "MACs ratio": ratio,
                            "efficiency": m["speedup"] / ratio,
                            "efficiency 95%": _interval(m, ratio),
                        }
                        rows.append(row)
                        print(
                            " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                            file=sys.stderr,
                            flush=True,
                        )
    return rows


def harness_overhead(steps: int = 12, rounds: int = 5) -> dict:
    """Epoch time of harness.core.train.train (a method hook, a progress bar drawn to a sink, per-epoch
    MLflow logging to a temporary sqlite store) over a bare loop, same model, data and optimiser."""
    from benchmarks.common import one_epoch_recipe
    from harness.core.train import train
    from harness.tracking import MlflowTracker
    from methods.slimming import BNSparsity
    from tasks.models import create_model

    torch.manual_seed(0)
    data = [(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))) for _ in range(steps)]
    recipe = one_epoch_recipe(weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    tmp = Path(tempfile.mkdtemp())
    tracker = MlflowTracker(f"sqlite:///{tmp / 'mlflow.db'}", "bench", tmp / "mlruns")
    tracker.start({"bench": "overhead"}, {})

    def bare(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    def harness(model):
        sink = io.StringIO()
        sink.isatty = lambda: True  # draw the progress bar, as on a terminal
        with contextlib.redirect_stderr(sink):
            train(
                model,
                data,
                recipe,
                loss_fn=loss_fn,
                device=torch.device("cpu"),
                hooks=[BNSparsity(1e-5)],
                on_epoch=lambda e, m: tracker.log_metrics({f"bench/{k}": v for k, v in m.items()}, e),
                desc="bench",
            )

    model = create_model("resnet20", 10)
    times = {"bare": [], "harness": []}
    bare(model)  # warm-up
    for _ in range(rounds):  # interleaved, so both see the same machine
        for name, fn in (("bare", bare), ("harness", harness)):
            t0 = time.perf_counter()
            fn(model)
            times[name].append(time.perf_counter() - t0)
    tracker.end()
    b, h = statistics.median(times["bare"]), statistics.median(times["harness"])
    return {
        "bare s/epoch": b,
        "harness s/epoch": h,
        "overhead": h / b - 1,
        "steps": steps,
        "batch": 64,
        "model": "resnet20",
    }


def pruning_step_cost(repeats: int = 3) -> dict:
    """One pruning step on ResNet-50 (224x224): scores for every group, removing the lowest 1% of
    channels through the dependency graph, and counting MACs again."""
    import copy

    from benchmarks.common import resnet50_and_pruner
    from methods.l1 import FilterL1Importance

    torch.manual_seed(0)
    model, pruner = resnet50_and_pruner()
    parts = {"importance + ranking": [], "surgery": [], "MACs count": []}
    for _ in range(repeats):
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        order = pruner.removal_order(m, FilterL1Importance())
        t1 = time.perf_counter()
        pruner.remove(m, order[: len(order) // 100])
        t2 = time.perf_counter()
        pruner.reduction(m)
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)
    return {k: statistics.median(v) for k, v in parts.items()}


def _interval(m: dict, divide_by: float = 1.0) -> str:
    if m["speedup_lo"] is None:
        return "–"
    return f"[{m['speedup_lo'] / divide_by:.3f}, {m['speedup_hi'] / divide_by:.3f}]" + (
        "" if m["converged"] else " (cap)"
    )


def _table(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--round-to", nargs="+", type=int, default=[0, 8], help="0: any width")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--backends", nargs="+", default=["eager", "compile", "onnx"])
    p.add_argument("--repeats", type=int, default=15, help="at least this many (dense, pruned) pairs")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=20.0,
        help="then pairs until the speed-up's 95%% interval is within ±3%%, at most this long per row",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--out", type=Path, default=Path("results/bench"))
    p.add_argument(
        "--tracking-uri",
        default="sqlite:///results/mlflow.db?timeout=60",
        help="MLflow store for the measurements (experiment 'bench'); 'none' to skip",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = environment()
    header = (
        f"Machine: {env['machine']}, {args.threads} torch threads (ORT intra-op threads the same), CPU; "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("machine", "cpus"))
        + ".\n\n"
        f"Command: `python benchmarks/ratios.py {' '.join(sys.argv[1:])}`\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)

    rows = latency_rows(
        args.models,
        args.targets,
        [r or None for r in args.round_to],
        args.batches,
        args.backends,
        args.repeats,
        max_seconds=args.max_seconds,
    )
    text = (
        "# Latency of pruned models, CPU\n\n" + header + "\nL1-pruned (global) untrained weights; "
        "median ms per batch; dense and pruned timed in alternating pairs on the same batch; speed-up = median of "
        "the per-pair ratios, with its distribution-free 95% interval (order statistics), pairs added until the "
        "interval is within ±3% of the median or the time cap ('(cap)': not reached); MACs ratio = dense/pruned "
        "MACs at batch 1; efficiency = speed-up / MACs ratio, with the same interval.\n\n" + _table(rows) + "\n"
    )
    (args.out / "latency_cpu.md").write_text(text)
    print(text)
    if torch.cuda.is_available():  # CUDA events, eager (latency_ms synchronises around each batch)
        cuda_rows = latency_rows(
            args.models,
            args.targets,
            [r or None for r in args.round_to],
            args.batches,
            ["eager"],
            args.repeats,
            device="cuda",
            max_seconds=args.max_seconds,
        )
        text = (
            f"# Latency of pruned models, CUDA ({torch.cuda.get_device_name()})\n\n"
            + header
            + "\nAs the CPU table, timed with CUDA events.\n\n"
            + _table(cuda_rows)
            + "\n"
        )
        (args.out / "latency_cuda.md").write_text(text)
        print(text)
        rows += cuda_rows
    if not args.skip_overhead:
        over = harness_overhead()
        step = pruning_step_cost()
        text = (
            "# The harness's own cost\n\n" + header + "\n## Training loop overhead\n\n"
            "harness.core.train.train (method hook, progress bar drawn, per-epoch MLflow logging) against a bare "
            "loop on the same model, data and optimiser; median of 5 interleaved epochs.\n\n"
            + _table([over])
            + "\n\n## One pruning step on ResNet-50 (224x224), seconds, median of 3\n\n"
            + _table([step])
            + "\n"
        )
        (args.out / "overhead.md").write_text(text)
        print(text)
    if args.tracking_uri != "none":
        log_to_mlflow(args, env, rows, None if args.skip_overhead else (over, step))
    return 0


def log_to_mlflow(args, env: dict, rows: list[dict], cost: tuple[dict, dict] | None) -> None:
    """One run in experiment 'bench': every latency row as metrics, and the tables as artifacts."""
    from harness.tracking import MlflowTracker

    tracker = MlflowTracker(args.tracking_uri, "bench", args.out.parent / "mlruns")
    tracker.start(
        {"threads": args.threads, "device": "cpu", "repeats": args.repeats, **env},
        {"harness.kind": "bench", "mlflow.runName": f"bench-{time.strftime('%Y%m%d-%H%M%S')}"},
    )
    for r in rows:
        key = f"{r['device']}/{r['model']}/r{r['target']}/round{r['round_to']}/b{r['batch']}/{r['backend']}"
        tracker.log_metrics(
            {
                f"{key}/dense_ms": r["dense ms"],
                f"{key}/pruned_ms": r["pruned ms"],
                f"{key}/speedup": r["speed-up"],
                f"{key}/efficiency": r["efficiency"],
            }
        )
    if cost:
        over, step = cost
        tracker.log_metrics(
            {
                "overhead/train_loop": over["overhead"],
                **{f"pruning_step_s/{k.replace(' + ', '_').replace(' ', '_')}": v for k, v in step.items()},
            }
        )
    for name in ("latency_cpu.md", "overhead.md"):
        if (args.out / name).exists():
            tracker.log_artifact(args.out / name, "bench")
    tracker.flush()
    tracker.end()
    print(f"logged to MLflow run {tracker.run_id} in {args.tracking_uri} (experiment 'bench')", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
