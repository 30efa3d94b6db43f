"""Does pausing the machine's other harness runs (harness/core/gate.py) make a latency measurement taken
beside a training job read as one taken on an idle machine? On this CPU, 1 thread per process.

    python benchmarks/latency_gate.py [--rounds 3] [--batches 1 64] [--threads 1] [--out results/bench/latency_gate.md]

Run it with nothing else on the machine. What is timed: untrained ResNet-56 against a copy with every
prunable group cut to half its channels, in alternating pairs (harness.latency.measure.paired_latency, what
every run does: 3 warm-up passes, at least 20 pairs, then until the speed-up's 95% interval is within
+-3% or 15 s). Three conditions, interleaved round by round so that a drift of the machine hits all three:

- *idle*: nothing else running;
- *beside training*: a second process trains ResNet-20 (SGD, batches of 128 at 32x32, 1 thread) through a
  gated loader with the gate off (``HARNESS_PAUSE_OTHERS=0``), as two runs shared a machine before;
- *beside training, gated*: the same trainer with the gate on: it pauses between batches while the
  measurement runs.

Reported per condition and batch: the median over rounds of the dense model's median ms (load inflates
it), of the speed-up and of its 95% interval's width, and the dense ms relative to the same round's idle
measurement (median and range over rounds). The lock files live in a private folder, so no other harness
run on the machine takes part.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.core.surgery import ChannelPruner  # noqa: E402
from harness.latency.measure import paired_latency  # noqa: E402
from tasks.models.resnet_cifar import resnet56  # noqa: E402

TRAINER = """
import itertools, sys, torch, torch.nn.functional as F
from harness.core.gate import gated
from tasks.models.resnet_cifar import resnet20
torch.set_num_threads(1)
torch.manual_seed(0)
model = resnet20()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
for i in gated(itertools.count()):  # for ever, until killed
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if i == 0:
        open(sys.argv[1], "w").write("training")
"""
CONDITIONS = ("idle", "beside training", "beside training, gated")


def start_trainer(gated: bool, folder: Path) -> subprocess.Popen:
    flag = folder / f"started-{time.monotonic_ns()}"
    env = {**os.environ, "HARNESS_PAUSE_OTHERS": "1" if gated else "0", "PYTHONPATH": str(ROOT)}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(flag)], env=env)
    while not flag.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the trainer exited with {proc.returncode}")
        time.sleep(0.05)
    time.sleep(1.0)  # a few batches in: the trainer is in its steady state
    return proc


def measure(dense, cut, batch: int) -> dict:
    x = torch.randn(batch, 3, 32, 32)
    return paired_latency(dense, cut, x, warmup=3, min_pairs=20, max_seconds=15, interval=0.03)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=1, help="of the measurement (the trainer has 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "latency_gate.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="latency-gate-bench-"))
    os.environ["HARNESS_GATE_DIR"] = str(folder)  # this benchmark's processes only (inherited by the trainers)
    torch.manual_seed(0)
    dense = resnet56().eval()
    example = torch.randn(1, 3, 32, 32)
    pruner = ChannelPruner(dense, example, [dense.fc])
    groups = pruner.groups(dense)
    cut = pruner.shrink_to(copy.deepcopy(dense), {k: max(g.min_keep, g.channels // 2) for k, g in groups.items()})
    results: dict[tuple[str, int], list[dict]] = {}
    started = time.monotonic()
    for r in range(args.rounds):
        for batch in args.batches:
            for condition in CONDITIONS:
                gated = condition.endswith("gated")
                os.environ["HARNESS_PAUSE_OTHERS"] = "0" if condition == "beside training" else "1"
                trainer = start_trainer(gated, folder) if condition != "idle" else None
                try:
                    m = measure(dense, cut, batch)
                finally:
                    if trainer is not None:
                        trainer.kill(), trainer.wait()
                results.setdefault((condition, batch), []).append(m)
                width = (m["speedup_hi"] - m["speedup_lo"]) if m["speedup_lo"] else float("nan")
                print(
                    f"round {r + 1} b{batch} {condition}: dense {m['dense_ms']:.2f} ms, speed-up {m['speedup']:.3f} "
                    f"(interval width {width:.3f}, {m['pairs']} pairs), others paused {m['others_paused']}",
                    flush=True,
                )
    wall = time.monotonic() - started
    rows = []
    for batch in args.batches:
        idle = results[("idle", batch)]
        for condition in CONDITIONS:
            ms = results[(condition, batch)]
            rel = [m["dense_ms"] / i["dense_ms"] for m, i in zip(ms, idle)]
            widths = [m["speedup_hi"] - m["speedup_lo"] for m in ms if m["speedup_lo"]]
            rows.append(
                f"| {batch} | {condition} | {statistics.median(m['dense_ms'] for m in ms):.2f} | "
                f"{statistics.median(rel):.2f} [{min(rel):.2f}, {max(rel):.2f}] | "
                f"{statistics.median(m['speedup'] for m in ms):.3f} | "
                f"{statistics.median(widths) if widths else float('nan'):.3f} | "
                f"{statistics.median(m['pairs'] for m in ms):.0f} |"
            )
    lines = [
        "# Latency measured beside a training job, with and without the gate (harness/core/gate.py)",
        "",
        f"`python benchmarks/latency_gate.py --rounds {args.rounds} --batches {' '.join(map(str, args.batches))} "
        f"--threads {args.threads}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {os.cpu_count()} cores, the measurement on {args.threads} thread(s), the trainer on 1, eager, CPU, {wall / 60:.1f} min. "
        "Untrained ResNet-56 (32x32) against a copy with every prunable group at half its channels; the trainer "
        "is ResNet-20 training on batches of 128. Medians over rounds; *dense ms ÷ idle*: the dense model's "
        "median ms relative to the same round's idle measurement (median [min, max] over rounds); *interval "
        "width*: of the speed-up's 95% interval.",
        "",
        "| batch | condition | dense ms | dense ms ÷ idle | speed-up | interval width | pairs |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
