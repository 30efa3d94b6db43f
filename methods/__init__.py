"""Methods: each registers itself with ``@register_method`` (methods/base.py) and is found by discovery
(every module here, then the ``harness.methods`` entry points). ``create_method(cfg)`` builds the one
``cfg.method`` names (a preset names its implementation with ``impl``)."""

from __future__ import annotations

from methods.anl import create_regularizer  # noqa: F401
from methods.base import METHODS, Method, PruneContext, register_method  # noqa: F401


def method_class(cfg_method) -> type[Method]:
    """The class a method config node selects: its ``impl`` (presets), else its ``name``."""
    return METHODS.get(cfg_method.get("impl") or cfg_method.name)


def create_method(cfg) -> Method:
    return method_class(cfg.method)(cfg.method)
