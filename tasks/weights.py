"""Pretrained weights from ``model.weights=<path>``: torchvision or timm checkpoints, loaded safely."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from harness.core.errors import ConfigError


def load_weights(model: nn.Module, path: Path, strict_head: bool) -> None:
    """Load a torchvision or timm checkpoint (a state_dict, possibly under 'state_dict' or 'model',
    possibly with 'module.' prefixes) with ``weights_only=True``. With ``strict_head=False`` the
    layers whose shapes differ (a new classifier head) keep their fresh initialisation."""
    if not path.is_file():
        raise ConfigError(f"model.weights={path} does not exist; give the path of a torchvision or timm checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"model.weights={path} cannot be loaded with weights_only=True ({type(e).__name__}); "
            "save a plain state_dict"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched and strict_head:
        raise ConfigError(
            f"model.weights={path}: shapes differ for {', '.join(mismatched[:3])}; "
            "is it a checkpoint of the same model and class count?"
        )
    state = {k: v for k, v in state.items() if k not in mismatched}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in mismatched]
    if missing or unexpected:
        raise ConfigError(
            f"model.weights={path} does not fit {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
