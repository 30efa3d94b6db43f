"""Every CNN family x every method that applies: prune to 30% fewer MACs and run a forward pass, or
refuse with one line (a ConfigError, exit 2 in a run). Anything else is a defect and is listed as such.

    python scripts/family_matrix.py [--families ...] [--methods ...] [--out results/family_matrix.md]

Untrained weights, 32x32 inputs, 10 classes, a synthetic loader of 64 CIFAR-shaped samples for the
methods that train while they prune (Gate Decorator's ticks, slimming's sparse epoch, SCOP's β, ACP's
fitness), each at a token budget: this checks that each method's scoring and schedule work on the
family's structure (grouped and depthwise convolutions, LayerNorm, squeeze-excite, dense concatenation),
not accuracy. Methods that need a teacher (GAL, AIP) train a student against it for one epoch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config import compose  # noqa: E402
from harness.core.errors import ConfigError  # noqa: E402
from harness.core.surgery import ChannelPruner  # noqa: E402
from harness.core.train import train  # noqa: E402
from methods import create_method  # noqa: E402
from methods.base import PruneContext, Reporting, TrainingContext  # noqa: E402
from tasks.models import create_model  # noqa: E402

FAMILIES = [
    "resnet20",
    "vgg16_cifar",
    "tv:resnet18",
    "tv:mobilenet_v2",
    "tv:mobilenet_v3_small",
    "tv:efficientnet_b0",
    "tv:mnasnet0_5",
    "timm:convnext_atto",
    "timm:regnetx_002",
    "timm:resnext26ts",
    "timm:ghostnet_100",
    "tv:shufflenet_v2_x0_5",
]
# Each method at a token budget (the keys are the methods' own; see harness/conf/method/).
METHODS = {
    "l1": [],
    "random": [],
    "slimming": ["method.sparse_epochs=1"],
    "gbn": ["method.tick_samples=64", "method.tock_epochs=0", "method.tick_p=0.05"],
    "scop": ["method.epochs=1", "method.recalibrate_samples=64"],
    "acp": ["method.particles=2", "method.cycles=1", "method.fitness_epochs=0", "method.samples=64"],
    "gal": ["method.epochs=1"],
    "aip": ["method.steps=1", "method.recover_epochs=1"],
    "gfp": ["method=gfp_cpu", "method.channels_per_step=32", "method.interval=2"],
    "metapruning": [
        "method.pruningnet_epochs=1",
        "method.population=3",
        "method.generations=1",
        "method.parents=2",
        "method.mutations=1",
        "method.crossovers=1",
        "method.recalibration_batches=1",
        "method.grid=[0.25,0.5,0.75,1.0]",
        "method.window=0.1",
    ],
    "ga": ["method.generations=2", "method.kd_epochs=0.5", "method.sensitivity_samples=32"],
    "wgates": ["method.epochs=1"],
    "functional": ["method.probe=64"],
}


def context(pruner: ChannelPruner, method_cfg, target: float) -> PruneContext:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    held_out = DataLoader(data, batch_size=64)
    cfg = compose(["task=resnet56", "finetune.epochs=1"])

    def accuracy(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            x, y = next(iter(held_out))
            return (m(x).argmax(1) == y).float().mean().item()

    return PruneContext(
        pruner=pruner,
        target=target,
        device=torch.device("cpu"),
        training=TrainingContext(
            loader=loader,
            loss_fn=nn.CrossEntropyLoss(),
            train=partial(train, loss_fn=nn.CrossEntropyLoss(), device=torch.device("cpu"), quiet=True),
            finetune_recipe=cfg.finetune,
        ),
        report=Reporting(
            log_step=lambda step, m: None, log_metrics=lambda m, step=None: None, quick_test_metric=accuracy
        ),
        val_loader=held_out,
        validate=accuracy,
        quiet=True,
    )


def one(family: str, method: str, target: float = 0.3, overrides: tuple[str, ...] = ()) -> dict:
    """One cell: ``method`` (at its token budget in METHODS, then ``overrides``) on ``family``."""
    started = time.perf_counter()
    torch.manual_seed(0)
    try:
        preset = METHODS[method][:1] and METHODS[method][0].startswith("method=")  # a named preset (gfp_cpu)
        budget = METHODS[method] if preset else [f"method={method}", *METHODS[method]]
        cfg = compose([*budget, *overrides])
        model = create_model(family, 10).eval()
        example = torch.randn(1, 3, 32, 32)
        last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
        pruner = ChannelPruner(model, example, [last], 0.1)
        pruning = create_method(cfg)
        pruning.check_model(model)  # the checks a run does before training
        pruning.check_target(model, pruner, target)
        pruner.max_reduction(model)
        model = pruning.prune(model, context(pruner, cfg.method, target)).eval()
        reduction = pruner.reduction(model)
        with torch.no_grad():
            shape = tuple(model(torch.randn(2, 3, 32, 32)).shape)
        ok = shape == (2, 10) and reduction >= target - 1e-9
        outcome = "pruned" if ok else f"wrong: output {shape}, reduction {reduction:.3f}"
        detail = f"-{reduction:.1%} MACs"
    except ConfigError as e:
        outcome, detail = "refused (exit 2)", str(e)
    except Exception as e:  # a defect: it would be a traceback in a run
        outcome, detail = (
            "DEFECT",
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}",
        )
        traceback.print_exc()
    return {
        "family": family,
        "method": method,
        "outcome": outcome,
        "detail": detail,
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=FAMILIES)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out", default="results/family_matrix.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--cells",
        type=Path,
        help="a JSON-lines file of finished cells: those in it are reused, new ones appended (resumable; "
        "several processes over different --families can share it)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    done = {}
    if args.cells and args.cells.exists():
        for line in args.cells.read_text().splitlines():
            cell = json.loads(line)
            done[(cell["family"], cell["method"])] = cell
    rows = []
    for family in args.families:
        for method in args.methods:
            r = done.get((family, method))
            if r is None:
                r = one(family, method)
                if args.cells:
                    with open(args.cells, "a") as f:
                        f.write(json.dumps(r) + "\n")
            rows.append(r)
            print(f"{family:24s} {method:9s} {r['outcome']:16s} {r['detail'][:90]} ({r['seconds']:.1f} s)", flush=True)
    import pandas as pd

    table = pd.DataFrame(rows)
    grid = table.pivot(index="family", columns="method", values="outcome").reindex(args.families)[args.methods]
    budgets = "; ".join(f"{m} {' '.join(o) or 'defaults'}" for m, o in METHODS.items())
    text = "\n".join(
        [
            "# Every family x every method: prune to 30% fewer MACs and run a forward pass",
            "",
            f"`python scripts/family_matrix.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
            "",
            *(
                [
                    f"Cells from {args.cells} (each computed once, by one of the processes that shared the file, "
                    "over some of the families; their seconds were timed on a machine those processes shared).",
                    "",
                ]
                if args.cells
                else []
            ),
            "Untrained weights, 32x32 inputs, 10 classes, 64 synthetic samples for the methods that train while "
            f"they prune (token budgets: {budgets}). "
            f"{sum(table['outcome'] == 'pruned')} of {len(table)} pruned, "
            f"{sum(table['outcome'].str.startswith('refused'))} refused with one line, "
            f"{sum(table['outcome'] == 'DEFECT')} defects. Time over all cells {table['seconds'].sum() / 60:.1f} "
            f"min at {args.threads} thread(s) per process.",
            "",
            grid.to_markdown(),
            "",
            "## Every cell",
            "",
            table.assign(seconds=table["seconds"].map(lambda s: f"{s:.1f}")).to_markdown(index=False),
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return int((table["outcome"] == "DEFECT").any())


if __name__ == "__main__":
    raise SystemExit(main())
