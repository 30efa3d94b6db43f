"""Does prune.target=latency meet its request for every method? ResNet-56 and VGG-16 (32x32) on this CPU.

    python benchmarks/latency_target_methods.py run [--methods gbn_cpu scop ...] [--models resnet56 vgg16_cifar] [--batches 1 64]
    python benchmarks/latency_target_methods.py run --methods scop --models resnet56 --batches 64 --requests 0.5 --rerun
    python benchmarks/latency_target_methods.py run --methods metapruning_cpu --models vgg16_cifar --extra method.generator_hidden=8
    python benchmarks/latency_target_methods.py report      # results/bench/latency_target_methods.md

The companion of benchmarks/latency_target.py (L1's ranking through the pruner alone): here each method
runs whole, through the harness's own sweep (resumable: skip_finished), with its CPU preset and search
settings cut so that a run takes minutes, since what is measured is where the method's last step lands on
a *measured* latency, not accuracy. The baseline trains one epoch (five for GAL and AIP, which distil from it) on 512 images of shared/data/cifar10-dev
(near-untrained weights, as the companion benchmark's; latency does not depend on the values), no
fine-tune; VGG-16 gets 10 classes (CIFAR-10 images). One thread (the other core stays free), batch 1 and
64, requests of 30% and 50%. "measured" is the run's own final paired measurement at the target batch
(dense vs pruned in alternating pairs, its 95% interval); "measurements" how many candidates the last step
timed (the correction, ``ChannelPruner.finish``).

``report`` keeps every finished cell in results/bench/latency_target_methods.rows.jsonl (committed), so the
table survives a new checkout whose MLflow store is empty: a cell in the store replaces its row there, the
others stay. Notes written by hand go in latency_target_methods.notes.md, appended below the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EXPERIMENT = "latency_target_methods"
OUT = ROOT / "results" / "bench" / "latency_target_methods.md"
LOG = ROOT / "results" / "bench" / "latency_target_methods.log"
ROWS = OUT.with_suffix(".rows.jsonl")
NOTES = OUT.with_suffix(".notes.md")
CELL = ("method", "model", "batch", "requested ↓ %")
COMMON = [
    "task=resnet56",
    "budget=cifar10_dev",
    f"data.root={ROOT.parent / 'shared/data/cifar10-dev'}",
    "data.limit_train=512",
    "data.val_fraction=0.1",
    "train.epochs=1",
    "finetune.epochs=0",
    "prune.target=latency",
    "threads=1",
    "measure.max_seconds=10",
    "quiet=true",
    f"tracking.experiment={EXPERIMENT}",
]
# Each method's CPU preset, its search cut to minutes: Gate Decorator masks 5% of the live channels a tick
# (the preset 2%: ~110 ticks, 10 min, to reach 50% at batch 1), Group Fisher 16 channels every 2 iterations.
METHODS = {
    "l1": ["method=l1"],
    "random": ["method=random"],
    "slimming": ["method=slimming", "method.sparse_epochs=1"],
    "gbn_cpu": ["method=gbn_cpu", "method.tick_p=0.05"],
    "gfp_cpu": ["method=gfp_cpu", "method.interval=2", "method.channels_per_step=16"],
    "scop": ["method=scop", "method.epochs=1"],
    "acp": ["method=acp", "method.particles=3", "method.cycles=1", "method.fitness_epochs=0"],
    "metapruning_cpu": ["method=metapruning_cpu", "method.pruningnet_epochs=1", "method.generations=1"],
    # The distilling methods get a 5-epoch baseline: after 1 epoch (4 batches) ResNet-56's BN running statistics
    # have not settled, its eval-mode logits reach ~2e4, and GAL's student-teacher MSE diverges at step 3-4
    # (at lr 0.01 and 0.001, masks from N(0,1) or from 1); with 5 epochs it runs.
    "gal": ["method=gal", "method.epochs=1", "train.epochs=5"],
    "aip": ["method=aip", "method.steps=2", "method.recover_epochs=1", "train.epochs=5"],
    # The reconstructions added after the first sessions; GA distils too (its KD after the groups).
    "ga": [
        "method=ga",
        "method.sensitivity_samples=128",
        "method.ratios=[0.3,0.6,0.9]",
        "method.population=8",
        "method.generations=2",
        "method.rescore=0",
        "method.kd_epochs=0.5",
        "train.epochs=5",
    ],
    "wgates": ["method=wgates", "method.cost=latency", "method.epochs=1", "method.latency_samples=16"],
    "functional": ["method=functional", "method.probe=64"],
}
MODELS = ("resnet56", "vgg16_cifar")
BATCHES = (1, 64)


def run(methods: list[str], models: list[str], batches: list[int], requests: str, rerun: bool, extra: list[str]) -> int:
    """Every case of the methods, models and batches given, at the ``requests`` (a comma list); ``rerun``
    runs a finished cell again (its latest run is the table's row: say why in the notes); ``extra`` overrides
    follow the method's (a setting a case needs, e.g. a grid that reaches it: say so in the notes)."""
    common = [*COMMON, f"prune.latency_reduction={requests}", f"skip_finished={str(not rerun).lower()}"]
    LOG.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    with open(LOG, "a") as log:
        for name in methods:  # every case of one method before the next: a partial table is whole rows
            for model in models:
                for batch in batches:
                    cmd = [sys.executable, "-m", "harness", "sweep", *common, f"model={model}", *METHODS[name], *extra]
                    cmd += [f"measure.target_batch={batch}", f"measure.batch_sizes=[{batch}]"]
                    started = time.time()
                    log.write(f"$ {shlex.join(cmd)}\n")
                    log.flush()
                    code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=log)
                    log.write(f"# exit {code}, {time.time() - started:.0f} s\n")
                    log.flush()
                    print(f"{name} {model} b{batch}: exit {code}, {time.time() - started:.0f} s", flush=True)
                    failures += code != 0
    return failures


def store_rows() -> list[dict]:
    """One row per finished cell of the store (a cell rerun with other settings: the latest counts)."""
    from harness.compare import load_runs
    from harness.tracking import store_uri

    runs = load_runs(store_uri(None, ROOT / "results"), EXPERIMENT)
    if runs.empty:
        return []
    runs = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    cell = ["tags.method", "params.model.name", "params.measure.target_batch", "params.prune.latency_reduction"]
    runs = runs.drop_duplicates(cell, keep="last")
    rows = []
    for _, r in runs.iterrows():
        requested = 100 * float(r["params.prune.latency_reduction"])
        measured = 100 * float(r["metrics.latency_reduction_measured"])
        lo, hi = (100 * float(r.get(f"metrics.latency_reduction_measured_{s}", float("nan"))) for s in ("lo", "hi"))
        rows.append(
            {
                "method": r["tags.method"],
                "model": r["params.model.name"],
                "batch": str(int(float(r["params.measure.target_batch"]))),
                "requested ↓ %": f"{requested:.0f}",
                "predicted ↓ %": f"{100 * float(r['metrics.latency_reduction_predicted']):.1f}",
                "measured ↓ % [95%]": f"{measured:.1f} [{lo:.1f}, {hi:.1f}]",
                "miss (points)": f"{measured - requested:+.1f}",
                "within 5": "yes" if abs(measured - requested) <= 5 else "no",
                "MACs ↓ %": f"{100 * float(r['metrics.flops_reduction']):.1f}",
                "run s": f"{(r['end_time'] - r['start_time']).total_seconds():.0f}",
                "finished": r["end_time"].strftime("%Y-%m-%d %H:%M"),
                "run id": r["run_id"],
            }
        )
    return rows


def kept_rows() -> dict[tuple, dict]:
    """The committed rows by cell, those of the store laid over them (and written back)."""

    rows = {}
    if ROWS.exists():
        for line in ROWS.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[tuple(row[k] for k in CELL)] = row
    for row in store_rows():
        rows[tuple(row[k] for k in CELL)] = row
    ROWS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows.values()))
    return rows


def report() -> int:
    import pandas as pd

    rows = kept_rows()
    if not rows:
        print("no runs yet: python benchmarks/latency_target_methods.py run", file=sys.stderr)
        return 1
    table = pd.DataFrame(list(rows.values())).drop(columns=["finished", "run id"], errors="ignore")
    order = table.assign(_b=table["batch"].astype(int), _r=table["requested ↓ %"].astype(float))
    table = table.loc[order.sort_values(["method", "model", "_b", "_r"]).index]
    ok = int((table["within 5"] == "yes").sum())
    cases = len(MODELS) * len(BATCHES) * 2
    complete = [m for m, g in table.groupby("method") if len(g) == cases]
    text = "\n".join(
        [
            "# Latency targets for every method: requested vs measured",
            "",
            "`python benchmarks/latency_target_methods.py run` then `report` (the settings: the script's docstring;"
            " every cell's row, with its MLflow run id and when it finished: latency_target_methods.rows.jsonl)",
            "",
            f"CPU {platform.processor() or platform.machine()}, 1 thread, eager PyTorch, float32; latency = ms per "
            "forward pass of the batch (median of paired timings); near-untrained weights (one baseline epoch on "
            "512 images), no fine-tune. 'predicted' is the lookup table's figure for the final network, "
            "'measured' the run's final paired measurement with its 95% interval.",
            "",
            f"**{ok} of {len(table)} runs within 5 points of the request.** Methods with all {cases} cases: "
            f"{', '.join(complete) or 'none yet'}.",
            "",
            table.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    )
    if NOTES.exists():
        text += "\n" + NOTES.read_text()
    OUT.write_text(text)
    print(text)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES), choices=list(BATCHES))
    p.add_argument("--requests", default="0.3,0.5", help="requested latency reductions, a comma list")
    p.add_argument("--rerun", action="store_true", help="run finished cells again (skip_finished=false)")
    p.add_argument("--extra", nargs="*", default=[], help="overrides after the method's, e.g. method.grid=[...]")
    args = p.parse_args()
    if args.command == "report":
        return report()
    return run(args.methods, args.models, args.batches, args.requests, args.rerun, args.extra)


if __name__ == "__main__":
    raise SystemExit(main())
