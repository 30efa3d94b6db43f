"""One model registry and one factory, in the style of timm's ``create_model``.

Names are either registered here (``resnet56``, ``digits_resnet``, ``vgg16_cifar``...) or carry a
library prefix: ``tv:<name>`` builds a torchvision model and ``timm:<name>`` a timm model, both
without downloading weights. Models never import training code.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    _import_builtin_models()
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name with a fresh ``num_classes``-way head and no downloaded weights."""
    if name.startswith("tv:"):
        import torchvision.models as tvm

        try:
            return tvm.get_model(name[3:], weights=None, num_classes=num_classes, **kwargs)
        except ValueError as e:
            raise KeyError(f"unknown torchvision model {name[3:]!r}: {e}") from None
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise KeyError("timm is not installed; pip install timm to use timm: models") from None
        if not timm.is_model(name[5:]):
            raise KeyError(f"unknown timm model {name[5:]!r}")
        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes, **kwargs)
    _import_builtin_models()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}, "
                       "or tv:<torchvision name> or timm:<timm name>")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _import_builtin_models() -> None:
    from . import digits_net, resnet_cifar, segmentation, vgg_cifar  # noqa: F401  (registration side effect)
