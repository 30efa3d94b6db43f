"""Detection evidence a CPU can produce: SSDlite on cifar_mosaic (canvases of the real CIFAR-10 images of
shared/data/cifar10-dev, tasks/mosaic.py), the baseline's mAP@0.5 and l1, random, gbn_cpu and gfp_cpu at 50%
fewer MACs over 3 seeds, with measured speed-up; and `l1+ft`, L1 fine-tuned for as many epochs after the
baseline as gbn_cpu spent at the same seed (Gate Decorator trains ~10 epochs where l1 fine-tunes 2, and this
baseline is not converged: the equal-budget control says what the extra training alone is worth).

    python scripts/mosaic_study.py run [--workers 2]   # resumable (skip_finished); one seed per worker
    python scripts/mosaic_study.py report              # results/cifar_mosaic/table.md

Settings: the task's defaults (SSDlite-MobileNetV3 at 128 px, 12,000 training and 500 test canvases, a
12-epoch cosine baseline: recipe 4 of results/cifar_mosaic/recipe.md; a 2-epoch fine-tune; ~12 min an epoch
on one thread) unless ``BUDGET`` below says otherwise; 1 thread per worker.
One baseline (``baseline_seed=0``: a baseline costs hours on a CPU) for every seed, so the seeds vary the
pruning and the fine-tuning only, and the paired differences are over those.
Methods are compared only once the baseline reaches mAP@0.5 >= 0.3 (``report`` says when it does not).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar10_dev_study import (  # noqa: E402
    ROOT,
    cli,
    finish_report,
    labelled_runs,
    load_runs,
    method_row,
    paired_verdict,
    retime,
    retimed_column,
    run_workers,
    seed_metric,
    sweep,
    tables,
)

OUT = ROOT / "results" / "cifar_mosaic"
EXPERIMENT = "cifar_mosaic"
COMMON = [
    "task=cifar_mosaic",
    f"data.root={ROOT.parent / 'shared/data/cifar10-dev'}",
    "skip_finished=true",
    "threads=1",
    "quiet=true",
    f"tracking.experiment={EXPERIMENT}",
    "prune.flops_reduction=0.5",
    "measure.batch_sizes=[1,32]",
    "baseline_seed=0",
]
BUDGET: list[str] = []  # the task's recipe as is
SEEDS = (0, 1, 2)
METHODS = ("l1", "random", "gbn_cpu", "gfp_cpu")
# On SSDlite the gfp_cpu preset's 4 channels per decision had cut 6% of the MACs after 39 min (1,100 channels,
# 1,375 iterations at 1 thread): 50% would take the best part of a day per seed. 64 per decision keeps its
# scores and schedule otherwise (every pass over the data is still counted in prune_epochs).
METHOD_OVERRIDES = {"gfp_cpu": ["method.channels_per_step=64"]}
FINETUNE_EPOCHS = 2  # the task's fine-tune; l1 with any other length is the equal-budget control
EQUAL_BUDGET = ("gbn_cpu", "l1+ft")  # the pair the control exists for
MIN_BASELINE_MAP = 0.3
WALL = OUT / "wall_time.log"


def worker(index: int, workers: int) -> int:
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    failures = 0
    with open(OUT / "logs" / f"worker{index}.log", "a") as log:
        for seed in SEEDS[index::workers]:
            for method in METHODS:
                args = [*BUDGET, f"method={method}", *METHOD_OVERRIDES.get(method, []), f"seed={seed}"]
                failures += sweep(args, log, common=COMMON) != 0
            gbn = seed_metric(EXPERIMENT, "gbn_cpu", seed, "epochs_after_baseline")
            if gbn is not None:
                args = [*BUDGET, "method=l1", f"seed={seed}", f"finetune.epochs={round(gbn)}"]
                failures += sweep(args, log, common=COMMON) != 0
            runs = load_runs(EXPERIMENT, keep=False)  # one baseline under every seed: all retimed together
            for batch in (32, 1):
                failures += retime(runs, batch, log) if not runs.empty else 0
    return failures


def label(row) -> str:
    method = row["tags.method"]
    if method == "l1" and int(float(row["params.finetune.epochs"])) != FINETUNE_EPOCHS:
        return "l1+ft"  # the equal-budget control
    return method


def report() -> int:
    runs = labelled_runs(EXPERIMENT, label)
    if runs is None:
        return 1
    rows = [
        {**method_row(name, g, batch=32), **retimed_column(g, 32), **retimed_column(g, 1)}
        for name, g in runs.groupby("label")
    ]
    for row in rows:  # the task's metric is mAP@0.5, not an accuracy
        for key in [k for k in row if "acc" in k]:
            row[key.replace("acc", "mAP@0.5")] = row.pop(key)
    baseline = runs.drop_duplicates("seed")["metrics.base_acc"]
    names = sorted(runs["label"].unique())
    pairs = [(a, b) for a in names if a != "random" for b in ("random", "l1") if a != b] + [EQUAL_BUDGET]
    verdicts = [
        {k.replace("final acc", "final mAP@0.5"): x for k, x in v.items()}  # the task's metric, not an accuracy
        for a, b in pairs
        if (v := paired_verdict(runs, a, b))
    ]
    weak = baseline.min() < MIN_BASELINE_MAP
    overrides = "; ".join(f"`{m}`: `{' '.join(o)}`" for m, o in METHOD_OVERRIDES.items())
    lines = [
        "# Detection on cifar_mosaic (real CIFAR-10 images on canvases), SSDlite, 50% fewer MACs, CPU budget",
        "",
        "SSDlite-MobileNetV3 at 128×128 on canvases of the real CIFAR-10 images of shared/data/cifar10-dev "
        "(tasks/mosaic.py: 12,000 training canvases from the training pickles, 500 test canvases from the "
        "validation pickle; a synthetic layout of real images, **not PASCAL VOC**; a 12-epoch baseline, a "
        "2-epoch fine-tune). Metric: mAP@0.5 "
        "(torchmetrics + pycocotools, COCO-style interpolation) on the test canvases, final epoch; nothing "
        "chosen on it. MACs of the network alone at batch 1; speed-up = dense ÷ pruned median ms per batch of "
        "32 for the network alone (no decoding or NMS), eager PyTorch, 1 thread, CPU, as each run measured it when "
        "it ended (beside another worker, paused by the gate); *retimed*: every run's model timed together "
        "afterwards in interleaved rounds (`python -m harness retime`), the columns to compare methods by. One baseline "
        "(baseline_seed=0) under every seed: the seeds vary the pruning and the fine-tuning only. Set for this "
        f"network on top of a preset: {overrides} (gfp_cpu: the preset's 4 channels per decision had cut 6% of "
        "the MACs after 39 min). `l1+ft`: L1 fine-tuned for as many epochs after the baseline as gbn_cpu "
        "spent at the same seed (rounded), the equal-budget control for Gate Decorator's longer training.",
        "",
        "**Caveat on the speed-ups.** `l1` and `l1+ft` prune to one architecture at every seed (L1's ranking of "
        "the same baseline), so their speed-ups differ by measurement alone, and on this network they differ a "
        "lot: the runs' own b32 readings 1.42 vs 1.29; in the worker's last retime pass (10 pruned models and "
        "the dense one in one process) l1+ft seed 1 read 1.14x and seeds 0 and 2 1.66-1.67x, reproduced by a "
        "second 10-model pass (1.15x vs 1.69-1.71x), while 3- and 4-model passes of the same files read all "
        "three alike (1.86-1.87x; 1.59-1.79x with the dense model at 79-92 ms). How many models one process "
        "holds changes some models' time by up to 1.5x: read the retimed columns as within ~±25%.",
        "",
        f"**The baselines reach mAP@0.5 {baseline.min():.3f}–{baseline.max():.3f}"
        + (f": below {MIN_BASELINE_MAP}, so the methods are not ranked on them.**" if weak else ".**"),
        "",
        *tables(
            rows,
            [] if weak else verdicts,
            "mosaic_study.py",
            "logs/worker*.log: every command",
            "final mAP@0.5 (points)",
        ),
    ]
    return finish_report(lines, WALL, OUT / "table.md")


def run(workers: int) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    return run_workers(__file__, workers, WALL)


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, worker, run, report, "write results/cifar_mosaic/table.md from the MLflow runs"))
