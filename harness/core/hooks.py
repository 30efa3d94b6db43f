"""Forward hooks that several methods share: per-channel scaling (gates, masks, knock-off mixing), a
feature tap (keep named outputs), a set of hooks removed together, and freezing parameters for a while."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn as nn

Hook = Callable[[nn.Module, tuple, torch.Tensor], torch.Tensor | None]


def per_channel(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``vector`` (one value per channel) shaped to broadcast over ``like``'s channel dimension (dim 1)."""
    return vector.view(1, -1, *([1] * (like.dim() - 2)))


def channel_scaler(scale: Callable[[], torch.Tensor]) -> Hook:
    """A forward hook multiplying a layer's output by ``scale()``, one factor per channel. ``scale`` is
    called at every forward pass, so gates and masks can change between passes."""

    def hook(module, inputs, output):
        return output * per_channel(scale(), output)

    return hook


class HookSet:
    """Forward hooks registered on named submodules, removed together (``remove`` is idempotent)."""

    def __init__(self, model: nn.Module, hooks: dict[str, Hook] | Iterable[tuple[str, Hook]]):
        items = hooks.items() if isinstance(hooks, dict) else hooks
        self.handles = [model.get_submodule(name).register_forward_hook(hook) for name, hook in items]

    def __bool__(self) -> bool:
        return bool(self.handles)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class FeatureTap:
    """Keeps the outputs of named modules from the last forward pass."""

    def __init__(self, model: nn.Module, names: list[str]):
        self.outputs: dict[str, torch.Tensor] = {}
        self.names = names
        self.hooks = HookSet(model, {n: self._keep(n) for n in names})

    def _keep(self, name: str) -> Hook:
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook

    def features(self) -> list[torch.Tensor]:
        return [self.outputs[n] for n in self.names]

    def remove(self) -> None:
        self.hooks.remove()


@contextlib.contextmanager
def frozen(params: Iterable[nn.Parameter], except_for: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """``params`` stop requiring gradients (but ``except_for``, which do) for the block; every flag is
    restored afterwards, also on an error."""
    saved = {p: p.requires_grad for p in params}
    for p in saved:
        p.requires_grad_(False)
    for p in except_for:
        saved.setdefault(p, p.requires_grad)
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
