"""Does one latency-target run time its network alike while it corrects the cut and at its end?

    python benchmarks/allocator_in_run.py [--runs 3] [--method slimming] [--model vgg16_cifar] [--batch 64]
                                          [--request 0.3] [--tracking mlflow|none]

The cell of benchmarks/latency_target_methods.py that missed (slimming, VGG-16, batch 64, a 30% latency
cut requested) is run whole through the harness ``--runs`` times per arm, the arms alternating so that the
machine's drift hits both alike: ``measure.steady_allocator=false`` (glibc's malloc as it comes: it moves
its mmap and trim thresholds as the process frees large blocks) and ``true`` (both fixed for the run,
harness/latency/allocator.py). Each run's correction accepts a cut on its own paired measurements; the run
then measures the same network again at its end. Reported per run: the corrections' measurements, the
accepted cut (the mean of its two measurements), the final measurement with its 95% interval and the
*gap* (final − accepted, points); per arm the mean gap and the final miss (final − request); then the
difference of the arms' mean gaps with a Welch 95% interval. ``--tracking mlflow`` (the default) records
the runs as a real one does, in the project's store (experiment ``allocator_in_run``); ``none`` without
MLflow. The baseline and latency table come from the project's caches (results/). Writes
results/bench/allocator_in_run.md (``_tracking_none.md`` for ``--tracking none``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.latency_target_methods import COMMON, METHODS  # noqa: E402

ARMS = ("false", "true")  # measure.steady_allocator


def one_run(args, arm: str) -> dict:
    cmd = [sys.executable, "-m", "harness", "run", *COMMON, *METHODS[args.method], f"model={args.model}"]
    cmd += [f"measure.target_batch={args.batch}", f"measure.batch_sizes=[{args.batch}]"]
    cmd += [f"prune.latency_reduction={args.request}", f"measure.steady_allocator={arm}", "--json"]
    cmd += ["tracking=none"] if args.tracking == "none" else ["tracking.experiment=allocator_in_run"]
    started = time.time()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    s = json.loads(done.stdout.strip().splitlines()[-1])
    by_prefix: dict[int, list[float]] = {}
    for c in s["latency_corrections"]:
        by_prefix.setdefault(c["prefix"], []).append(c["measured"])
    accepted = min((statistics.mean(v) for v in by_prefix.values()), key=lambda m: abs(m - args.request))
    final = s["latency_reduction_measured"]
    pairs = [  # the same candidate timed twice in a row (a confirmation): how far apart, points
        100 * abs(c["measured"] - prev["measured"])
        for prev, c in zip(s["latency_corrections"], s["latency_corrections"][1:])
        if c.get("confirming")
    ]
    return {
        "repeat": max(pairs, default=float("nan")),
        "arm": arm,
        "measured": [round(100 * c["measured"], 1) for c in s["latency_corrections"]],
        "accepted": 100 * accepted,
        "final": 100 * final,
        "final_lo": 100 * s["latency_reduction_measured_lo"],
        "final_hi": 100 * s["latency_reduction_measured_hi"],
        "gap": 100 * (final - accepted),
        "seconds": time.time() - started,
    }


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of b − mean of a with its Welch 95% interval."""
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    d, half = statistics.mean(b) - statistics.mean(a), stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    return d, d - half, d + half


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per arm")
    p.add_argument("--method", default="slimming", choices=list(METHODS))
    p.add_argument("--model", default="vgg16_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--request", type=float, default=0.3)
    p.add_argument("--tracking", default="mlflow", choices=("mlflow", "none"))
    args = p.parse_args()
    args.out = ROOT / "results" / "bench" / f"allocator_in_run{'_tracking_none' if args.tracking == 'none' else ''}.md"
    started, rows = time.time(), []
    for i in range(args.runs):
        for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
            rows.append(one_run(args, arm))
            r = rows[-1]
            print(
                f"steady_allocator={arm}: accepted {r['accepted']:.1f}%, final {r['final']:.1f}%, gap {r['gap']:+.1f}",
                flush=True,
            )
    lines = [
        "# One latency-target run timing its network while correcting the cut and at its end",
        "",
        f"`python benchmarks/allocator_in_run.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{time.time() - started:.0f} s. CPU {platform.machine()}, 1 thread, eager PyTorch, float32; "
        f"{args.method} on {args.model} at batch {args.batch}, {args.request:.0%} latency cut requested, MLflow "
        f"{'off' if args.tracking == 'none' else 'on (as a real run)'}, the "
        "settings of benchmarks/latency_target_methods.py (near-untrained weights, no fine-tune); arms alternating; "
        "the harness's latency gate paused its other runs on the machine while each run timed. Latency cut = "
        "1 − 1/speed-up (median of dense/pruned ms over paired timings); *accepted*: the mean of the two "
        "measurements of the cut the correction kept; *gap* = final − accepted (points); *repeat*: the largest difference between two measurements of one "
        "candidate timed back to back (a confirmation), points.",
        "",
        "| measure.steady_allocator | corrections' measurements % | accepted % | final % [95%] | gap (points) "
        "| repeat (points) | run s |",
        "|:--|:--|--:|:--|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {', '.join(map(str, r['measured']))} | {r['accepted']:.1f} | "
            f"{r['final']:.1f} [{r['final_lo']:.1f}, {r['final_hi']:.1f}] | {r['gap']:+.1f} | {r['repeat']:.1f} | {r['seconds']:.0f} |"
        )
    gaps = {arm: [r["gap"] for r in rows if r["arm"] == arm] for arm in ARMS}
    sizes = {arm: [abs(g) for g in gaps[arm]] for arm in ARMS}
    misses = {arm: [r["final"] - 100 * args.request for r in rows if r["arm"] == arm] for arm in ARMS}
    lines += [""]
    for arm in ARMS:
        lines.append(
            f"- steady_allocator={arm}: mean gap {statistics.mean(gaps[arm]):+.2f} points (SD "
            f"{statistics.stdev(gaps[arm]) if len(gaps[arm]) > 1 else float('nan'):.2f}), final miss "
            f"{statistics.mean(misses[arm]):+.2f} points, worst {max(misses[arm], key=abs):+.1f}; mean |gap| "
            f"{statistics.mean(sizes[arm]):.2f}"
        )
    if min(map(len, gaps.values())) > 1:
        d, lo, hi = welch(gaps["false"], gaps["true"])
        lines.append(
            f"- gap with it held steady − gap as it comes: {d:+.2f} points, Welch 95% interval [{lo:+.2f}, {hi:+.2f}]"
        )
        repeats = {arm: [r["repeat"] for r in rows if r["arm"] == arm and r["repeat"] == r["repeat"]] for arm in ARMS}
        if min(map(len, repeats.values())) > 1:
            d, lo, hi = welch(repeats["false"], repeats["true"])
            lines.append(
                f"- repeat with it held steady − as it comes: {d:+.2f} points, Welch 95% interval [{lo:+.2f}, {hi:+.2f}]"
            )
        d, lo, hi = welch(sizes["false"], sizes["true"])
        lines.append(f"- the same for |gap|: {d:+.2f} points, Welch 95% interval [{lo:+.2f}, {hi:+.2f}]")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
