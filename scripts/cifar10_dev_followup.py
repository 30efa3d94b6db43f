"""Follow-up of the cifar10-dev study (scripts/cifar10_dev_study.py): what its first sessions left open.

    python scripts/cifar10_dev_followup.py run [--workers 2]   # ~1 h on 2 cores; safe to stop and run again
    python scripts/cifar10_dev_followup.py report              # results/cifar10_dev/followup.md

The study's MLflow store is not kept in git; its finished runs are recorded in results/cifar10_dev/runs.json.
This script re-trains the three per-seed baselines with the same commands, checks that they and one
pruned run reproduce the record, then runs (same baselines, same seeds, experiment cifar10_dev):

1. the equal-budget controls the study lacked (L1 and random fine-tuned for Gate Decorator's total
   epochs) at 70% (3 seeds) and 30% (seed 1), and the unpruned rows (method=none);
2. the investigation of why Gate Decorator (gbn_cpu) does not lead L1 after fine-tuning at 50% MACs:
   one change at a time to gbn_cpu: 4x the data per tick, no tocks, the mean group score, a higher
   per-layer floor, and a 2-epoch fine-tune (with L1 at 2 epochs and at Gate Decorator's total budget);
3. L1 at 50% with prune.round_to 8 and 16: the accuracy cost of rounding widths (issue 15).

Every number is final-epoch accuracy on the validation file (the study's test split); nothing here was
tuned on it: the variants were fixed before they ran, one change each.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar10_dev_study import OUT, SEEDS, cell, cli, finish_report, load_runs, recorded, run_workers, sweep, t_interval  # noqa: E402

FINETUNE = 8  # budget=cifar10_dev's fine-tune epochs


def gbn_epochs(target: float, seed: int) -> float:
    """The study's gbn_cpu (default settings) total epochs after the baseline at this cell, from the record:
    the store also holds this script's gbn_cpu variants at 50%, which must not set the controls' budgets."""
    return next(
        r["epochs_after_baseline"]
        for r in recorded()
        if r["method"] == "gbn_cpu" and r["target"] == target and r["seed"] == seed
    )


def gbn_prune_epochs(seed: int) -> float:
    """gbn_cpu's own training at 50% (ticks and tocks), from the record: its total less the fine-tune."""
    return gbn_epochs(0.5, seed) - FINETUNE


# (label, target, seed -> overrides); labels name the one thing changed.
def items() -> list[tuple[str, float | None, int, list[str]]]:
    out = [("none", None, s, ["method=none"]) for s in (2, 0, 1)]
    out.append(("l1 (reproduction)", 0.5, 0, ["method=l1"]))
    for seed in SEEDS:
        out += [
            ("l1+ft", 0.7, seed, ["method=l1", f"finetune.epochs={round(gbn_epochs(0.7, seed))}"]),
            ("random+ft", 0.7, seed, ["method=random", f"finetune.epochs={round(gbn_epochs(0.7, seed))}"]),
        ]
    out += [
        ("l1+ft", 0.3, 1, ["method=l1", f"finetune.epochs={round(gbn_epochs(0.3, 1))}"]),
        ("random+ft", 0.3, 1, ["method=random", f"finetune.epochs={round(gbn_epochs(0.3, 1))}"]),
    ]
    for seed in SEEDS:
        out += [
            ("gbn_cpu, 4x tick data (tick_samples 2048)", 0.5, seed, ["method=gbn_cpu", "method.tick_samples=2048"]),
            ("gbn_cpu, no tocks (tock_epochs 0)", 0.5, seed, ["method=gbn_cpu", "method.tock_epochs=0"]),
            ("gbn_cpu, group_score mean", 0.5, seed, ["method=gbn_cpu", "method.group_score=mean"]),
            ("gbn_cpu, floor 0.3 (min_channels_ratio)", 0.5, seed, ["method=gbn_cpu", "prune.min_channels_ratio=0.3"]),
            ("gbn_cpu, 2-epoch fine-tune", 0.5, seed, ["method=gbn_cpu", "finetune.epochs=2"]),
            ("l1, 2-epoch fine-tune", 0.5, seed, ["method=l1", "finetune.epochs=2"]),
            (
                "l1, fine-tuned for gbn_cpu's total with a 2-epoch fine-tune",
                0.5,
                seed,
                ["method=l1", f"finetune.epochs={round(gbn_prune_epochs(seed)) + 2}"],
            ),
        ]
    # Issue 15's width rounding: what prune.round_to costs in accuracy (its latency is in results/bench/round_to/)
    for seed in SEEDS:
        out += [
            ("l1, round_to 8", 0.5, seed, ["method=l1", "prune.round_to=8"]),
            ("l1, round_to 16", 0.5, seed, ["method=l1", "prune.round_to=16"]),
        ]
    return out


def worker(index: int, workers: int) -> int:
    failures = 0
    with open(OUT / "logs" / f"followup_worker{index}.log", "a") as log:
        for _, target, seed, overrides in items()[index::workers]:
            goal = [f"prune.flops_reduction={target}"] if target is not None else []
            failures += sweep([*overrides, *goal, f"seed={seed}"], log) != 0
    return failures


def run(workers: int) -> int:
    return run_workers(__file__, workers, OUT / "followup_wall_time.log")


# --- the report -----------------------------------------------------------------------------------
def matching(runs, target, seed, overrides):
    """The finished runs of one item: its method tag, target, seed and every override's param."""
    keep = runs["tags.seed"].astype(int) == seed
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "method":
            keep &= runs["tags.method"] == value
        else:
            keep &= _param(runs, key).map(lambda v, want=value: _same(v, want)).astype(bool)
    if target is None:
        return runs.loc[keep]
    keep &= runs["params.prune.flops_reduction"].astype(float) == target
    defaults = {
        "method.tick_samples": "512",
        "method.tock_epochs": "1",
        "method.group_score": "sum",
        "prune.min_channels_ratio": "0.1",
        "finetune.epochs": str(FINETUNE),
        "prune.round_to": "None",
    }
    for key, value in defaults.items():  # an item that does not change a key runs at its default
        if key not in {o.partition("=")[0] for o in overrides} and f"params.{key}" in runs:
            keep &= _param(runs, key).map(lambda v, d=value: _same(v, d) or v == "None").astype(bool)
    return runs.loc[keep]


def _param(runs, key: str):
    """A param column as strings; missing (a key the run's method does not have) reads 'None'."""
    col = runs[f"params.{key}"]
    return col.astype(object).where(col.notna(), "None").astype(str)


def _same(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a == b


def paired(values: dict[int, float], other: dict[int, float]) -> str:
    seeds = sorted(set(values) & set(other))
    if len(seeds) < 2:
        return "–"
    mean, lo, hi = t_interval([100 * (values[s] - other[s]) for s in seeds])
    verdict = "ahead" if lo > 0 else "behind" if hi < 0 else "no difference shown"
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] ({verdict}, n={len(seeds)})"


def report() -> int:
    import pandas as pd

    runs = load_runs()
    if runs.empty:
        print("no finished runs in experiment cifar10_dev yet", file=sys.stderr)
        return 1
    record = recorded()
    rec = lambda method, target: {
        r["seed"]: r["final_acc"]
        for r in record  # noqa: E731
        if r["method"] == method and r["target"] == target
    }
    lines = [
        "# cifar10-dev study: follow-up (reproduction, missing controls, why Gate Decorator does not lead)",
        "",
        "ResNet-20 on shared/data/cifar10-dev, budget=cifar10_dev, the study's seeds and baselines; final-epoch "
        "accuracy on the 1,020-image validation file (the study's test split; nothing was selected on it). "
        "'recorded' = results/cifar10_dev/runs.json, the study's committed runs. Paired differences: mean over "
        "seeds in points with the 95% Student-t interval. Made by `python scripts/cifar10_dev_followup.py run` "
        "then `report` (see the script's docstring).",
        "",
    ]

    # 1. reproduction
    lines += ["## 1. Re-trained baselines and one pruned run against the record", ""]
    rows = []
    for seed in SEEDS:
        base = matching(runs, None, seed, ["method=none"])
        was = next((r["base_acc"] for r in record if r["seed"] == seed and r["method"] == "l1"), None)
        now = float(base["metrics.base_acc"].iloc[0]) if not base.empty else None
        rows.append(
            {
                "run": f"baseline, seed {seed}",
                "recorded acc %": _pct(was),
                "re-run acc %": _pct(now),
                "identical": "–"
                if now is None or was is None
                else "yes"
                if now == was
                else f"no ({100 * (now - was):+.2f})",
            }
        )
    hit = matching(runs, 0.5, 0, ["method=l1"])
    was = rec("l1", 0.5).get(0)
    now = float(hit["metrics.final_acc"].iloc[0]) if not hit.empty else None
    rows.append(
        {
            "run": "l1 at 50% MACs, seed 0 (final acc)",
            "recorded acc %": _pct(was),
            "re-run acc %": _pct(now),
            "identical": "–" if now is None else "yes" if now == was else f"no ({100 * (now - was):+.2f})",
        }
    )
    lines += [pd.DataFrame(rows).to_markdown(index=False), ""]

    # 2. controls and unpruned rows
    lines += ["## 2. Equal-budget controls the study lacked, and the unpruned baselines", ""]
    rows = []
    for target in (0.3, 0.7):
        for label, method in (("l1+ft", "l1"), ("random+ft", "random")):
            got = {}
            for seed in SEEDS:
                ep = gbn_epochs(target, seed)
                hit = (
                    matching(runs, target, seed, [f"method={method}", f"finetune.epochs={round(ep)}"])
                    if ep
                    else runs.iloc[0:0]
                )
                if not hit.empty:
                    got[seed] = float(hit["metrics.final_acc"].iloc[0])
            for seed, acc in rec(label, target).items():
                got.setdefault(seed, acc)  # the study's own control runs at this cell
            rows.append(
                {
                    "target": f"{target:.0%}",
                    "run": label,
                    "seeds": ",".join(map(str, sorted(got))),
                    "final acc %": cell([100 * v for v in got.values()]),
                    "gbn_cpu − this (points)": paired(rec("gbn_cpu", target), got),
                }
            )
    nones = [
        float(matching(runs, None, s, ["method=none"])["metrics.final_acc"].iloc[0]) * 100
        for s in SEEDS
        if not matching(runs, None, s, ["method=none"]).empty
    ]
    lines += [
        pd.DataFrame(rows).to_markdown(index=False),
        "",
        f"Unpruned (method=none, the baselines themselves): {cell(nones)} % over {len(nones)} seeds.",
        "",
    ]

    # 3. the investigation
    lines += [
        "## 3. Why gbn_cpu does not lead L1 at 50% MACs: one change at a time",
        "",
        "Recorded at 50%: gbn_cpu "
        + cell([100 * v for v in rec("gbn_cpu", 0.5).values()])
        + " %, l1 "
        + cell([100 * v for v in rec("l1", 0.5).values()])
        + " %, l1+ft (16 epochs) "
        + cell([100 * v for v in rec("l1+ft", 0.5).values()])
        + " %.",
        "",
    ]
    rows = []
    for label in dict.fromkeys(i[0] for i in items() if i[1] == 0.5 and "reproduction" not in i[0]):
        found = {}
        for _, target, seed, overrides in (i for i in items() if i[0] == label):
            hit = matching(runs, target, seed, overrides)
            if not hit.empty:
                found[seed] = hit.iloc[0]
        if not found:
            continue
        final = {s: float(r["metrics.final_acc"]) for s, r in found.items()}
        rows.append(
            {
                "variant (one change)": label,
                "seeds": ",".join(map(str, sorted(found))),
                "acc after pruning %": cell([100 * float(r["metrics.pruned_acc"]) for r in found.values()]),
                "final acc %": cell([100 * v for v in final.values()]),
                "params ↓ %": cell([100 * float(r["metrics.params_reduction"]) for r in found.values()], ".1f"),
                "epochs after baseline": cell(
                    [float(r["metrics.epochs_after_baseline"]) for r in found.values()], ".1f"
                ),
                "− gbn_cpu (recorded)": paired(final, rec("gbn_cpu", 0.5)),
                "− l1 (recorded, 8 epochs)": paired(final, rec("l1", 0.5)),
            }
        )
    lines += [pd.DataFrame(rows).to_markdown(index=False) if rows else "(no variant has finished yet)", ""]
    pairs = [
        ("gbn_cpu, 2-epoch fine-tune", "l1, 2-epoch fine-tune"),
        ("gbn_cpu, 2-epoch fine-tune", "l1, fine-tuned for gbn_cpu's total with a 2-epoch fine-tune"),
        ("l1, round_to 8", "l1"),
        ("l1, round_to 16", "l1"),
    ]
    finals = {label: final for label, final in variant_finals(runs).items()}
    finals["l1"] = rec("l1", 0.5)
    lines += ["Pairs within the variants (same seeds):", ""]
    lines += [f"- {a} − {b}: {paired(finals.get(a, {}), finals.get(b, {}))}" for a, b in pairs] + [""]
    return finish_report(lines, OUT / "followup_wall_time.log", OUT / "followup.md")


def variant_finals(runs) -> dict[str, dict[int, float]]:
    """{variant label: {seed: final accuracy}} of the 50% items that have finished."""
    out: dict[str, dict[int, float]] = {}
    for label, target, seed, overrides in items():
        if target != 0.5 or "reproduction" in label:
            continue
        hit = matching(runs, target, seed, overrides)
        if not hit.empty:
            out.setdefault(label, {})[seed] = float(hit["metrics.final_acc"].iloc[0])
    return out


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def main() -> int:
    return cli(__doc__, worker, run, report, "write results/cifar10_dev/followup.md from the MLflow runs")


if __name__ == "__main__":
    raise SystemExit(main())
