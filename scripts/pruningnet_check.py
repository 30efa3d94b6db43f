"""Does MetaPruning's PruningNet learn on cifar10-dev at a CPU budget? Its training loss per epoch.

    python scripts/pruningnet_check.py --encodings random --lowest 0.10 --epochs 4   # the authors' grid
    python scripts/pruningnet_check.py --encodings random --lowest 0.40 --epochs 4   # metapruning_cpu's grid
    python scripts/pruningnet_check.py --encodings full --epochs 3                  # every width at 1.00
    python scripts/pruningnet_check.py --encodings plain --epochs 3                 # ResNet-20 itself

ResNet-20 on the 3,658 training images of shared/data/cifar10-dev left after data.val_fraction=0.1, from
scratch (the PruningNet always starts from scratch), SGD momentum 0.9, weight decay 1e-4, cosine lr over
the epochs, batch 128, label smoothing 0.1 (chance: ln 10 = 2.303), 1 thread. ``random`` draws a new width
vector from the grid [lowest, 1.00] (step 0.03, the authors') for every batch, as methods/metapruning.py
trains it; ``full`` keeps the PruningNet at full width; ``plain`` trains the ordinary network.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.config import compose  # noqa: E402
from harness.core.surgery import ChannelPruner  # noqa: E402
from harness.core.widths import WidthSpace  # noqa: E402
from methods.metapruning import AUTHORS_GRID, Encoding, _Candidates, build_pruningnet  # noqa: E402
from tasks import create_task  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encodings", choices=("random", "full", "plain"), default="random")
    p.add_argument("--lowest", type=float, default=0.10, help="the grid's smallest width fraction")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    grid = [f for f in AUTHORS_GRID if f >= args.lowest - 1e-9]
    if not grid or args.epochs < 1 or args.lr <= 0:
        p.error("--lowest must be at most 1.0, --epochs at least 1 and --lr positive")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = compose(
        [
            "task=resnet56",
            "model=resnet20",
            "budget=cifar10_dev",
            f"data.root={ROOT.parent / 'shared/data/cifar10-dev'}",
            "data.val_fraction=0.1",
        ]
    )
    task = create_task(cfg)
    train, _ = task.datasets()
    model = task.build_model()
    pruner = ChannelPruner(model, task.example_input(1), task.output_layers(model), 0.1)
    space = WidthSpace(model, pruner)
    draws = _Candidates(space, grid, 0.5, 0.025, random.Random(args.seed))
    encoding = Encoding(space, len(draws.encoding.fractions))
    net = model if args.encodings == "plain" else build_pruningnet(model, pruner, encoding, 32)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    print(f"{args.encodings} encodings, grid {grid[0]:.2f}-{grid[-1]:.2f} ({len(grid)} widths), lr {args.lr}")
    for epoch in range(args.epochs):
        net.train()
        total, n, started = 0.0, 0, time.time()
        for x, y in loader:
            if args.encodings == "random":
                genes = draws.random()
                encoding.set(genes, draws.encoding.widths(genes))
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(y), n + len(y)
        print(f"epoch {epoch + 1}: training loss {total / n:.4f} ({time.time() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
