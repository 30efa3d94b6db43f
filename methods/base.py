"""The Method interface. A method scores channels, may add training hooks, and decides the pruning
schedule towards ``prune.flops_reduction``. It never knows which task or dataset it runs on: all it
sees is a model and a ``PruneContext``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from omegaconf import DictConfig

from harness.core.errors import ConfigError
from harness.core.registry import Registry
from harness.core.settings import instantiate
from harness.core.step import SupervisedStep, TrainStep
from harness.core.surgery import ChannelGroup, ChannelPruner, Importance
from harness.core.train import TrainingHook


@dataclass
class Reporting:
    """Where a method's numbers go (MLflow). The test split is reachable only from here and only into the
    logs: ``step(..., model)`` computes the test metric itself and logs it, never handing it to the method,
    so no method can select on the test set."""

    log_step: Callable[[int, dict], None]  # one pruning step's metrics, logged as prune/<name>
    log_metrics: Callable[[dict, int], None]  # any other metrics, by full name and step
    quick_test_metric: Callable[[nn.Module], float]  # the task metric on one fixed batch of the test split

    def step(self, step: int, metrics: dict, model: nn.Module | None = None, name: str = "acc") -> None:
        """Log a pruning step's ``metrics`` (prune/<key>); with ``model``, also its test metric on the fixed
        held-out batch, as ``name``."""
        self.log_step(step, {**metrics, name: self.quick_test_metric(model)} if model is not None else metrics)

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        self.log_metrics(metrics, step)

    def epoch_metrics(self, model: nn.Module) -> dict:
        """For a training loop's ``evaluate=``: what each of a method's own epochs logs of the test split."""
        return {"acc": self.quick_test_metric(model)}


@dataclass
class TrainingContext:
    """The task's training data, step and recipes, for a method that trains (ticks, tocks, sparse epochs,
    searches, distillation)."""

    loader: Any  # the task's training data (counts the samples a method trains on)
    loss_fn: nn.Module  # what step.loss applies to model(x) and y, for a method that needs the outputs (step.scores)
    train: Callable[..., dict] | None = None  # harness.core.train.train with device, step and quiet bound
    finetune_recipe: DictConfig | None = None  # the task's fine-tuning recipe
    train_recipe: DictConfig | None = None  # the task's baseline recipe (a method that trains from scratch)
    transfer: bool = False  # the task starts from pretrained weights (CUB): training from scratch makes no sense
    # The task's training step (batch to the device, batch to a loss: harness.core.step); None: loss_fn's
    step: TrainStep | None = None

    def __post_init__(self):
        if self.step is None:
            self.step = SupervisedStep(self.loss_fn)


@dataclass
class PruneContext:
    """What the harness gives a method for its pruning phase: what every method needs here, what only
    methods that train need in ``training``, and the logs (with the test split behind them) in ``report``."""

    pruner: ChannelPruner
    target: float  # the reduction to reach: of the MACs, or of the predicted latency with a latency target
    device: torch.device
    training: TrainingContext
    report: Reporting
    # A split carved from the training data (data.val_fraction): what a method may select or search on.
    # Both are None/raise when the run has no split; a method that needs one sets needs_validation: true.
    val_loader: Any = None
    validate: Callable[[nn.Module], float] | None = None
    # With prune.target=latency: the batch the target is measured on (measure.target_batch inputs), for a
    # method that times networks itself; None for a MACs target.
    latency_batch: torch.Tensor | None = None
    quiet: bool = False  # no progress bars
    # Iterative methods checkpoint their schedule with save_state(dict of tensors/plain values) and,
    # after a kill or a requeue, find it again in resume_state.
    save_state: Callable[[dict], None] = lambda state: None
    resume_state: dict | None = None

    def rng_state(self) -> dict:
        """torch's RNG and the training loader's shuffling generator, for a method's checkpoint, so that a
        resumed schedule draws what an uninterrupted one would have drawn."""
        generator = getattr(self.training.loader, "generator", None)
        return {"rng": torch.get_rng_state(), "loader_rng": generator.get_state() if generator is not None else None}

    def restore_rng(self, state: dict) -> None:
        """Undo ``rng_state``: set torch's RNG and the loader's generator back to what ``state`` saved."""
        torch.set_rng_state(state["rng"])
        generator = getattr(self.training.loader, "generator", None)
        if generator is not None and state.get("loader_rng") is not None:
            generator.set_state(state["loader_rng"])

    def require_validation(self, why: str) -> None:
        """Stop before any training when a method needs the validation split and the run has none."""
        if self.val_loader is None:
            raise ConfigError(f"{why} needs a validation split: set data.val_fraction (e.g. 0.1)")


METHODS: Registry[type[Method]] = Registry("method", "methods")


def register_method(cls: type[Method]) -> type[Method]:
    """The one decorator a new method needs: ``@register_method`` over its class (in any module of
    methods/, or of a package that declares the entry point group ``harness.methods``)."""
    return METHODS.register(cls)


REGULARIZERS: Registry[type] = Registry("regularizer", "methods")


def register_regularizer(cls: type) -> type:
    """A regulariser of every training phase (``regularizer=<name>``): a TrainingHook with ``attach(model)``
    and ``detach()``, a ``name``, a ``description`` and ``settings`` (an instance of that dataclass, filled from
    ``regularizer.*``, is passed to its constructor)."""
    return REGULARIZERS.register(cls)


class Method:
    """A method: its ``name`` (what ``method=`` selects), a one-line ``description``, and its own
    ``settings`` (a dataclass of ``harness.core.settings.setting`` fields: the ``method.*`` keys, with
    defaults, ranges and help). Named presets of those settings live in harness/conf/method/*.yaml."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    settings: ClassVar[type | None] = None
    presets_only: ClassVar[bool] = False  # True: only presets select it (its settings have no useful default)
    prunes: ClassVar[bool] = True
    finetunes: ClassVar[bool] = True  # fine-tune after prune(); NoPruning turns it off
    # True for a method rebuilt from a paper's text without public code: tagged reconstruction=true in MLflow,
    # marked in `list` and in every `compare` table
    reconstruction: ClassVar[bool] = False
    # False for a method that chooses widths by its own schedule (not through ChannelPruner.prune_to_target):
    # prune.allocation=knapsack is refused for it rather than silently ignored
    uses_allocation: ClassVar[bool] = True
    # prune.normalize when the run leaves it null: what the channel scores are divided by (harness.core.costs)
    default_normalize: ClassVar[str] = "none"
    # False for a method whose choice no per-channel cost can change (one uniform rate per layer, width
    # searches): prune.normalize set for it is refused instead of ignored.
    uses_normalize: ClassVar[bool] = True
    # True for a method that needs more than the task's training step: model(x) as one tensor of class
    # scores on (input, label) batches (distillation, knockoff or probe inputs, adversarial masks, a
    # PruningNet). A task whose step has no such scores (a detector) refuses it in one line.
    needs_scores: ClassVar[bool] = False

    def __init__(self, cfg: DictConfig):
        # The method's own config node, checked, as an instance of its settings dataclass (None without any):
        # ``self.settings.power`` on the instance, the dataclass itself on the class (``type(self).settings``).
        self.settings = instantiate(type(self).settings, cfg)

    def check_model(self, model: nn.Module) -> None:
        """Refuse (ConfigError, one line) before any training a model this method's criterion cannot score."""

    def check_target(self, model: nn.Module, pruner: ChannelPruner, target: float) -> None:
        """Refuse (ConfigError, one line) before any training a target or settings this method cannot meet."""

    def refuse_tied_units(self, groups: dict[str, ChannelGroup], what: str) -> None:
        """For a method that chooses single channels (``what`` it does): refuse a model whose channel
        ``groups`` go in units (a grouped convolution's positions, GhostNet's concatenated primary/cheap pairs)."""
        tied = [key for key, g in groups.items() if g.units]
        if tied:
            raise ConfigError(
                f"{self.name} {what}, which channels tied in units cannot follow (a grouped convolution, or "
                f"GhostNet's concatenated primary/cheap pairs; group {tied[0]}); choose another method or model"
            )

    def importance(self) -> Importance:
        """The channel criterion: a callable group -> one score per channel (lower goes first)."""
        raise NotImplementedError

    def prune(self, model: nn.Module, ctx: PruneContext) -> nn.Module:
        """Default schedule: one shot, global ranking, straight to the target."""
        model = ctx.pruner.prune_to_target(model, self.importance(), ctx.target)
        ctx.report.step(1, ctx.pruner.cost_metrics(ctx.pruner.reduction(model)), model)
        return model

    def finetune_hooks(self) -> list[TrainingHook]:
        return []
