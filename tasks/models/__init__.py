"""One model registry and one factory, in the style of timm's ``create_model``.

Names are either registered here (``resnet56``, ``digits_resnet``, ``vgg16_cifar``...) or carry a
library prefix: ``tv:<name>`` builds a torchvision model and ``timm:<name>`` a timm model, both
without downloading weights. Models never import training code.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch.nn as nn

from harness.core.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def _unknown(kind: str, name: str, known) -> ConfigError:
    """One line for an unknown model name, with the closest known names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return ConfigError(f"unknown {kind} model {name!r}; {hint}check model.name= (python -m harness list --models)")


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a model by name with a fresh ``num_classes``-way head and no downloaded weights."""
    if name.startswith("tv:"):
        import torchvision.models as tvm

        if name[3:] not in tvm.list_models():
            raise _unknown("torchvision", name[3:], tvm.list_models())
        model = tvm.get_model(name[3:], weights=None, num_classes=num_classes, **kwargs)
        if name[3:].startswith("shufflenet_v2"):
            from tasks.models.shufflenet import with_shuffle_layers

            model = with_shuffle_layers(model)  # the same function, its shuffle traceable by the surgery
        return model
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ConfigError("timm is not installed; pip install timm to use timm: models") from None
        if not timm.is_model(name[5:]):
            raise _unknown("timm", name[5:], timm.list_models())
        return timm.create_model(name[5:], pretrained=False, num_classes=num_classes, **kwargs)
    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(
            f"unknown model {name!r}; {hint}choose one of {', '.join(sorted(_REGISTRY))}, "
            "or tv:<torchvision name> or timm:<timm name>"
        )
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _discover() -> None:
    """Import every module of this package (each registers its models) and the ``harness.models`` entry points."""
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    for info in pkgutil.iter_modules(__path__, f"{__name__}."):
        importlib.import_module(info.name)
    for ep in entry_points(group="harness.models"):
        ep.load()
