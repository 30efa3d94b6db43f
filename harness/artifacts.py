"""Saving and reloading pruned models without pickled code.

A pruned model is saved as its registry spec (model name, class count, kwargs), the per-layer widths
that pruning changed, the residual blocks a method removed whole (each becomes its shortcut), and a
plain state_dict. ``load_pruned`` rebuilds the dense architecture from the
registry, shrinks each layer to the saved widths and loads the weights, with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from harness.core.errors import ConfigError
from harness.core.surgery import ShortcutOnly, replace_module
from tasks.models import create_model

FORMAT = "harness.pruned/v1"
_WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


def atomic_save(obj, path: str | os.PathLike, keep_previous: str | os.PathLike | None = None) -> None:
    """torch.save to a temporary file, then rename: a kill mid-write never leaves a valid-looking file.
    With ``keep_previous``, the file being replaced is moved there once the new one is fully written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    finally:  # a full disk fails torch.save half-way: leave no partial file behind
        tmp.unlink(missing_ok=True)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of a state_dict's names, dtypes, shapes and bytes: equal only for bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def pruned_payload(model: nn.Module, spec: dict) -> dict:
    """The registry spec, the per-layer widths and a plain state_dict: no pickled code."""
    layers = {
        name: {a: int(getattr(m, a)) for a in _WIDTH_ATTRS if isinstance(getattr(m, a, None), int)}
        for name, m in model.named_modules()
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    replaced = {name: m.spec() for name, m in model.named_modules() if isinstance(m, ShortcutOnly)}
    return {
        "format": FORMAT,
        "spec": spec,
        "layers": {k: v for k, v in layers.items() if v},
        "state_dict": state,
        "replaced": replaced,
    }


def dense_from_payload(payload: dict) -> nn.Module:
    """The unpruned architecture a pruned-model payload came from (fresh weights)."""
    spec = payload["spec"]
    return create_model(spec["name"], spec["num_classes"], **spec.get("kwargs", {}))


def model_from_payload(payload: dict) -> nn.Module:
    """Rebuild the dense architecture from the registry, shrink each layer to the saved widths, load."""
    if payload.get("format") != FORMAT:
        raise ValueError(f"not a pruned-model payload ({FORMAT})")
    model = dense_from_payload(payload)
    for name, r in payload.get("replaced", {}).items():  # whole blocks a method removed (GAL)
        if r.get("kind") != "shortcut_only":
            raise ValueError(f"unknown replacement {r.get('kind')!r} for {name} in a pruned-model payload")
        replace_module(model, name, ShortcutOnly(model.get_submodule(name), r["shortcut"], r["relu"]))
    for name, attrs in payload["layers"].items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    for key, tensor in payload["state_dict"].items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        current = getattr(module, leaf)
        if current is not None and current.shape != tensor.shape:
            resized = torch.empty_like(tensor)
            setattr(module, leaf, nn.Parameter(resized) if isinstance(current, nn.Parameter) else resized)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model


def save_pruned(model: nn.Module, spec: dict, path: str | os.PathLike) -> None:
    atomic_save(pruned_payload(model, spec), path)


def input_shape(payload: dict, path) -> tuple[int, ...]:
    """The (C, H, W) a pruned-model file records, for timing or exporting it without its task."""
    shape = payload.get("spec", {}).get("input_shape")
    if not shape:
        raise ConfigError(f"{path} does not record its input shape (saved by an older harness); re-save it")
    return tuple(shape)


def fetch_pruned(
    source: str, tracking_uri: str | None, results_dir: str | os.PathLike, tmp: Path
) -> tuple[Path, str | None, str | None]:
    """(the pruned-model file, the MLflow run id or None, the store's uri or None) for ``source``: a
    ``pruned_model.pt`` path, or a run id whose ``model/pruned_model.pt`` is downloaded into ``tmp``."""
    import re

    path = Path(source).expanduser()
    if path.is_file():
        return path, None, None
    if not re.fullmatch(r"[0-9a-f]{32}", source):
        raise ConfigError(f"{source!r} is neither a file nor an MLflow run id (32 hex digits)")
    from harness.tracking import TrackingError, open_store, store_uri

    uri = store_uri(tracking_uri, results_dir)
    try:
        local = open_store(uri).download_artifact(source, "model/pruned_model.pt", tmp)
    except TrackingError as e:
        raise ConfigError(f"{e}; check the run id, tracking.uri= or results_dir=") from None
    return local, source, uri


def read_payload(path: str | os.PathLike) -> dict:
    """A pruned-model file's payload (``weights_only=True``); DataError (one line) if it is not one."""
    from harness.core.errors import DataError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert isinstance(payload, dict) and payload.get("format") == FORMAT
    except Exception:
        raise DataError(f"{path} is not a pruned-model file saved by a run (model/pruned_model.pt)") from None
    return payload


def load_pruned(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model saved by ``save_pruned`` as a working ``nn.Module`` in eval mode."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pruned-model file ({FORMAT})")
    return model_from_payload(payload).eval()
