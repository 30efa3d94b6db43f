"""One training epoch of the harness against a bare PyTorch loop, on real CIFAR-10 images.

    python benchmarks/epoch_overhead.py [--model resnet56] [--rounds 5] [--data ../shared/data/cifar10-dev]

Both sides train the same model (copies of one initialisation) on the same 4,065 images of
shared/data/cifar10-dev, with the same augmentation (random crop with 4-pixel padding, horizontal
flip, normalisation), batch 128, SGD-Nesterov. The bare side is torchvision's CIFAR10 (its md5 check
skipped) + a DataLoader +
the textbook loop. The harness side is what ``python -m harness run`` does per epoch: the task's
datasets and loader, ``harness.core.train.train`` with a method hook (slimming's BN sub-gradient), the
progress bar drawn, per-epoch MLflow logging, and (the second harness column) the per-epoch
evaluation on the 1,020 validation images that produces the logged accuracy curve. Epochs are
interleaved (bare, harness, harness + eval, bare, ...) so that all see the same machine load; the
medians and their ratios are printed and written to results/bench/epoch_overhead.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10-dev"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "epoch_overhead.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import torchvision.transforms as T

    from harness.config import compose
    from harness.core.train import train
    from harness.latency.backends import environment
    from harness.tracking import MlflowTracker
    from methods.slimming import BNSparsity
    from tasks import create_task
    from tasks.cifar import _dataset_class
    from tasks.models import create_model

    cfg = compose(
        ["task=resnet56", "budget=cifar10_dev", f"model={args.model}", f"data.root={args.data}", "train.epochs=1"]
    )
    task = create_task(cfg)
    train_set, val_set = task.datasets()
    gen = torch.Generator().manual_seed(0)
    harness_loader = torch.utils.data.DataLoader(
        train_set, batch_size=128, shuffle=True, generator=gen, num_workers=int(cfg.data.num_workers)
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=256)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    # torchvision's CIFAR10 without its md5 check (the subset's sums differ from the official archive).
    bare_set = _dataset_class(10)(
        args.data,
        train=True,
        transform=T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)]
        ),
    )
    bare_loader = torch.utils.data.DataLoader(bare_set, batch_size=128, shuffle=True)

    torch.manual_seed(0)
    init = create_model(args.model, 10)
    models = {name: copy.deepcopy(init) for name in ("bare", "harness", "harness + eval")}
    loss_fn = nn.CrossEntropyLoss()
    tmp = Path(tempfile.mkdtemp())
    tracker = MlflowTracker(f"sqlite:///{tmp / 'mlflow.db'}", "bench", tmp / "mlruns")
    tracker.start({"bench": "epoch_overhead"}, {})
    opt = torch.optim.SGD(models["bare"].parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def bare():
        model = models["bare"]
        model.train()
        for x, y in bare_loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()

    def harness(evaluate: bool):
        model = models["harness + eval" if evaluate else "harness"]
        sink = io.StringIO()
        sink.isatty = lambda: True  # the progress bar is drawn, as on a terminal
        with contextlib.redirect_stderr(sink):
            train(
                model,
                harness_loader,
                cfg.train,
                loss_fn=loss_fn,
                device=torch.device("cpu"),
                hooks=[BNSparsity(1e-5)],
                seed=0,
                desc="bench",
                evaluate=(lambda m: task.evaluate(m, val_loader, torch.device("cpu"))) if evaluate else None,
                on_epoch=lambda e, m: tracker.log_metrics({f"bench/{k}": v for k, v in m.items()}, e),
            )

    sides = {"bare": bare, "harness": lambda: harness(False), "harness + eval": lambda: harness(True)}
    times = {name: [] for name in sides}
    for name, fn in sides.items():  # warm-up epoch each
        fn()
    for r in range(args.rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), file=sys.stderr, flush=True
        )
    tracker.end()
    med = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: [h / b for h, b in zip(times[name], times["bare"])] for name in ("harness", "harness + eval")}
    lines = [
        "# One training epoch: harness vs a bare PyTorch loop, real CIFAR-10 images",
        "",
        "Machine: "
        + ", ".join(f"{k} {v}" for k, v in environment().items())
        + f"; {args.threads} torch thread(s), CPU.",
        "",
        f"Command: `python benchmarks/epoch_overhead.py {' '.join(sys.argv[1:])}`",
        "",
        f"{args.model} on the 4,065 training images of shared/data/cifar10-dev (32 batches of 128, random crop "
        "+ flip + normalise, per-image PIL transforms, data.num_workers=0), SGD-Nesterov. Seconds per epoch, "
        f"median of {args.rounds} interleaved rounds after one warm-up epoch each; the overhead is the median of "
        "the per-round ratios (each harness epoch against the bare epoch of the same round).",
        "",
        "| side | s/epoch (median) | overhead vs bare (median of per-round ratios) | rounds (s) |",
        "|---|---|---|---|",
        f"| bare loop | {med['bare']:.2f} | – | {', '.join(f'{t:.2f}' for t in times['bare'])} |",
    ]
    for name in ("harness", "harness + eval"):
        lines.append(
            f"| {name} | {med[name]:.2f} | {statistics.median(ratios[name]) - 1:+.1%} | "
            f"{', '.join(f'{t:.2f}' for t in times[name])} |"
        )
    lines += [
        "",
        "`harness`: harness.core.train.train with a method hook, the progress bar and per-epoch MLflow "
        "logging; `harness + eval`: the same plus the per-epoch evaluation on the 1,020 validation images "
        "(what `run` does to log its accuracy curves).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
