"""Does prune.target=latency meet its request? ResNet-56 and VGG-16 (CIFAR, 32x32) on this CPU.

    python benchmarks/latency_target.py [--targets 0.3 0.5] [--batches 1 64] [--threads 2] [--out results/bench/latency_target.md]

For each model, batch size and requested latency reduction, the harness's own pieces prune the model
with L1-norm's channel ranking (untrained weights: latency does not depend on the values):

- *table only*: the per-layer lookup table (harness/latency/table.py) predicts the latency of every
  candidate and the pruner takes the shortest prefix of the ranking predicted to meet the request;
- *table + measured* (what `prune.target=latency` runs do): the same, corrected by real paired
  measurements of the candidate (at most 5, 8 once bracketed; 10 s each) while the measured reduction misses by more than 2 points.

Each pruned model's reduction is then measured afresh, dense and pruned in alternating pairs until the
speed-up's 95% interval is within +-3% (or 20 s): the "measured" column, with that interval. The table
is built once per device, threads and batch (its build time is shown) under a temporary results folder.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import untrained_with_table  # noqa: E402
from harness.core.errors import ConfigError  # noqa: E402
from harness.core.surgery import (
    count_macs_params,  # noqa: E402
)
from harness.latency.measure import paired_latency  # noqa: E402
from harness.latency.target import Corrected, PredictedLatency, reduction_from_speedup  # noqa: E402
from methods.l1 import FilterL1Importance  # noqa: E402


def measure(dense, pruned, x, seconds: float) -> dict:
    t = paired_latency(dense, pruned, x, warmup=3, min_pairs=10, max_seconds=seconds, interval=0.03)
    cut = lambda s: reduction_from_speedup(s) or float("nan")  # noqa: E731
    return {
        "measured": cut(t["speedup"]),
        "lo": cut(t["speedup_lo"]),
        "hi": cut(t["speedup_hi"]),
        "dense_ms": t["dense_ms"],
        "pruned_ms": t["pruned_ms"],
        "pairs": t["pairs"],
    }


def case(name: str, batch: int, targets: list[float], results: Path, args_seconds: float = 10.0) -> list[dict]:
    dense, example, x, pruner, table, line, built = untrained_with_table(name, batch, results)
    predicted = PredictedLatency(table)
    rows = []
    for target in targets:
        for mode in ("table only", "table + measured"):
            model = copy.deepcopy(dense)
            cost = (
                predicted
                if mode == "table only"
                else Corrected(
                    predicted, lambda m: measure(dense, m.eval(), x, args_seconds)["measured"], measured_from=target
                )
            )
            pruner.use_cost(cost, dense)
            t0 = time.perf_counter()
            try:
                pruner.prune_to_target(model, FilterL1Importance(), target)
            except ConfigError as e:  # the per-layer minimums cannot reach it on this device and batch
                print(f"{name} b{batch} {mode}: {e}", flush=True)
                rows.append(
                    {
                        "model": name,
                        "batch": batch,
                        "requested %": 100 * target,
                        "mode": mode,
                        "unreachable": str(e),
                        "table build s": built,
                        "calibration worst error %": 100 * line["max_rel_error"],
                    }
                )
                break
            search = time.perf_counter() - t0
            m = measure(dense, model.eval(), x, 20.0)
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "requested %": 100 * target,
                    "mode": mode,
                    "predicted %": 100 * pruner.reduction(model),
                    **{k: v for k, v in m.items()},
                    "MACs ↓ %": 100 * (1 - count_macs_params(model, example)[0] / pruner.base_macs),
                    "measurements": len(getattr(cost, "corrections", [])),
                    "search s": search,
                    "table build s": built,
                    "calibration worst error %": 100 * line["max_rel_error"],
                }
            )
            r = rows[-1]
            for c in getattr(cost, "corrections", []):
                print(
                    f"    measured while pruning: prefix {c['prefix']}, predicted {100 * c['predicted']:.1f}%, "
                    f"measured {100 * c['measured']:.1f}%",
                    flush=True,
                )
            print(
                f"{name} b{batch} {mode:17s} requested {100 * target:.0f}%: predicted {r['predicted %']:.1f}%, "
                f"measured {100 * r['measured']:.1f}% [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}] "
                f"(MACs -{r['MACs ↓ %']:.1f}%, {r['measurements']} measurements, {search:.1f} s)",
                flush=True,
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg16_cifar"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/bench/latency_target.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batches:
                rows += case(name, batch, args.targets, Path(tmp))
    write(rows, args, time.time() - started)
    return 0


def write(rows: list[dict], args, wall: float) -> None:
    import pandas as pd

    reached = [r for r in rows if "unreachable" not in r]
    table = pd.DataFrame(
        [
            {
                "model": r["model"],
                "batch": r["batch"],
                "requested ↓ %": f"{r['requested %']:.0f}",
                "mode": r["mode"],
                "predicted ↓ %": f"{r['predicted %']:.1f}",
                "measured ↓ % [95%]": f"{100 * r['measured']:.1f} [{100 * r['lo']:.1f}, {100 * r['hi']:.1f}]",
                "miss (points)": f"{100 * r['measured'] - r['requested %']:+.1f}",
                "within 5": "yes" if abs(100 * r["measured"] - r["requested %"]) <= 5 else "no",
                "dense → pruned ms": f"{r['dense_ms']:.2f} → {r['pruned_ms']:.2f}",
                "MACs ↓ %": f"{r['MACs ↓ %']:.1f}",
                "measurements": r["measurements"],
                "search s": f"{r['search s']:.1f}",
                "table build s": f"{r['table build s']:.0f}",
                "calibration worst %": f"{r['calibration worst error %']:.1f}",
            }
            for r in reached
        ]
    )
    refused = [
        f"- {r['model']} batch {r['batch']}, {r['requested %']:.0f}%: refused: {r['unreachable']}"
        for r in rows
        if "unreachable" in r
    ]
    met = [r for r in reached if r["mode"] == "table + measured"]
    ok = sum(abs(100 * r["measured"] - r["requested %"]) <= 5 for r in met)
    text = "\n".join(
        [
            "# Latency targets on CPU: requested vs measured",
            "",
            f"`python benchmarks/latency_target.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
            "",
            f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, eager "
            "PyTorch, float32, inference mode; latency = ms per forward pass of the whole batch (median); ResNet-56 "
            "(CIFAR-10, 32x32) and VGG-16 (CIFAR-100, 32x32), untrained weights, L1-norm's ranking, per-layer "
            "minimum 10% of the channels. 'measured' = 1 - pruned ms / dense ms, timed afresh in alternating "
            "pairs after pruning, with the 95% interval of the median per-pair ratio. 'table build s' is the "
            "one-off per device/threads/batch cost of the lookup table (cached under results/latency_tables/ "
            "in real runs); 'search s' the pruning's own time, measurements included.",
            "",
            f"**Table + measured (what runs do): {ok} of {len(met)} cases within 5 points of the request.** "
            f"Wall time {wall / 60:.1f} min.",
            "",
            table.to_markdown(index=False, disable_numparse=True),
            "",
            *(
                [
                    "Requests the per-layer minimums cannot reach on this CPU (the run refuses them, exit 2):",
                    "",
                    *refused,
                    "",
                ]
                if refused
                else []
            ),
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
