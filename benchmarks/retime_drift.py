"""Can two runs' latencies be compared when each was measured on its own, at a different time? And does
timing them together (``python -m harness retime``: interleaved rounds) make them comparable?

    python benchmarks/retime_drift.py [--reps 5] [--batch 128] [--threads 1] [--out results/bench/retime_drift.md]

Three L1-pruned copies of an untrained ResNet-20 (CIFAR-10, 32x32) at 40, 45 and 50% fewer MACs, as three
runs of a study would leave them. Each repetition measures them twice:

- *separately*: each against the dense model in its own paired measurement, what a run does when it ends
  (``paired_latency``: 3 warm-up passes, at least 20 pairs, then until the speed-up's 95% interval is within
  ±3% or 10 s);
- *together*: all three and the dense model in interleaved rounds (``interleaved_latency``, what ``retime``
  does: at least 10 rounds, then until every interval is within ±2% or 60 s).

The figure of interest is the difference between two models' latency reductions. Runs of a study end minutes
apart, so their own measurements are compared *across* repetitions (model A's from one repetition, B's
from another); retimed ones within a repetition. Reported: the spread (standard deviation and range) of each
difference under both, and each model's reduction over repetitions. Like any measurement of the harness, it
pauses the machine's other harness runs while it times (harness/core/gate.py).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import output_layer  # noqa: E402
from harness.core.surgery import ChannelPruner, count_macs_params  # noqa: E402
from harness.latency.measure import interleaved_latency, paired_latency  # noqa: E402
from methods.l1 import FilterL1Importance  # noqa: E402
from tasks.models.resnet_cifar import resnet20  # noqa: E402

TARGETS = (0.40, 0.45, 0.50)


def models() -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    torch.manual_seed(0)
    dense = resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = {}
    for target in TARGETS:
        m = copy.deepcopy(dense)
        ChannelPruner(m, x, [output_layer(m)], 0.1).prune_to_target(m, FilterL1Importance(), target)
        macs = 1 - count_macs_params(m.eval(), x)[0] / count_macs_params(dense, x)[0]
        pruned[f"{macs:.0%} MACs"] = m
    return dense, pruned


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "retime_drift.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    dense, pruned = models()
    names = list(pruned)
    x = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    separate = {n: [] for n in names}  # one reduction per repetition
    together = {n: [] for n in names}
    dense_ms, paused = [], []
    for rep in range(args.reps):
        for n in names:
            t = paired_latency(dense, pruned[n], x, warmup=3, min_pairs=20, max_seconds=10, interval=0.03)
            separate[n].append(1 - 1 / t["speedup"])
            dense_ms.append(t["dense_ms"])
            paused.append(t["others_paused"])
        t = interleaved_latency(
            {"dense": dense, **pruned}, "dense", x, warmup=3, min_rounds=10, max_seconds=60, interval=0.02
        )
        for n in names:
            together[n].append(1 - 1 / t[n]["speedup"])
        dense_ms.append(t["dense"]["ms"])
        paused.append(t["dense"]["others_paused"])
        print(
            f"rep {rep + 1}/{args.reps}: separately "
            + ", ".join(f"{100 * separate[n][-1]:.1f}" for n in names)
            + "; together "
            + ", ".join(f"{100 * together[n][-1]:.1f}" for n in names)
            + f" (% latency reduction; {t['dense']['rounds']} rounds)",
            flush=True,
        )
    write(args, names, separate, together, dense_ms, paused, time.time() - started)
    return 0


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):+.1f} ± {100 * sd:.1f} [{100 * min(values):+.1f}, {100 * max(values):+.1f}]"


def write(args, names, separate, together, dense_ms, paused, wall: float) -> None:
    reps = range(args.reps)
    rows = []
    for a, b in itertools.combinations(names, 2):
        apart = [separate[b][j] - separate[a][i] for i in reps for j in reps if i != j]
        same_rep = [separate[b][i] - separate[a][i] for i in reps]
        retimed = [together[b][i] - together[a][i] for i in reps]
        rows.append(
            f"| {b} − {a} | {spread(apart)} | {spread(same_rep)} | {spread(retimed)} | "
            f"{statistics.stdev(apart) / statistics.stdev(retimed):.1f}× |"
        )
    lines = [
        "# Comparing runs' latencies: measured apart vs retimed together",
        "",
        f"`python benchmarks/retime_drift.py --reps {args.reps} --batch {args.batch} --threads {args.threads}`",
        "",
        f"CPU {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), eager PyTorch, float32, "
        f"inference mode; batch {args.batch}; latency reduction = 1 − pruned ms ÷ dense ms (ms per forward pass "
        f"of the batch). Untrained ResNet-20 (32x32) and three L1-pruned copies. {args.reps} repetitions, "
        f"{wall / 60:.1f} min, {time.strftime('%Y-%m-%d %H:%M')}; dense ms over all measurements: median "
        f"{statistics.median(dense_ms):.1f}, range {min(dense_ms):.1f}–{max(dense_ms):.1f}; the machine's other "
        f"harness runs paused in {sum(map(bool, paused))} of {len(paused)} measurements.",
        "",
        "Difference of two models' latency reductions, points: mean ± sample std [min, max]. *Apart*: each "
        "model's own paired measurement (a run's), taken in different repetitions (as two runs of a study "
        "are); *same repetition*: own measurements seconds apart; *retimed*: one interleaved measurement of all "
        "(`harness retime`). Last column: std apart ÷ std retimed.",
        "",
        "| difference | apart | same repetition | retimed | spread ratio |",
        "|:--|:--|:--|:--|--:|",
        *rows,
        "",
        "Each model's latency reduction, %, over repetitions (mean ± std [min, max]):",
        "",
        "| model | measured alone | retimed |",
        "|:--|:--|:--|",
        *[f"| {n} | {spread(separate[n])} | {spread(together[n])} |" for n in names],
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    raise SystemExit(main())
