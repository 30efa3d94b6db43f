"""The shared baseline: trained once per task + seed + recipe, cached and reused by every method.

Cache layout: ``<results_dir>/baselines/<task>/<hash>/model.pt`` (a plain state_dict, loaded with
``weights_only=True``) and ``meta.json`` (its metrics). Writes are atomic, a lock file makes concurrent
runs train it once, and a file that fails to load is deleted and retrained, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from harness.artifacts import atomic_save
from harness.core import distributed
from harness.core.locks import file_lock
from harness.core.train import NUMERICS

# Config keys that change what the baseline is. Paths and loader workers do not.
_DATA_IGNORED = {"root", "download", "num_workers", "check_integrity"}


def data_identity(data: dict) -> dict:
    """``data`` without a validation split's keys when there is no split, so that configs from before
    ``data.val_fraction`` existed keep their baseline and run keys."""
    if not data.get("val_fraction"):
        return {k: v for k, v in data.items() if k not in ("val_fraction", "val_seed")}
    return data


def baseline_seed(cfg: DictConfig) -> int:
    """The seed the baseline trains with: ``baseline_seed`` when set, else the run's own."""
    return int(cfg.seed if cfg.get("baseline_seed") is None else cfg.baseline_seed)


def baseline_key(cfg: DictConfig) -> str:
    data = {
        k: v for k, v in data_identity(OmegaConf.to_container(cfg.data, resolve=True)).items() if k not in _DATA_IGNORED
    }
    ident = {
        "task": cfg.task.name,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": data,
        "train": OmegaConf.to_container(cfg.train, resolve=True),
        "seed": baseline_seed(cfg),
        "regularizer": OmegaConf.to_container(cfg.regularizer, resolve=True),
        "numerics": NUMERICS,  # other training numerics, other weights from the same config
    }
    if distributed.world_size() > 1:  # trained by N processes, each on its shard: N times the batch
        ident["world_size"] = distributed.world_size()
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def baseline_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_dir) / "baselines" / cfg.task.name / baseline_key(cfg)


def get_or_train(
    cfg: DictConfig, model: nn.Module, train_fn: Callable[..., dict], log: Callable[[str], None] = print
) -> tuple[nn.Module, dict, bool]:
    """Load the cached baseline into ``model``, or train it with
    ``train_fn(model, resume=<state or None>, save_partial=<callable>)`` and cache it.

    Returns (model, meta, reused). Other processes needing the same baseline block on the lock and
    then reuse the result. Training progress is kept in ``partial.pt`` after every epoch, so a killed
    trainer (whose lock the OS releases) is continued by whichever run takes the lock next.

    In a distributed run rank 0 holds the lock, reads and writes the cache; every rank trains, and
    rank 0's weights (cached, or where training resumes) are copied to the others.
    """
    folder = baseline_dir(cfg)
    weights, meta_file, partial = folder / "model.pt", folder / "meta.json", folder / "partial.pt"
    main = distributed.is_main()
    with file_lock(folder.with_name(folder.name + ".lock")) if main else contextlib.nullcontext():
        meta = distributed.broadcast(_load_cached(model, weights, meta_file, log) if main else None)
        if meta is not None:
            return distributed.broadcast_state(model), meta, True
        resume = _load_partial(model, partial, log) if main else None
        resume = distributed.broadcast({k: v for k, v in resume.items() if k != "model"} if resume else None)
        distributed.broadcast_state(model)

        def save_partial(state: dict) -> None:
            if main:
                atomic_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **state}, partial)

        meta = train_fn(model, resume=resume, save_partial=save_partial)
        meta["key"] = baseline_key(cfg)
        if main:
            atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
            tmp = meta_file.with_name(f".meta.json.tmp{os.getpid()}")
            tmp.write_text(json.dumps(meta, indent=2))
            os.replace(tmp, meta_file)
            partial.unlink(missing_ok=True)
        return model, meta, False


def _load_cached(model: nn.Module, weights: Path, meta_file: Path, log) -> dict | None:
    """The cached baseline's meta, its weights loaded into ``model``; None (and the files gone) if unreadable."""
    if not (weights.exists() and meta_file.exists()):
        return None
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return json.loads(meta_file.read_text())
    except Exception as e:  # truncated, corrupted or from an older architecture
        log(f"baseline cache {weights} is unreadable ({type(e).__name__}); retraining it")
        weights.unlink(missing_ok=True)
        meta_file.unlink(missing_ok=True)
        return None


def _load_partial(model: nn.Module, partial: Path, log) -> dict | None:
    """Training progress of a baseline whose trainer was killed, its weights loaded into ``model``."""
    if not partial.exists():
        return None
    try:
        resume = torch.load(partial, map_location="cpu", weights_only=True)
        model.load_state_dict(resume["model"])
        log(f"baseline: resuming after epoch {resume['train']['epoch'] + 1} from {partial}")
        return resume
    except Exception as e:
        log(f"baseline progress {partial} is unreadable ({type(e).__name__}); starting over")
        return None
