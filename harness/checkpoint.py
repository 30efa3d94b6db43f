"""Run checkpoints: what a killed or preempted run needs to continue where it stopped.

One file per run configuration, ``<results_dir>/checkpoints/<key>.pt``, replaced atomically at every
epoch and phase boundary (the one before kept as ``<key>.pt.prev``) and loaded with
``weights_only=True``. While a run goes on it holds ``<key>.lock`` (``RunCheckpoint.held``), so that a
second process started on the same config (a sweep launched twice) is refused instead of sharing the file
and the MLflow run. The key hashes the composed config (less the keys that only change how a run is
shown, launched or measured), so running the same command again finds it. A finished run deletes its checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.artifacts import atomic_save
from harness.baseline import data_identity
from harness.core import distributed
from harness.core.errors import DataError, RunBusy
from harness.core.locks import LockTimeout, file_lock
from harness.core.train import NUMERICS

# Keys that change how a run is shown, launched or measured, not what it trains.
_NOT_IN_KEY = ("quiet", "resume", "skip_finished", "threads", "launcher", "measure")


def run_key(cfg: DictConfig) -> str:
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _NOT_IN_KEY}
    data["data"] = data_identity(data["data"])
    if data["prune"].get("target", "macs") == "macs":  # keys of runs made before latency targets existed stay
        data["prune"].pop("target", None), data["prune"].pop("latency_reduction", None)
    else:  # a latency target depends on where and how it is timed
        data["latency_setup"] = {"target_batch": cfg.measure.target_batch, "threads": cfg.threads}
    if data["prune"].get("allocation") == "global":  # the default: keys made before it existed stay
        data["prune"].pop("allocation")
    if data["prune"].get("normalize") is None:  # the method's own normalisation: keys made before it existed stay
        data["prune"].pop("normalize", None)
    if data.get("baseline_seed") is None:  # the run's own seed: keys made before baseline_seed existed stay
        data.pop("baseline_seed", None)
    if distributed.world_size() > 1:  # N processes train with N times the batch: another run
        data["world_size"] = distributed.world_size()
    data["numerics"] = NUMERICS  # a checkpoint of other training numerics would resume into a mixed run
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunCheckpoint:
    """The newest checkpoint and, as ``<key>.pt.prev``, the one before it: a checkpoint found corrupt at
    resume (a torn write, a full disk, a bad sector) falls back to the previous one, never half-loads."""

    lock_wait_s = 90.0  # how long a run waits for another process on its config before it is refused

    def __init__(self, cfg: DictConfig):
        self.key = run_key(cfg)
        self.path = Path(cfg.results_dir) / "checkpoints" / f"{self.key}.pt"
        self.previous = self.path.with_name(self.path.name + ".prev")
        self.note: str | None = None  # what load() had to do, for the run's log

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold this config's lock (``<key>.lock``, ``harness.core.locks``) while the block runs; rank 0 takes
        it, every rank learns the outcome. A holder that died is broken at once on its own host and after
        60 s without heartbeat from another, so a requeued SLURM job on any node waits out a dead
        predecessor (``lock_wait_s`` > 60 s). Still held after that: ``RunBusy`` naming the holder, before
        anything is read or recorded."""
        error = None
        with contextlib.ExitStack() as stack:
            if distributed.is_main():
                lock = self.path.with_suffix(".lock")
                try:
                    stack.enter_context(file_lock(lock, timeout=self.lock_wait_s))
                except LockTimeout as e:
                    host, pid = ((e.owner or "").split(" ") + ["?", "?"])[:2]
                    error = (
                        f"this config is being run now by pid {pid} on {host} (lock {lock}); wait for it to end, "
                        "or change seed= or results_dir= to run another copy"
                    )
            error = distributed.broadcast(error)
            if error:
                raise RunBusy(error)
            yield

    def load(self) -> dict | None:
        if not self.path.exists() and not self.previous.exists():
            return None
        errors = []
        for path in (self.path, self.previous):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                errors.append(f"{path} ({type(e).__name__}: {str(e).strip()[:80]})")
                continue
            if errors:
                self.note = f"checkpoint {errors[0]} is unreadable; resuming from the previous one, {path}"
            return state
        raise DataError(
            f"checkpoint {errors[0]} is unreadable and there is no good earlier one; "
            "run the same command with resume=false to start over"
        )

    def save(self, state: dict) -> None:
        if distributed.is_main():  # every rank holds the same state; rank 0 writes it
            atomic_save(state, self.path, keep_previous=self.previous)

    def clear(self) -> None:
        if not distributed.is_main():
            return
        self.path.unlink(missing_ok=True)
        self.previous.unlink(missing_ok=True)
