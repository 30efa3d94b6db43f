"""What flows through a run's phases: its settings and plug-ins, the model so far, and the helpers they share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from harness.artifacts import pruned_payload
from harness.checkpoint import RunCheckpoint
from harness.core import distributed
from harness.core.errors import ConfigError
from harness.core.gate import GatedLoader
from harness.core.surgery import ChannelPruner, count_macs_params, eval_mode
from harness.core.train import total_epochs, train


@dataclass
class RunState:
    """One run, phase by phase: ``baseline`` -> ``prune`` -> ``finetune`` -> ``measure`` -> ``record``.

    ``resume`` is the checkpoint the run continues from (None: from the start); each phase reads its own
    stage there. The phases fill ``model`` (the network now), ``dense`` (the trained baseline, the reference
    of every comparison), ``measures`` (what pruning measured) and ``summary`` (the run's result)."""

    cfg: DictConfig
    task: object
    method: object
    regularizer: object | None
    pruner: ChannelPruner
    target: float  # the MACs (or, with latency_target, latency) reduction asked for; 0 for a method that keeps all
    latency_target: bool
    device: torch.device
    tracker: object  # harness.tracking's MlflowTracker or NullTracker
    checkpoint: RunCheckpoint
    say: Callable[[str], None]
    model: nn.Module
    resume: dict | None = None
    dense: nn.Module | None = None
    measures: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    baseline_key: str = ""
    baseline_reused: bool = False
    latency_cost: object | None = None  # a latency target's corrected cost (prune.prepare_latency_target)
    pruned_checksums: list | None = None  # a distributed run: each rank's parameter checksum after pruning
    started: float = 0.0

    def __post_init__(self) -> None:
        # wall_s sums every attempt of a resumed run (up to each one's last checkpoint), not the last alone
        self.started = time.time() - float((self.resume or {}).get("elapsed_s", 0.0))
        self.fit = partial(
            train,
            step=self.task.train_step(),
            device=self.device,
            quiet=self.cfg.quiet,
            eval_every=int(self.cfg.measure.eval_every),
        )

    def resumes_at(self, *stages: str) -> bool:
        """Whether the checkpoint the run continues from was saved at one of ``stages``."""
        return self.resume is not None and self.resume["stage"] in stages

    # --- data ---------------------------------------------------------------------------------
    def open_data(self) -> None:
        """The task's splits, the evaluation loaders and the fixed held-out batch of ``quick_score``."""
        cfg = self.cfg
        self.train_set, val_set, test_set = self.task.splits()
        self.test_loader = self.loader(test_set, max(cfg.train.batch_size, 256), False)
        self.val_loader = self.loader(val_set, max(cfg.train.batch_size, 256), False) if val_set else None
        if self.resume is None:  # logged once per run, not again on resume
            self.tracker.log_metrics(
                {
                    "data/train_samples": len(self.train_set),
                    "data/test_samples": len(test_set),
                    "data/val_samples": len(val_set) if val_set else 0,
                }
            )
        self.held_out = next(iter(self.test_loader))

    def loader(self, ds, batch_size, shuffle, seed: int | None = None):
        """A training loader (``shuffle``) gives each rank its shard in a distributed run; evaluation
        loaders give every rank the whole split. Shuffled by ``seed`` (the run's seed by default)."""
        gen = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        sampler = distributed.ShardSampler(ds, gen) if shuffle and distributed.is_distributed() else None
        loader = DataLoader(
            ds,
            batch_size=int(batch_size),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=gen,
            num_workers=int(self.cfg.data.get("num_workers", 0)),
            collate_fn=self.task.collate(),
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )
        return GatedLoader(loader)  # waits while another harness process on this machine times latency

    # --- evaluation -----------------------------------------------------------------------------
    def evaluate(self, m) -> dict:
        return self._evaluate(m, self.test_loader)

    def _evaluate(self, m, loader) -> dict:
        # A method may evaluate inside its own training loop (Group Fisher every 10th decision): the model goes
        # back to the mode it was in, or the rest of that epoch would train with BN frozen (a detector's
        # forward would return detections, not losses).
        with eval_mode(m):
            return self.task.evaluate(distributed.sync_buffers(m), loader, self.device)

    def score(self, m) -> float:
        return self.evaluate(m)[self.task.metric]

    def validate(self, m) -> float:
        """The metric on the validation split: what a method may select or search on (never the test set)."""
        if self.val_loader is None:
            raise ConfigError(
                f"method {self.cfg.method.name} needs a validation split; set data.val_fraction (e.g. 0.1)"
            )
        return self._evaluate(m, self.val_loader)[self.task.metric]

    def quick_score(self, m) -> float:
        """The metric on one fixed held-out batch: cheap enough for every pruning step."""
        return self._evaluate(m, [self.held_out])[self.task.metric]

    def macs_params(self, m) -> tuple[int, int]:
        return count_macs_params(m, self.task.example_input(1).to(self.device))

    # --- training and records -------------------------------------------------------------------
    def log_epochs(self, prefix):
        return lambda epoch, metrics: self.tracker.log_metrics({f"{prefix}/{k}": v for k, v in metrics.items()}, epoch)

    def train_with_regularizer(self, m, seed: int | None = None, **kwargs):
        """Train with the regulariser's layers attached (ANL), and detach them afterwards."""
        hooks = list(kwargs.pop("hooks", []))
        if self.regularizer is not None:
            hooks.append(self.regularizer.attach(m))
        try:
            return self.fit(m, **kwargs, hooks=hooks, seed=self.cfg.seed if seed is None else seed)
        finally:
            if self.regularizer is not None:
                self.regularizer.detach()

    def finetune_epochs(self) -> int:
        return total_epochs(self.cfg.finetune) if self.method.finetunes else 0

    def save_checkpoint(self, stage: str, model, train_state: dict | None = None) -> None:
        """The pruned model and the measures so far, as the checkpoint of ``stage`` (pruned, finetune)."""
        state = {
            "stage": stage,
            "mlflow_run_id": self.tracker.run_id or "",
            "measures": self.measures,
            "model": pruned_payload(model, self.task.model_spec()),
            "elapsed_s": time.time() - self.started,
        }
        if train_state is not None:
            state["train"] = train_state
        self.checkpoint.save(state)
