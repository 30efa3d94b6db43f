"""Settings that a plug-in (a method, a regulariser) declares beside its class, and the one checker
that validates a config node against them before anything runs.

A plug-in's settings are a dataclass whose fields are made with ``setting``: a default, a kind (``int``,
``real``, ``bool``, ``str``, ``list``, or the words of ``choices``), a documented range and a one-line help.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from harness.core.errors import ConfigError

KINDS = ("int", "real", "bool", "str", "list", "choice")


def setting(
    default: Any,
    kind: str | None = None,
    interval: str | None = None,
    *,
    choices: tuple[str, ...] = (),
    nullable: bool = False,
    help: str = "",
) -> Any:
    """A dataclass field with what the checker and the docs need. ``interval`` as "[a, b]", "(a, b)",
    "[a, inf)"; ``nullable`` lets the value be null (the default may then be None)."""
    kind = kind or ("choice" if choices else None)
    if kind not in KINDS:
        raise ValueError(f"setting kind must be one of {KINDS}, got {kind!r}")
    meta = {
        "kind": kind,
        "interval": interval,
        "choices": tuple(choices),
        "nullable": nullable or default is None,
        "help": help,
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    name: str
    kind: str
    default: Any
    interval: str | None
    choices: tuple[str, ...]
    nullable: bool
    help: str

    def accepted(self) -> str:
        """What the docs and `list` print: "integer in [1, 100]", "one of sum, mean", "true or false"."""
        text = {
            "int": f"integer in {self.interval}",
            "real": f"number in {self.interval}",
            "bool": "true or false",
            "str": "text",
            "list": "list",
            "choice": f"one of {', '.join(self.choices)}",
        }[self.kind]
        return text + (" or null" if self.nullable else "")


def describe(settings_cls: type | None) -> list[SettingInfo]:
    """Every declared setting of a settings dataclass (or none for ``None``), in declaration order."""
    if settings_cls is None:
        return []
    out = []
    for f in dataclasses.fields(settings_cls):
        m = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append(SettingInfo(f.name, m["kind"], default, m["interval"], m["choices"], m["nullable"], m["help"]))
    return out


def instantiate(settings_cls: type | None, node: Any) -> Any:
    """The settings dataclass filled from ``node`` (a checked config mapping; keys it lacks keep their
    defaults, keys that are not settings, such as ``name``, are left out): plain Python values, lists and
    mappings included, so that a plug-in reads ``self.settings.power`` typed. None for ``None``."""
    if settings_cls is None:
        return None
    from omegaconf import DictConfig, ListConfig, OmegaConf

    def plain(value: Any) -> Any:
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value

    names = {f.name for f in dataclasses.fields(settings_cls)}
    return settings_cls(**{k: plain(node[k]) for k in node if k in names})


def defaults(settings_cls: type | None) -> dict[str, Any]:
    """{name: default} of every declared setting: the plug-in's config node before presets and overrides."""
    return {s.name: s.default for s in describe(settings_cls)}


def check_range(key: str, value: Any, kind: str, interval: str, nullable: bool = False) -> None:
    """Raise ConfigError unless ``value`` is a finite ``kind`` ("int" or "real") inside ``interval``."""
    if value is None and nullable:
        return
    what = "an integer" if kind == "int" else "a number"
    null = " or null" if nullable else ""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and math.isfinite(value) and (kind == "real" or float(value).is_integer())
    if ok:
        lo, hi = (part.strip() for part in interval[1:-1].split(","))
        lo_v, hi_v = float(lo), float(hi)
        ok = (value >= lo_v if interval[0] == "[" else value > lo_v) and (
            value <= hi_v if interval[-1] == "]" else value < hi_v
        )
    if not ok:
        raise ConfigError(f"{key} must be {what} in {interval}{null}, got {value!r}")


def check(prefix: str, settings_cls: type | None, node: Any) -> None:
    """Validate ``node`` (a config mapping) against the declared settings; integral floats of integer
    settings become ints in ``node`` (``epochs=3.0`` is 3 everywhere after). One-line ConfigError."""
    for s in describe(settings_cls):
        if s.name not in node:
            continue
        key, value = f"{prefix}.{s.name}", node[s.name]
        if value is None and s.nullable:
            continue
        if s.kind in ("int", "real"):
            check_range(key, value, s.kind, s.interval, s.nullable)
            if s.kind == "int" and isinstance(value, float):
                node[s.name] = int(value)
        elif s.kind == "choice" and value not in s.choices:
            raise ConfigError(f"{key} must be one of {', '.join(s.choices)}, got {value!r}")
        elif s.kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        elif s.kind == "str" and not isinstance(value, str):
            raise ConfigError(f"{key} must be text, got {value!r}")
        elif s.kind == "list" and not _is_list(value):
            raise ConfigError(f"{key} must be a list, e.g. [a,b], got {value!r}")


def _is_list(value) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, (list, tuple, ListConfig))
