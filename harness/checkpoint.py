"""Run checkpoints: what a killed or preempted run needs to continue where it stopped.

One file per run configuration, ``<results_dir>/checkpoints/<key>.pt``, replaced atomically at every
epoch and phase boundary and loaded with ``weights_only=True``. The key hashes the composed config
(less the keys that only change how a run is shown or where it logs), so running the same command
again finds it. A finished run deletes its checkpoint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness.artifacts import atomic_save

# Keys that change how a run is shown, launched or measured, not what it trains.
_NOT_IN_KEY = ("quiet", "resume", "skip_finished", "threads", "launcher", "measure")


def run_key(cfg: DictConfig) -> str:
    data = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunCheckpoint:
    def __init__(self, cfg: DictConfig):
        self.path = Path(cfg.results_dir) / "checkpoints" / f"{run_key(cfg)}.pt"

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file is never trusted: start over
            self.path.unlink(missing_ok=True)
            return None

    def save(self, state: dict) -> None:
        atomic_save(state, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
