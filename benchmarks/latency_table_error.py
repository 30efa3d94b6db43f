"""How far is the latency lookup table from a measurement, on cuts its calibration never saw?

    python benchmarks/latency_table_error.py [--models resnet56 vgg16_cifar] [--batches 1 64] [--cuts 6]
                                             [--threads 1] [--out results/bench/latency_table_error.md]

The calibration's worst error (``latency_table/calibration_max_rel_error`` in every latency-target run) is
read on the very models the line was fitted on. Here the table is built as runs build it (one temporary
results folder for all models, timed in the order given, so that a later model reuses and widens the
shapes an earlier one timed), then ``--cuts`` held-out copies are cut at random, each prunable group to its
own fraction in [0.3, 1] (seed 1: the calibration's cuts use seed 0), and each is measured against the
dense model in alternating pairs. Reported per cut: the MACs cut, the reduction the table predicts, the
measured one with its 95% interval, and the error of the predicted milliseconds relative to the measured.
Untrained weights (latency does not depend on the values), eager PyTorch, float32, CPU.
"""

from __future__ import annotations

import argparse
import copy
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import untrained_with_table  # noqa: E402
from harness.core.surgery import count_macs_params  # noqa: E402
from harness.latency.measure import paired_latency  # noqa: E402
from harness.latency.table import FRACTIONS, LOOKUPS, fit_line, layers_of, narrowed_copies  # noqa: E402


def lines_by_lookup(table, dense, example, pruner, line: dict) -> dict[str, dict]:
    """The calibration line of each of ``LOOKUPS``, fitted to the same measured calibration models (the line's
    own timings, no new ones): the table predicts with the stepped one; the linear one is its lookup before."""
    models = [dense, *narrowed_copies(dense, pruner)]
    return {kind: fit_line([table.table_ms(m, example, kind) for m in models], line["real_ms"]) for kind in LOOKUPS}


def case(name: str, batch: int, cuts: int, results: Path, seconds: float) -> list[dict]:
    dense, example, x, pruner, table, line, built = untrained_with_table(name, batch, results)
    lines = lines_by_lookup(table, dense, example, pruner, line)

    def predicted(model, kind: str) -> float:
        return lines[kind]["a"] * table.table_ms(model, example, kind) + lines[kind]["b"]

    dense_ms = {kind: predicted(dense, kind) for kind in LOOKUPS}
    shares = [table.data["layers"][shape.key()]["step"] for shape in {s for s, _, _ in layers_of(dense, example)}]
    probed = "in {:.2f}-{:.2f}, out {:.2f}-{:.2f}".format(
        *(f(x[k] for x in shares) for k in (0, 1) for f in (min, max))
    )
    groups, rng, rows = pruner.groups(dense), random.Random(1), []
    for k in range(cuts):
        widths = {g: max(c.min_keep, round(rng.uniform(FRACTIONS[-1], 1.0) * c.channels)) for g, c in groups.items()}
        cut = pruner.shrink_to(copy.deepcopy(dense), widths).eval()
        ratio = {kind: predicted(cut, kind) / dense_ms[kind] for kind in LOOKUPS}
        t = paired_latency(dense, cut, x, warmup=3, min_pairs=10, max_seconds=seconds, interval=0.02)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "cut": k,
                "MACs ↓ %": 100 * (1 - count_macs_params(cut, example)[0] / pruner.base_macs),
                "predicted ↓ %": 100 * (1 - ratio[line["lookup"]]),
                "measured ↓ %": 100 * (1 - 1 / t["speedup"]),
                "lo": 100 * (1 - 1 / t["speedup_lo"]),
                "hi": 100 * (1 - 1 / t["speedup_hi"]),
                # the table's ms for the cut against the measured ms, both relative to their own dense (the
                # measured ratio is the median per-pair one, as the measured reduction's)
                "error %": 100 * (ratio[line["lookup"]] * t["speedup"] - 1),
                **{f"{kind} error %": 100 * (ratio[kind] * t["speedup"] - 1) for kind in LOOKUPS},
                "pairs": t["pairs"],
                "calibration worst %": 100 * line["max_rel_error"],
                **{f"{kind} calibration worst %": 100 * lines[kind]["max_rel_error"] for kind in LOOKUPS},
                "table build s": built,
                "step shares": probed,
            }
        )
        r = rows[-1]
        others = ", ".join(f"{kind} {r[f'{kind} error %']:+.1f}%" for kind in LOOKUPS)
        print(
            f"{name} b{batch} cut {k}: MACs -{r['MACs ↓ %']:.1f}%, predicted -{r['predicted ↓ %']:.1f}% "
            f"(stepped), measured -{r['measured ↓ %']:.1f}% [{r['lo']:.1f}, {r['hi']:.1f}], "
            f"error {r['error %']:+.1f}% (lookups: {others})",
            flush=True,
        )
    return rows


def write(rows: list[dict], args, wall: float) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    summary = []
    for (model, batch), g in frame.groupby(["model", "batch"], sort=False):
        misses = (g["predicted ↓ %"] - g["measured ↓ %"]).abs()
        summary.append(
            {
                "model": model,
                "batch": batch,
                "held-out cuts": len(g),
                "calibration worst % (in-sample)": f"{g['calibration worst %'].iloc[0]:.1f}",
                "held-out worst abs error %": f"{g['error %'].abs().max():.1f}",
                "held-out median abs error %": f"{g['error %'].abs().median():.1f}",
                "worst miss (points of reduction)": f"{misses.max():.1f}",
                **{
                    f"{kind}: calibration worst %, held-out worst / median abs %": (
                        f"{g[f'{kind} calibration worst %'].iloc[0]:.1f}, {g[f'{kind} error %'].abs().max():.1f} / "
                        f"{g[f'{kind} error %'].abs().median():.1f}"
                    )
                    for kind in LOOKUPS
                },
                "table build s": f"{g['table build s'].iloc[0]:.0f}",
                "layer shapes' step shares": g["step shares"].iloc[0],
            }
        )
    detail = pd.DataFrame(
        [
            {
                "model": r["model"],
                "batch": r["batch"],
                "cut": r["cut"],
                "MACs ↓ %": f"{r['MACs ↓ %']:.1f}",
                "predicted ↓ %": f"{r['predicted ↓ %']:.1f}",
                "measured ↓ % [95%]": f"{r['measured ↓ %']:.1f} [{r['lo']:.1f}, {r['hi']:.1f}]",
                "error of predicted ms %": f"{r['error %']:+.1f}",
                **{f"{kind} error %": f"{r[f'{kind} error %']:+.1f}" for kind in LOOKUPS},
                "pairs": r["pairs"],
            }
            for r in rows
        ]
    )
    worst = max(abs(r["error %"]) for r in rows)
    worst_by = ", ".join(f"{kind} only {max(abs(r[f'{kind} error %']) for r in rows):.1f}%" for kind in LOOKUPS)
    text = "\n".join(
        [
            "# The latency lookup table on held-out cuts: predicted vs measured",
            "",
            f"`python benchmarks/latency_table_error.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
            "",
            f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
            "eager PyTorch, float32, inference mode; latency = ms per forward pass of the whole batch; untrained "
            "ResNet-56 (CIFAR-10) and VGG-16 (CIFAR-100) at 32x32, one table for both (built in this order), "
            "calibrated on 4 uniform and 3 random cuts (seed 0); the held-out cuts here use seed 1, each group "
            "to its own fraction in [0.3, 1]. *error of predicted ms*: (predicted pruned / predicted dense) ÷ "
            "(measured pruned / measured dense) − 1; *in-sample*: the calibration's own worst error, on the "
            "models it was fitted on. *Lookups*: *stepped* (the table's) moves a width between grid points "
            "up towards the next multiple of 8 by the share its layer shape's probe measured (vector kernels "
            "may charge a whole block for one channel past an aligned width), then interpolates; *linear* "
            "interpolates only (the table's lookup before 2026-12-03), its line refitted to the same "
            "calibration timings; both are scored on the same held-out measurements.",
            "",
            f"**Worst held-out error {worst:.1f}% ({worst_by}).** Wall time "
            f"{wall / 60:.1f} min, {time.strftime('%Y-%m-%d %H:%M')}.",
            "",
            pd.DataFrame(summary).to_markdown(index=False, disable_numparse=True),
            "",
            detail.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(
        f"wrote {args.out}; worst held-out error {worst:.1f}%, median "
        f"{statistics.median(abs(r['error %']) for r in rows):.1f}%"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet56", "vgg16_cifar"], choices=["resnet56", "vgg16_cifar"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--cuts", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="at most this long per paired measurement")
    p.add_argument("--out", default="results/bench/latency_table_error.md")
    args = p.parse_args()
    if args.cuts < 1 or args.threads < 1 or any(b < 1 for b in args.batches):
        p.error("--cuts, --threads and --batches must be at least 1")
    torch.set_num_threads(args.threads)
    started, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batches:
                rows += case(name, batch, args.cuts, Path(tmp), args.seconds)
    write(rows, args, time.time() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
