"""The reconstructed methods (GA channel pruning, functionality-oriented pruning, W-Gates) beside L1, random and
Gate Decorator on the real CIFAR-10 images of shared/data/cifar10-dev, at 50% MACs.

    python scripts/reconstructions_study.py run [--workers 2]   # one seed per worker; safe to stop and rerun
    python scripts/reconstructions_study.py report              # results/cifar10_dev/reconstructions.md

The setting is val_split_study.py's (ResNet-20, budget=cifar10_dev, data.val_fraction=0.1: GA's sensitivity
scan needs held-out data, so every method trains on the same 3,658 images and shares one baseline per seed);
runs go to the MLflow experiment ``cifar10_dev_reconstructions``. GA, functional and W-Gates at their defaults; then
the equal-budget control: l1 fine-tuned for as many epochs after the baseline as GA spent (its distillation
and the images its fitness reads count). Functional's claim is "no retraining": the table's *acc after
pruning* (no BN recalibration for any method; gbn_cpu's includes its Tick-Tock training) is that test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_dev_study import (  # noqa: E402
    OUT,
    cli,
    labelled_runs,
    run_workers,
    seed_metric,
    study_report,
    sweep,
)

EXPERIMENT = "cifar10_dev_reconstructions"
SETTING = ["data.val_fraction=0.1", f"tracking.experiment={EXPERIMENT}", "prune.flops_reduction=0.5"]
SEEDS = (0, 1, 2)
METHODS = ("l1", "ga", "functional", "random", "gbn_cpu", "wgates")  # l1 first: the pair every row needs
FINETUNE_EPOCHS = 8  # budget=cifar10_dev's fine-tune
WALL = OUT / "reconstructions_wall_time.log"


def worker(index: int, workers: int) -> int:
    failures = 0
    with open(OUT / "logs" / f"reconstructions_worker{index}.log", "a") as log:
        for seed in SEEDS[index::workers]:
            for method in METHODS:
                failures += sweep([*SETTING, f"method={method}", f"seed={seed}"], log) != 0
            epochs = ga_epochs(seed)
            if epochs is not None and round(epochs) > FINETUNE_EPOCHS:  # l1 given ga's budget
                failures += sweep([*SETTING, "method=l1", f"finetune.epochs={round(epochs)}", f"seed={seed}"], log) != 0
    return failures


def ga_epochs(seed: int) -> float | None:
    return seed_metric(EXPERIMENT, "ga", seed, "epochs_after_baseline")


def label(row) -> str:
    if row["tags.method"] == "l1" and int(float(row["params.finetune.epochs"])) != FINETUNE_EPOCHS:
        return "l1+ft"
    return row["tags.method"] + (" (reconstruction)" if row.get("tags.reconstruction") == "true" else "")


def report() -> int:
    runs = labelled_runs(EXPERIMENT, label)
    if runs is None:
        return 1
    names = sorted(runs["label"].unique())
    controls = ("l1", "random", "gbn_cpu", "l1+ft")
    pairs = [(a, b) for a in names if a not in controls for b in controls]
    header = [
        "# Reconstructed methods on real CIFAR-10 images (shared/data/cifar10-dev), 50% MACs, CPU budget",
        "",
        "ResNet-20 (41.2 M MACs), budget=cifar10_dev (30-epoch one-cycle baseline, 8-epoch cosine fine-tune for "
        "every method), data.val_fraction=0.1 for every run (407 of the 4,065 training images held out: GA's "
        "sensitivity scan reads them; every method trains on the other 3,658). Accuracy on the 1,020-image "
        "validation file of cifar10-dev (the harness's test split here), final epoch; nothing chosen on it. One "
        "baseline per seed shared by all methods. *acc after pruning*: right after the method's pruning phase, "
        "before the common fine-tune, no BN recalibration for any method (GA's includes its 1 epoch of "
        "distillation, gbn_cpu's its Tick-Tock training): functional's claim that retraining is unnecessary is "
        "tested there. `l1+ft`: l1 fine-tuned for as many epochs after the baseline as GA spent (equal budget). "
        "GA, functional and W-Gates (`cost=flops`) are **reconstructions** from the papers' abstracts "
        "(docs/methods.md). *run wall min*: the whole run on 1 thread beside another worker; each seed's first "
        "`l1` run trained the seed's baseline too. MACs at batch 1 "
        "(1 MAC = 2 FLOPs); speed-up = dense ÷ pruned median ms per batch of 128, eager PyTorch, 1 thread, CPU, "
        "measured while another worker trained (±10%). Spread: sample std over seeds; '–' for one seed.",
    ]
    logs = "logs/reconstructions_worker*.log: every command"
    return study_report(runs, pairs, header, "reconstructions_study.py", logs, WALL, OUT / "reconstructions.md")


def main() -> int:
    return cli(__doc__, worker, run, report, "write results/cifar10_dev/reconstructions.md from the MLflow runs")


def run(workers: int) -> int:
    return run_workers(__file__, workers, WALL)


if __name__ == "__main__":
    raise SystemExit(main())
