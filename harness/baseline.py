"""The shared baseline: trained once per task + seed + recipe, cached and reused by every method.

Cache layout: ``<results_dir>/baselines/<task>/<hash>/model.pt`` (a plain state_dict, loaded with
``weights_only=True``) and ``meta.json`` (its metrics). Writes are atomic, a lock file makes concurrent
runs train it once, and a file that fails to load is deleted and retrained, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from harness.artifacts import atomic_save
from harness.locks import file_lock

# Config keys that change what the baseline is. Paths and loader workers do not.
_DATA_IGNORED = {"root", "download", "num_workers", "check_integrity"}


def data_identity(data: dict) -> dict:
    """``data`` without a validation split's keys when there is no split, so that configs from before
    ``data.val_fraction`` existed keep their baseline and run keys."""
    if not data.get("val_fraction"):
        return {k: v for k, v in data.items() if k not in ("val_fraction", "val_seed")}
    return data


def baseline_key(cfg: DictConfig) -> str:
    data = {k: v for k, v in data_identity(OmegaConf.to_container(cfg.data, resolve=True)).items()
            if k not in _DATA_IGNORED}
    ident = {"task": cfg.task.name, "model": OmegaConf.to_container(cfg.model, resolve=True), "data": data,
             "train": OmegaConf.to_container(cfg.train, resolve=True), "seed": cfg.seed,
             "regularizer": OmegaConf.to_container(cfg.regularizer, resolve=True)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def baseline_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / "baselines" / cfg.task.name / baseline_key(cfg)


def get_or_train(cfg: DictConfig, model: nn.Module, train_fn: Callable[..., dict],
                 log: Callable[[str], None] = print) -> tuple[nn.Module, dict, bool]:
    """Load the cached baseline into ``model``, or train it with
    ``train_fn(model, resume=<state or None>, save_partial=<callable>)`` and cache it.

    Returns (model, meta, reused). Other processes needing the same baseline block on the lock and
    then reuse the result. Training progress is kept in ``partial.pt`` after every epoch, so a killed
    trainer (whose lock the OS releases) is continued by whichever run takes the lock next.
    """
    folder = baseline_dir(cfg)
    weights, meta_file, partial = folder / "model.pt", folder / "meta.json", folder / "partial.pt"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if weights.exists() and meta_file.exists():
            try:
                model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
                return model, json.loads(meta_file.read_text()), True
            except Exception as e:  # truncated, corrupted or from an older architecture
                log(f"baseline cache {weights} is unreadable ({type(e).__name__}); retraining it")
                weights.unlink(missing_ok=True)
                meta_file.unlink(missing_ok=True)
        resume = None
        if partial.exists():
            try:
                resume = torch.load(partial, map_location="cpu", weights_only=True)
                model.load_state_dict(resume["model"])
                log(f"baseline: resuming after epoch {resume['train']['epoch'] + 1} from {partial}")
            except Exception as e:
                log(f"baseline progress {partial} is unreadable ({type(e).__name__}); starting over")
                resume = None

        def save_partial(state: dict) -> None:
            atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **state}, partial)

        meta = train_fn(model, resume=resume, save_partial=save_partial)
        meta["key"] = baseline_key(cfg)
        atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        tmp = meta_file.with_name(f".meta.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, meta_file)
        partial.unlink(missing_ok=True)
        return model, meta, False
