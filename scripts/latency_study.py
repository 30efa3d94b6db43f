"""Does cost-aware allocation help a criterion at equal *measured* latency? On the real CIFAR-10 images of
shared/data/cifar10-dev at the cifar10_dev study's CPU budget (ResNet-20, budget=cifar10_dev, its baselines):

- batch 128, `prune.target=latency` at 30% and 50%, seeds 0, 1, 2: `l1` and `gbn_cpu`, each with
  `prune.allocation=global` (the default), `knapsack` (HALP: for Gate Decorator, each tick's cut allocated
  by the knapsack) and `prune.normalize=latency`;
- batch 1, 50%, the same three `l1` arms: where per-layer overhead dominates, what does the knapsack keep?

    python scripts/latency_study.py run [--workers 1]   # resumable (skip_finished); one worker: the timings
                                                         # that steer a latency target need a quiet machine
    python scripts/latency_study.py report               # results/cifar10_dev/latency.md

Arms of one criterion are compared seed by seed (same seed = same baseline) on final accuracy, only where
their measured latency reductions match within 2 points; the pairs left out are counted. Each run measures its
own latency when it ends, and runs minutes apart are not comparable that closely on a shared CPU, so once a
seed's runs at a batch size are done the worker times their final models together (`python -m harness retime`,
interleaved rounds) and the report matches arms on those figures where both were retimed in the same pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar10_dev_study import (  # noqa: E402
    OUT,
    cell,
    cli,
    difference,
    finish_report,
    load_runs,
    retime,
    retimed_with,
    run_workers,
    sweep,
)

SEEDS = (0, 1, 2)
TARGETS = "0.5,0.3"
ARMS = {
    "global": [],
    "knapsack": ["prune.allocation=knapsack"],
    "÷latency": ["prune.normalize=latency"],
}
METHOD_ARMS = {"l1": ("global", "knapsack", "÷latency"), "gbn_cpu": ("global", "knapsack", "÷latency")}
LATENCY = ["prune.target=latency"]  # COMMON sets threads=1
AT_BATCH = {128: ["measure.target_batch=128", "measure.batch_sizes=[1,128]"], 1: ["measure.target_batch=1"]}
MATCH = 0.02  # arms are compared where their measured latency cuts differ by at most this
WALL = OUT / "latency_wall_time.log"


def worker(index: int, workers: int) -> int:
    failures = 0
    with open(OUT / "logs" / f"latency_worker{index}.log", "a") as log:
        for seed in SEEDS[index::workers]:
            for method, arms in METHOD_ARMS.items():
                for arm in arms:
                    args = [f"method={method}", *ARMS[arm], *LATENCY, *AT_BATCH[128], f"seed={seed}"]
                    failures += sweep([*args, f"prune.latency_reduction={TARGETS}"], log) != 0
            failures += retime_seed(seed, 128, log)
        if index == 0:
            for arm in METHOD_ARMS["l1"]:
                args = ["method=l1", *ARMS[arm], *LATENCY, *AT_BATCH[1], "seed=0", "prune.latency_reduction=0.5"]
                failures += sweep(args, log) != 0
            failures += retime_seed(0, 1, log)
    return failures


def latency_runs(runs=None):
    """The study's finished latency-target runs, with seed and target batch as columns."""
    import pandas as pd

    runs = load_runs(keep=False) if runs is None else runs
    if not runs.empty:
        runs = runs[runs.get("params.prune.target", pd.Series(index=runs.index, dtype=object)) == "latency"].copy()
    if not runs.empty:
        runs["seed"] = runs["tags.seed"].astype(int)
        runs["batch"] = runs["params.measure.target_batch"].astype(float).astype(int)
    return runs


def retime_seed(seed: int, batch: int, log) -> int:
    """Time ``seed``'s final models at ``batch`` together (``cifar10_dev_study.retime``)."""
    runs = latency_runs()
    if runs.empty:
        return 0
    return retime(runs[(runs["seed"] == seed) & (runs["batch"] == batch)], batch, log)


def measured_cut(row, batch: int) -> tuple[float, bool]:
    """(the run's latency reduction, whether it is the retimed figure): the retimed one where there is one."""
    import math

    value = row.get(f"metrics.retime/b{batch}/reduction")
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
        return float(value), True
    return float(row["metrics.latency_reduction_measured"]), False


def arm_of(row) -> str:
    if row.get("params.prune.allocation") == "knapsack":
        return "knapsack"
    return "÷latency" if row.get("params.prune.normalize") == "latency" else "global"


def report() -> int:
    import pandas as pd

    runs = latency_runs(load_runs())
    if runs.empty:
        print("no finished latency-target runs in experiment cifar10_dev yet", file=sys.stderr)
        return 1
    runs["arm"] = runs.apply(arm_of, axis=1)
    runs["label"] = runs["tags.method"] + " [" + runs["arm"] + "]"
    runs["target"] = runs["params.prune.latency_reduction"].astype(float)
    cuts = runs.apply(lambda r: measured_cut(r, r["batch"]), axis=1)
    runs["cut"], runs["retimed"] = [c for c, _ in cuts], [t for _, t in cuts]
    rows, verdicts = [], []
    for (batch, target, label), g in runs.groupby(["batch", "target", "label"]):
        rows.append(
            {
                "batch": batch,
                "latency ↓ requested": f"{target:.0%}",
                "arm": label,
                "seeds": ",".join(map(str, sorted(g["seed"]))),
                "latency ↓ % at run end": cell(list(g["metrics.latency_reduction_measured"] * 100), ".1f"),
                "latency ↓ % retimed": cell(list(g["cut"][g["retimed"]] * 100), ".1f") if g["retimed"].any() else "–",
                "MACs ↓ %": cell(list(g["metrics.flops_reduction"] * 100), ".1f"),
                "final acc %": cell(list(g["metrics.final_acc"] * 100)),
                "epochs after baseline": cell(list(g["metrics.epochs_after_baseline"]), ".1f"),
            }
        )
    for (batch, target), at in runs.groupby(["batch", "target"]):
        for method, arms in METHOD_ARMS.items():
            for arm in arms[1:]:
                row = matched_verdict(at, f"{method} [{arm}]", f"{method} [global]")
                if row:
                    verdicts.append({"batch": batch, "latency ↓": f"{target:.0%}", **row})
    lines = [
        "# Cost-aware allocation at equal measured latency: cifar10-dev, ResNet-20, CPU",
        "",
        "`budget=cifar10_dev` (30-epoch baseline per seed, 8-epoch fine-tune), `prune.target=latency` at the batch shown,"
        " 1 thread, CPU; *at run end* = the run's own final paired timing (dense vs pruned, median), not the table's"
        " prediction; *retimed* = the seed's final models timed together afterwards (`harness retime`: interleaved"
        " rounds, so the machine's drift between runs cancels), which the matching below uses wherever the two"
        " runs were retimed in one pass. Accuracy on the 1,020-image validation file, final epoch. Arms: `global` ranks every channel"
        " against every other; `knapsack` (HALP) keeps per group the widths with the most score under the"
        " latency table's budget; `÷latency` divides each score by the predicted ms its removal saves. l1 fine-tunes"
        " 8 epochs in every arm; Gate Decorator prunes until the target is met, so its arms train for different"
        " lengths (*epochs after baseline*): its pairs compare at equal latency, not at equal training.",
        "",
        "Command: `python scripts/latency_study.py run` then `python scripts/latency_study.py report`.",
        "",
        pd.DataFrame(rows).to_markdown(index=False),
        "",
        f"## Paired differences, final accuracy (seeds whose measured latency cuts match within {MATCH:.0%} points)",
        "",
        pd.DataFrame(verdicts).to_markdown(index=False) if verdicts else "(no matched pairs yet)",
        "",
    ]
    return finish_report(lines, WALL, OUT / "latency.md")


def matched_verdict(runs, a: str, b: str) -> dict | None:
    """Final accuracy of ``a`` minus ``b`` over the seeds where both ran and their measured latency cuts
    differ by at most MATCH; the mean in points, its 95% t interval, and how many seeds were left out."""
    fa, fb = (runs[runs["label"] == x].set_index("seed") for x in (a, b))
    both = sorted(set(fa.index) & set(fb.index))
    if not both:
        return None
    seeds, together = [], 0
    for s in both:
        ra, rb = fa.loc[s], fb.loc[s]
        same_pass = bool(ra["retimed"] and rb["retimed"]) and retimed_with(ra, rb["run_id"], int(ra["batch"]))
        cut = (lambda r: r["cut"]) if same_pass else (lambda r: r["metrics.latency_reduction_measured"])
        if abs(cut(ra) - cut(rb)) <= MATCH:
            seeds.append(s)
            together += bool(same_pass)
    row = {
        "pair": f"{a} − {b}",
        "matched seeds": len(seeds),
        "of them retimed together": together,
        "left out (latency differs)": len(both) - len(seeds),
    }
    if not seeds:
        return {**row, "mean Δ final acc (points)": "–", "95% t interval": "–", "verdict": "no matched seed"}
    acc = "metrics.final_acc"
    return {**row, **difference(a, b, [100 * (fa.at[s, acc] - fb.at[s, acc]) for s in seeds])}


def run(workers: int) -> int:
    return run_workers(__file__, workers, WALL)


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, worker, run, report, "write results/cifar10_dev/latency.md from the MLflow runs"))
