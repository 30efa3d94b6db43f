"""Do two measurements of the same pruned network agree, with glibc's malloc as it comes and held steady?

    python benchmarks/allocator_stability.py [--model vgg16_cifar] [--batch 64] [--target 0.4]
                                             [--processes 4] [--repeats 3] [--rounds 15]

Each process builds the same dense network and its L1 cut (untrained weights, seed 0; latency does not
depend on the values), then measures the pruned one's latency reduction against the dense one ``--repeats``
times (``interleaved_latency``, ``--rounds`` rounds each, 1 thread, CPU), as a run's latency-target search
and its final measurement do minutes apart. Processes alternate between glibc's defaults
and both thresholds fixed (``mallopt``: blocks up to glibc's largest mmap threshold, 32 MiB, from the heap, which
is never trimmed below 1 GiB; applied before the first timing), so that the machine's drift hits both alike.
The question: glibc maps large blocks afresh and moves that threshold as the process frees them, so how many
activations fault in fresh pages could depend on the process's history; a first probe (three processes)
suggested it moved two measurements of one network apart by up to 4.5 points. Reported per arm: every reduction, their median, range and
standard deviation, and the widest spread within one process; then the ratio of the two standard
deviations with a bootstrap 95% interval (measurements resampled within each arm).
Writes results/bench/allocator_stability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARMS = {"glibc defaults": "0", "fixed thresholds": "1"}


def child(args) -> None:
    import torch

    from benchmarks.common import dense_and_pruned
    from harness.latency import allocator
    from harness.latency.measure import interleaved_latency

    torch.set_num_threads(1)
    dense, pruned, size, _, _ = dense_and_pruned(args.model, args.target)
    x = torch.randn(args.batch, 3, size, size)
    steady = os.environ["ARM"] == "1" and allocator.hold_steady()
    reductions = []
    with torch.inference_mode():
        for _ in range(args.repeats):
            r = interleaved_latency(
                {"dense": dense, "pruned": pruned}, "dense", x, warmup=3, min_rounds=args.rounds, max_seconds=0
            )
            reductions.append(1 - 1 / r["pruned"]["speedup"])
    print(json.dumps({"reductions": reductions, "steady": steady}))


def sd_ratio_interval(a: list[float], b: list[float], draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    ratios = sorted(
        statistics.stdev(rng.choices(a, k=len(a))) / max(statistics.stdev(rng.choices(b, k=len(b))), 1e-9)
        for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16_cifar")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--target", type=float, default=0.4, help="the L1 cut's MACs reduction")
    p.add_argument("--processes", type=int, default=4, help="processes per arm")
    p.add_argument("--repeats", type=int, default=3, help="measurements per process")
    p.add_argument("--rounds", type=int, default=15, help="interleaved rounds per measurement")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "allocator_stability.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    started = time.time()
    found: dict[str, list[list[float]]] = {arm: [] for arm in ARMS}
    for k in range(args.processes):
        for arm in list(ARMS)[:: 1 if k % 2 == 0 else -1]:  # alternate which arm goes first
            cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
            env = {**os.environ, "ARM": ARMS[arm], "OMP_NUM_THREADS": "1"}
            out = json.loads(subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout)
            assert out["steady"] == (ARMS[arm] == "1"), "mallopt refused the thresholds"
            found[arm].append(out["reductions"])
            print(f"process {k + 1}/{args.processes}, {arm}: {', '.join(f'{r:.3f}' for r in out['reductions'])}")
    lines = [
        f"# Latency measurements with glibc's malloc as it comes and held steady ({args.model}, batch {args.batch})",
        "",
        f"`python benchmarks/allocator_stability.py {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{time.time() - started:.0f} s. CPU {platform.machine()}, 1 thread, eager PyTorch, float32; untrained "
        f"{args.model} and its L1 cut to {args.target:.0%} fewer MACs; {args.processes} processes per arm "
        f"(alternating), {args.repeats} measurements each of {args.rounds} interleaved rounds; latency reduction "
        "= 1 - 1/speed-up (median over rounds of dense ms / pruned ms). The harness's latency gate paused its "
        "other runs on the machine while each measurement timed.",
        "",
        "| arm | reductions % (per process) | median % | range (points) | SD (points) | widest within a process |",
        "|:--|:--|--:|--:|--:|--:|",
    ]
    for arm, per_process in found.items():
        flat = [r for rs in per_process for r in rs]
        within = max(max(rs) - min(rs) for rs in per_process)
        cells = " / ".join(", ".join(f"{100 * r:.1f}" for r in rs) for rs in per_process)
        lines.append(
            f"| {arm} | {cells} | {100 * statistics.median(flat):.1f} | {100 * (max(flat) - min(flat)):.1f} | "
            f"{100 * statistics.stdev(flat):.2f} | {100 * within:.1f} |"
        )
    a, b = ([r for rs in found[arm] for r in rs] for arm in ARMS)
    lo, hi = sd_ratio_interval(a, b)
    lines += [
        "",
        f"SD with glibc's defaults / SD with fixed thresholds: **{statistics.stdev(a) / statistics.stdev(b):.2f}** "
        f"(bootstrap 95% interval {lo:.2f}-{hi:.2f}).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
