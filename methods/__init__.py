"""Method registry: ``create_method(cfg)`` builds the method named by ``cfg.method.name``."""
from __future__ import annotations

from methods.anl import create_regularizer  # noqa: F401
from methods.base import Method, PruneContext  # noqa: F401


def _registry() -> dict[str, type[Method]]:
    from methods.aip import AIP
    from methods.anl import AnlOnly
    from methods.gal import GAL
    from methods.scop import SCOP
    from methods.acp import ACP
    from methods.gbn import GateDecorator
    from methods.l1 import L1LayerwiseMethod, L1Method
    from methods.random import NoPruning, RandomMethod
    from methods.slimming import NetworkSlimming

    return {m.name: m for m in (GateDecorator, L1Method, L1LayerwiseMethod, NetworkSlimming, RandomMethod,
                                NoPruning, AnlOnly, GAL, AIP, SCOP, ACP)}


def create_method(cfg) -> Method:
    methods = _registry()
    name = cfg.method.get("impl") or cfg.method.name  # presets name their implementation
    if name not in methods:
        raise KeyError(f"no method class named {name!r}; known: {', '.join(sorted(methods))}")
    return methods[name](cfg.method)
