"""A plain training loop in the spirit of torchvision's references/classification/train.py.

Methods and regularisers plug in through ``TrainingHook``: an extra loss term, and a call after
``backward()`` (for sub-gradient updates). The loop stops at the first non-finite loss.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from harness.core import distributed
from harness.core.errors import NumericalError
from harness.core.gate import gated
from harness.core.schedules import SCHEDULES  # noqa: F401  (named there for the config check, implemented here)
from harness.core.step import SupervisedStep, TrainStep

# The version of the training numerics: part of every baseline key and run key, so that a cache or checkpoint
# made by code that trains other weights from the same config is never reused. Raise it with any change that
# alters what a seeded run draws or computes (golden hashes: tests/test_numerics.py).
#   1: up to a482e41. tqdm.auto's asyncio tqdm calls iter() on the iterable it is given; handed a DataLoader,
#      that built a throwaway iterator each epoch, which drew a base seed from the loader's generator before
#      the real iterator drew its own and then the shuffle: every epoch's order came after one extra draw.
#   2: from a482e41 on. The loop's iterable is a generator (latency.gate.gated), which iter() leaves untouched:
#      one draw, then the shuffle, as a DataLoader does alone.
NUMERICS = 2


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators from ``seed`` (each phase of a run starts so)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingHook:
    """Base class for what a method or regulariser adds to training. Both methods are optional."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        return None

    def after_backward(self, model: nn.Module) -> None:
        pass


def make_optimizer(params: Iterable[nn.Parameter], recipe: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay, nesterov=bool(recipe.nesterov)
    )


def total_epochs(recipe: DictConfig) -> int:
    """The recipe's epochs plus its constant-lr tail stage (GBN's ResNet-56 fine-tune: 40 + 10)."""
    return int(recipe.epochs) + int(recipe.get("tail_epochs") or 0)


def lr_factor(recipe: DictConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at each iteration, as a multiple of ``recipe.lr``:

    - ``cosine``: lr -> 0; ``step``: × gamma at each of ``milestones`` (epochs); ``constant``;
      ``triangular``: min_lr -> lr at mid-training -> min_lr (the Gate Decorator fine-tune);
      ``onecycle``: linear warm-up from 0 over ``warmup_epochs`` (15% of the epochs when 0), then cosine to 0.
    - ``warmup_epochs`` > 0 scales the first iterations of any other schedule linearly up from 0.
    - ``tail_epochs`` more epochs at the constant ``tail_lr`` follow the schedule.
    """
    total = max(1, int(recipe.epochs) * steps_per_epoch)
    warm = int(float(recipe.get("warmup_epochs") or 0) * steps_per_epoch)
    kind, lr = recipe.schedule, float(recipe.lr)
    if kind == "onecycle" and not warm:
        warm = max(1, int(0.15 * total))
    milestones = [m * steps_per_epoch for m in recipe.get("milestones") or []]
    half = max(1, total // 2)
    min_ratio = float(recipe.get("min_lr") or 0.0) / lr

    def shape(i: int) -> float:
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * i / total))
        if kind == "onecycle":
            rest = max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * max(0, i - warm) / rest))
        if kind == "step":
            return float(recipe.gamma) ** sum(i >= m for m in milestones)
        if kind == "triangular":  # torch's CyclicLR, one cycle of ``total`` iterations
            up = i / half if i <= half else (total - i) / max(1, total - half)
            return min_ratio + (1 - min_ratio) * max(0.0, up)
        return 1.0

    def factor(i: int) -> float:
        if i >= total and recipe.get("tail_epochs"):
            return float(recipe.tail_lr) / lr
        ramp = min(1.0, (i + 1) / warm) if warm and i < warm else 1.0
        return shape(min(i, total)) * ramp

    return factor


def make_scheduler(
    opt: torch.optim.Optimizer, recipe: DictConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule (``lr_factor``) through torch's LambdaLR."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe, steps_per_epoch))


class CountingLoader:
    """A loader that counts the samples it yields, so that the training a method spends before
    fine-tuning (tocks, ticks, sparse epochs) is reported in passes over the training set."""

    def __init__(self, loader, samples: int = 0):
        self.loader, self.samples = loader, samples

    def __iter__(self):
        for batch in self.loader:
            self.samples += len(batch[0]) * distributed.world_size()  # every rank's shard: passes over the set
            yield batch

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # generator, dataset, batch_size... of the wrapped loader
        return getattr(self.loader, name)

    @property
    def epochs(self) -> float:
        return self.samples / max(1, len(self.loader.dataset))


def progress(iterable: Iterable, *, desc: str, quiet: bool, total: int | None = None) -> Iterable:
    """``iterable`` with a progress bar; each item is also a pause point while another harness run on the
    machine times latency (``harness.core.gate``): a method's long loops (ticks, candidates, groups) pause
    there as its data loaders do."""
    from tqdm.auto import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    # tqdm.auto's tqdm calls iter() on what it is given at construction: it must be the generator, never the
    # loader itself (a throwaway DataLoader iterator draws from the loader's generator and, with workers,
    # starts them; that was NUMERICS 1).
    return tqdm(
        gated(iterable),
        desc=desc,
        total=total,
        leave=False,
        dynamic_ncols=True,
        disable=quiet or not sys.stderr.isatty(),
    )


def train(
    model: nn.Module,
    loader: Iterable,
    recipe: DictConfig,
    *,
    loss_fn: nn.Module | None = None,
    step: TrainStep | None = None,
    device: torch.device,
    hooks: list[TrainingHook] = (),
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    params: Iterable[nn.Parameter] | None = None,
    desc: str = "train",
    quiet: bool = False,
    epochs: int | None = None,
    seed: int | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    eval_every: int = 1,
) -> dict:
    """Train ``model`` for ``recipe.epochs`` plus its tail (or ``epochs``). After every ``eval_every``-th
    epoch and the last, ``evaluate(model)`` adds to the epoch's metrics; after each epoch
    ``on_epoch(epoch, metrics)`` is called, then ``checkpoint(state)`` with what ``resume=``
    needs to continue after that epoch. With ``seed``, each epoch's randomness (shuffling, augmentation,
    noise) depends only on (seed, epoch), so a resumed run repeats an uninterrupted one exactly.
    Returns the last epoch's metrics.

    In a distributed run the model trains inside DistributedDataParallel; parameters trained beside the
    module (``params`` it does not own, e.g. GBN's gates) have their gradients averaged here, and BN
    statistics are taken from rank 0 after each epoch, so every rank ends with the same model.

    A batch becomes a loss through ``step`` (the task's training step; ``loss_fn`` alone means
    ``loss_fn(model(x), y)``)."""
    step = step if step is not None else SupervisedStep(loss_fn)
    epochs = total_epochs(recipe) if epochs is None else epochs
    params = list(params if params is not None else model.parameters())
    opt = make_optimizer(params, recipe)
    owned = {id(p) for p in model.parameters()}
    outside = [p for p in params if id(p) not in owned]
    net = distributed.wrap(model, device)
    sched = make_scheduler(opt, recipe, len(loader)) if epochs else None
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        start = resume["epoch"] + 1
    metrics: dict = {}
    for epoch in range(start, epochs):
        if seed is not None:
            _seed_epoch(loader, seed * 100_003 + epoch)
        model.train()
        loss_sum, n = 0.0, 0
        bar = progress(loader, desc=f"{desc} {epoch + 1}/{epochs}", quiet=quiet)
        for index, batch in enumerate(bar):
            batch = step.to_device(batch, device)
            loss = step.loss(net, batch)
            for hook in hooks:
                extra = hook.extra_loss(model)
                if extra is not None:
                    loss = loss + extra
            value = distributed.mean_scalar(loss.item())  # a NaN on any rank stops every rank
            if not math.isfinite(value):
                raise NumericalError(
                    f"{desc}: loss became {value} at epoch {epoch + 1}, step {index + 1}; "
                    f"lower the learning rate ({desc.split()[0]}.lr) or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(outside)
            for hook in hooks:
                hook.after_backward(model)
            opt.step()
            sched.step()
            size = step.size(batch)
            loss_sum += value * size
            n += size
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        distributed.sync_buffers(model)
        metrics = {"train_loss": loss_sum / max(n, 1), "lr": opt.param_groups[0]["lr"]}
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            metrics.update(evaluate(model))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if checkpoint is not None:
            checkpoint({"epoch": epoch, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    return metrics


def _seed_epoch(loader, seed: int) -> None:
    # The loader's generator (shuffling, and the shard order in a distributed run) is the same on every
    # rank; torch's global RNG (augmentation, noise) differs per rank, as each rank sees other images.
    torch.manual_seed(seed + 1_000_003 * distributed.rank())
    generator = getattr(loader, "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
