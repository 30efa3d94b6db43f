"""What ANL does to clean and FGSM accuracy: baseline training with and without ANL, over seeds.

    python scripts/anl_study.py --task digits --seeds 0 1 2 --fgsm-eps 0.05 0.1 0.2 --out results/anl_digits.md

Each (regulariser, seed) trains the task's baseline (method=none) and evaluates the trained model on
the test split, clean and under FGSM (x + eps * sign(dL/dx), clamped to the input range seen in the
test data). eps is in the task's normalised input units.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn
from study_tables import mean_std, write_report
from torch.utils.data import DataLoader

from harness.artifacts import load_pruned
from harness.config import compose
from harness.run import run
from tasks import create_task


def fgsm_accuracy(model: nn.Module, loader, eps: float, lo: float, hi: float) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
        x_adv = (x + eps * grad.sign()).clamp(lo, hi).detach()
        with torch.no_grad():
            correct += (model(x_adv).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="digits")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--fgsm-eps", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    results: dict[str, list[dict]] = {"none": [], "anl": []}
    for seed in args.seeds:
        for reg in results:
            cfg = compose(
                [
                    f"task={args.task}",
                    "method=none",
                    f"regularizer={reg}",
                    f"seed={seed}",
                    "tracking=none",
                    "quiet=true",
                    *args.overrides,
                ]
            )
            summary = run(cfg)
            model = load_pruned(summary["model_artifact"])
            _, test = create_task(cfg).datasets()
            loader = DataLoader(test, batch_size=256)
            xs = torch.cat([x for x, _ in loader])
            row = {"clean": summary["final_acc"]}
            for eps in args.fgsm_eps:
                row[eps] = fgsm_accuracy(model, loader, eps, xs.min().item(), xs.max().item())
            results[reg].append(row)
            print(f"{reg:>4} seed={seed}: " + ", ".join(f"{k}={v:.4f}" for k, v in row.items()), file=sys.stderr)

    def cell(rows, key):
        return mean_std([r[key] for r in rows], ".4f")

    anl_cfg = compose(["regularizer=anl"]).regularizer
    lines = [
        f"# ANL vs no regulariser on {args.task}: clean and FGSM test accuracy",
        "",
        f"Command: `python scripts/anl_study.py {' '.join(sys.argv[1:])}`",
        "",
        f"Baseline training only (method=none), seeds {args.seeds}, mean ± sample std (n = {len(args.seeds)}). "
        f"ANL: eps={anl_cfg.eps}, prob={anl_cfg.prob}, layers={anl_cfg.layers}. FGSM eps in normalised "
        "input units (digits inputs span [-1, 1]); white-box, one step, against each model itself.",
        "",
        "| regulariser | clean | " + " | ".join(f"FGSM eps={e}" for e in args.fgsm_eps) + " |",
        "|---|---|" + "---|" * len(args.fgsm_eps),
    ]
    for reg, rows in results.items():
        lines.append(f"| {reg} | {cell(rows, 'clean')} | " + " | ".join(cell(rows, e) for e in args.fgsm_eps) + " |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
