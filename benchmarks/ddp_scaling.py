"""Training throughput of one process against two data-parallel processes (gloo), on real CIFAR-10 images.

    python benchmarks/ddp_scaling.py [--model resnet20] [--rounds 3] [--epochs 3] [--data ../shared/data/cifar10-dev]

Each configuration is a fresh launch of this file's worker (``torchrun --nproc-per-node 2`` for the
data-parallel one) that trains ``--epochs`` epochs with ``harness.core.train.train`` exactly as a run's
fine-tune does: the task's dataset and augmentation, the harness's loader (``ShardSampler`` shards
under DDP), DistributedDataParallel. The global batch is 128 in every configuration (2 processes x 64).
The first epoch of each launch is a warm-up; images/s is the median of the others. Launches are
interleaved (1x1, 1x2, 2x1, 1x1, ...) so that all see the same machine load, and the ratios are taken
within each round. Results go to results/bench/ddp_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GLOBAL_BATCH = 128
CONFIGS = [
    ("1 process x 1 thread", 1, 1),
    ("1 process x 2 threads", 1, 2),
    ("2 processes x 1 thread (DDP, gloo)", 2, 1),
]


def worker(args) -> None:
    import torch
    from torch.utils.data import DataLoader

    from harness.config import compose
    from harness.core import distributed
    from harness.core.train import train
    from tasks import create_task

    torch.set_num_threads(args.threads)
    device = distributed.setup(torch.device("cpu"))
    cfg = compose(
        [
            "task=resnet56",
            "budget=cifar10_dev",
            f"model={args.model}",
            f"data.root={args.data}",
            "data.check_integrity=false",
            f"finetune.epochs={args.epochs}",
            f"finetune.batch_size={GLOBAL_BATCH // distributed.world_size()}",
        ]
    )
    task = create_task(cfg)
    train_set, _, _ = task.splits()
    torch.manual_seed(0)
    model = task.build_model()
    gen = torch.Generator().manual_seed(0)
    sampler = distributed.ShardSampler(train_set, gen) if distributed.is_distributed() else None
    loader = DataLoader(
        train_set, batch_size=int(cfg.finetune.batch_size), shuffle=sampler is None, sampler=sampler, generator=gen
    )
    stamps = [time.perf_counter()]
    train(
        model,
        loader,
        cfg.finetune,
        loss_fn=task.loss_fn(),
        device=device,
        quiet=True,
        seed=0,
        on_epoch=lambda e, m: stamps.append(time.perf_counter()),
    )
    seconds = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # the first epoch warms up
    if distributed.is_main():
        print(
            json.dumps(
                {
                    "images_per_s": len(train_set) / statistics.median(seconds),
                    "epoch_s": seconds,
                    "images": len(train_set),
                }
            )
        )


def launch(args, processes: int, threads: int) -> dict:
    me = [
        str(Path(__file__).resolve()),
        "--worker",
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--threads",
        str(threads),
        "--data",
        args.data,
    ]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *me]
    else:
        cmd = [sys.executable, *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="(worker) torch threads per process")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-dev"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "ddp_scaling.md")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0

    from harness.latency.backends import environment

    started = time.time()
    rates: dict[str, list[float]] = {name: [] for name, _, _ in CONFIGS}
    for r in range(args.rounds):
        for name, processes, threads in CONFIGS:
            rates[name].append(launch(args, processes, threads)["images_per_s"])
            print(f"round {r + 1}: {name}: {rates[name][-1]:.1f} images/s", file=sys.stderr)
    base = CONFIGS[0][0]
    lines = [
        "# Data-parallel training throughput on CPU: 1 process vs 2 (gloo)",
        "",
        f"Machine: {environment()}; CPU only, gloo backend.",
        "",
        f"Command: `python benchmarks/ddp_scaling.py --model {args.model} --rounds {args.rounds} --epochs {args.epochs}` "
        f"({time.time() - started:.0f} s in all)",
        "",
        f"{args.model} on the 4,065 training images of shared/data/cifar10-dev (random crop + flip + normalise), "
        f"`harness.core.train.train` (the loop every run's training uses), global batch {GLOBAL_BATCH} in every row "
        f"(2 processes x {GLOBAL_BATCH // 2}), SGD. Images/s: per launch, the median over epochs 2..{args.epochs}; "
        "the table gives the median over rounds, and the speed-up is the median of per-round ratios against the "
        "first row.",
        "",
        "| configuration | images/s (median) | speed-up vs 1 process x 1 thread | per round (images/s) |",
        "|---|---|---|---|",
    ]
    for name, _, _ in CONFIGS:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates[base]))
        lines.append(
            f"| {name} | {statistics.median(rates[name]):.1f} | {ratio:.2f}x | "
            f"{', '.join(f'{v:.1f}' for v in rates[name])} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
