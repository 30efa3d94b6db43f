"""Compare pruning methods on one task over seeds and FLOPs targets, and write a markdown table.

Every (method, target) pair starts from the same per-seed baseline and gets the same fine-tuning
budget. Runs go to the configured MLflow store like any other run.

    python scripts/compare_methods.py --task digits --methods l1 random --targets 0.5 0.7 --seeds 0 1 2 \
        --out results/digits_l1_vs_random.md [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from study_tables import mean_std, write_report

from harness.config import compose
from harness.run import run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="digits")
    p.add_argument("--methods", nargs="+", default=["l1", "random"])
    p.add_argument("--targets", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = p.parse_args()

    rows = {}
    for seed in args.seeds:
        for target in args.targets:
            for method in args.methods:
                cfg = compose(
                    [
                        f"task={args.task}",
                        f"method={method}",
                        f"seed={seed}",
                        f"prune.flops_reduction={target}",
                        "quiet=true",
                        *args.overrides,
                    ]
                )
                s = run(cfg)
                print(
                    f"{method:>8} target={target} seed={seed}: final_acc={s['final_acc']:.4f} "
                    f"reduction={s['flops_reduction']:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
                rows.setdefault((method, target), []).append(s)

    any_run = next(iter(rows.values()))[0]
    batches = [lat["batch_size"] for lat in any_run["latency"].values()]
    lat0 = next(iter(any_run["latency"].values()))
    lines = [
        f"# {args.task}: {', '.join(args.methods)} at {', '.join(f'{t:.0%}' for t in args.targets)} FLOPs reduction",
        "",
        f"Command: `python scripts/compare_methods.py {' '.join(sys.argv[1:])}`",
        "",
        f"Seeds {args.seeds} (n = {len(args.seeds)} per row); each seed has its own baseline, shared by every "
        "method and target. Accuracy is the final epoch's test accuracy, mean ± sample std. MACs at batch 1. "
        f"Latency: median ms per batch, {lat0['threads']} threads, {lat0['device']}.",
        "",
        "| method | target | baseline acc | acc after pruning | final acc | Δ acc | MACs ↓ | params ↓ | "
        + " | ".join(f"speed-up b{b}" for b in batches)
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(batches),
    ]
    for (method, target), runs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        col = lambda key: [r[key] for r in runs]  # noqa: E731
        delta = [r["final_acc"] - r["base_acc"] for r in runs]
        speed = [mean_std([r["latency"][f"b{b}"]["speedup"] for r in runs], ".2f") + "×" for b in batches]
        lines.append(
            f"| {method} | {target:.0%} | {mean_std(col('base_acc'), '.4f')} | "
            f"{mean_std(col('pruned_acc'), '.4f')} | {mean_std(col('final_acc'), '.4f')} | "
            f"{mean_std(delta, '+.4f').replace('± +', '± ')} | {mean_std(col('flops_reduction'), '.3f')} | "
            f"{mean_std(col('params_reduction'), '.3f')} | " + " | ".join(speed) + " |"
        )
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
