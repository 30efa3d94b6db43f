"""Group Fisher pruning and MetaPruning beside L1, random and Gate Decorator on the real CIFAR-10 images of
shared/data/cifar10-dev at 50% MACs, and ACP against MetaPruning at an equal number of evaluated candidates.

    python scripts/gfp_metapruning_study.py run [--workers 2]   # one seed per worker; safe to stop and rerun
    python scripts/gfp_metapruning_study.py report              # results/cifar10_dev/gfp_metapruning.md

The setting is reconstructions_study.py's (ResNet-20, budget=cifar10_dev, data.val_fraction=0.1: MetaPruning
scores its candidates on held-out data, so every method trains on the same 3,658 images and shares one
baseline per seed, the reconstructions study's too); runs go to the MLflow experiment
``cifar10_dev_gfp_metapruning``. Per seed, in this order (a stopped study has the first rows whole):

1. ``gfp_cpu``, ``metapruning_cpu``, ``l1``, ``random``, ``gbn_cpu`` at their CPU presets;
2. the equal-budget controls: ``l1`` and ``random`` fine-tuned for as many epochs after the baseline as
   gfp_cpu spent (``+ft``), ``l1`` for as many as metapruning_cpu spent (``+ft·mp``: its PruningNet epochs,
   recalibration passes and from-scratch training);
3. the two searches at 24 evaluated candidates each: ACP (8 particles x 3 rounds, each candidate fine-tuned
   1 epoch before it is scored) and MetaPruning (8 candidates x 3 generations, each scored after BN
   recalibration), their wall time and epochs beside their accuracy.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_dev_study import (  # noqa: E402
    OUT,
    cli,
    labelled_runs,
    load_runs,
    retime,
    retimed_column,
    run_workers,
    seed_metric,
    study_report,
    sweep,
)

EXPERIMENT = "cifar10_dev_gfp_metapruning"
SETTING = ["data.val_fraction=0.1", f"tracking.experiment={EXPERIMENT}", "prune.flops_reduction=0.5"]
SEEDS = (0, 1, 2)
METHODS = ("gfp_cpu", "metapruning_cpu", "l1", "random", "gbn_cpu")
FINETUNE_EPOCHS = 8  # budget=cifar10_dev's fine-tune
CANDIDATES = 24
SEARCHES = {
    "acp (24 cand.)": ["method=acp", "method.particles=8", "method.cycles=2", "method.fitness_epochs=1"],
    "metapruning (24 cand.)": [
        "method=metapruning_cpu",
        "method.population=8",
        "method.generations=3",
        "method.parents=3",
        "method.mutations=3",
        "method.crossovers=3",
    ],
}
WALL = OUT / "gfp_metapruning_wall_time.log"


def worker(index: int, workers: int) -> int:
    failures = 0
    with open(OUT / "logs" / f"gfp_metapruning_worker{index}.log", "a") as log:

        def go(args: list[str]) -> int:
            return sweep([*SETTING, *args], log) != 0

        for seed in SEEDS[index::workers]:
            for method in METHODS:
                failures += go([f"method={method}", f"seed={seed}"])
            for method, controls in (("gfp_cpu", ("l1", "random")), ("metapruning_cpu", ("l1",))):
                epochs = seed_metric(EXPERIMENT, method, seed, "epochs_after_baseline")
                if epochs is not None and round(epochs) > FINETUNE_EPOCHS:
                    for control in controls:
                        failures += go([f"method={control}", f"finetune.epochs={round(epochs)}", f"seed={seed}"])
            for args in SEARCHES.values():
                failures += go([*args, f"seed={seed}"])
            runs = load_runs(EXPERIMENT, keep=False)
            if not runs.empty:
                failures += retime(runs[runs["tags.seed"].astype(int) == seed], 128, log)
    return failures


def label(row, runs=None) -> str:
    """The row's name in the table; ``runs`` (the study's finished runs) tells which control matched
    metapruning_cpu's epochs."""
    method = row["tags.method"]
    if method in ("l1", "random") and int(float(row["params.finetune.epochs"])) != FINETUNE_EPOCHS:
        seed = int(row["tags.seed"])
        mp = seed_metric(EXPERIMENT, "metapruning_cpu", seed, "epochs_after_baseline", runs=runs)
        return (
            f"{method}+ft·mp"
            if mp is not None and int(float(row["params.finetune.epochs"])) == round(mp)
            else f"{method}+ft"
        )
    if method == "metapruning_cpu" and str(row.get("params.method.grid", "")).startswith("[0.1,"):
        return "metapruning_cpu, grid 0.10-1.00"  # the preset before its grid started at 0.40 (docs/methods.md)
    if method == "acp" and row.get("params.method.particles") == "8":
        return "acp (24 cand.)"
    if method == "metapruning_cpu" and row.get("params.method.population") == "8":
        return "metapruning (24 cand.)"
    return method


def report() -> int:
    runs = load_runs(EXPERIMENT)  # read once: the labels look up metapruning_cpu's epochs in it
    runs = labelled_runs(EXPERIMENT, partial(label, runs=runs), runs=runs)
    if runs is None:
        return 1
    pairs = [
        *(("gfp_cpu", b) for b in ("l1", "random", "gbn_cpu", "l1+ft", "random+ft")),
        *(("metapruning_cpu", b) for b in ("l1", "random", "gbn_cpu", "gfp_cpu", "l1+ft·mp")),
        ("metapruning (24 cand.)", "acp (24 cand.)"),
    ]
    header = [
        "# Group Fisher pruning and MetaPruning on real CIFAR-10 images (shared/data/cifar10-dev), 50% MACs",
        "",
        "ResNet-20 (41.2 M MACs), budget=cifar10_dev (30-epoch one-cycle baseline, 8-epoch cosine fine-tune), "
        "data.val_fraction=0.1 for every run (407 of the 4,065 training images held out: MetaPruning's fitness "
        "and ACP's read them; every method trains on the other 3,658). Accuracy on the 1,020-image validation "
        "file of cifar10-dev (the harness's test split here), final epoch; nothing chosen on it. One baseline per "
        "seed shared by all methods. `gfp_cpu`: Group Fisher, memory-normalised, 4 channels every 5 iterations "
        "while training at 0.04 x the fine-tune lr. `metapruning_cpu`: 8 PruningNet epochs over widths 0.40-1.00 "
        "(over the authors' 0.10-1.00 it stayed at chance on this data: docs/methods.md), 6 generations of 16 "
        "candidates, the winner trained from scratch with the baseline recipe (its epochs after the baseline "
        "count all three). `+ft`: fine-tuned for as many epochs after the baseline as gfp_cpu spent; `+ft·mp`: as "
        "metapruning_cpu spent. The `(24 cand.)` rows compare the two searches at an equal number of evaluated "
        "candidates (ACP fine-tunes each 1 epoch before scoring it; MetaPruning recalibrates BN on 10 batches); "
        "their *epochs after baseline* and *run wall min* are the cost of getting there. MACs at batch 1 "
        "(1 MAC = 2 FLOPs); speed-up = dense ÷ pruned median ms per batch of 128, eager PyTorch, 1 thread, CPU, "
        "measured by each run when it ended, while another worker trained (±10%); *retimed*: each seed's final "
        "models timed together afterwards in interleaved rounds (`python -m harness retime`, 1 thread, batch 128, "
        "the other worker paused), the column to compare methods by (seed 0's first five runs and seed 1's "
        "gfp_cpu lost their model files with a removed worktree and have none). Spread: sample std over seeds; "
        "'–' for one seed.",
    ]
    notes = OUT / "gfp_metapruning.notes.md"  # findings written by hand, kept below the header
    if notes.exists():
        header += ["", notes.read_text().strip()]
    logs = "logs/gfp_metapruning_worker*.log: every command"
    return study_report(
        runs, pairs, header, "gfp_metapruning_study.py", logs, WALL, OUT / "gfp_metapruning.md", extra_columns
    )


def extra_columns(g) -> dict:
    """The speed-up retimed together with the seed's other runs, and the searches' candidate counts."""
    out = retimed_column(g, 128)
    for metric in ("acp/candidates_trained", "metapruning/candidates"):
        if f"metrics.{metric}" in g and g[f"metrics.{metric}"].notna().any():
            return {**out, "candidates": ", ".join(f"{v:.0f}" for v in g[f"metrics.{metric}"].dropna())}
    return out


def run(workers: int) -> int:
    return run_workers(__file__, workers, WALL)


if __name__ == "__main__":
    raise SystemExit(
        cli(__doc__, worker, run, report, "write results/cifar10_dev/gfp_metapruning.md from the MLflow runs")
    )
