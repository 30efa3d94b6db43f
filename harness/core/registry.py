"""One registry decorator per kind of plug-in, and discovery without hand-kept lists: every module of the
plug-ins' package is imported, then every entry point of the group ``harness.<kind>s`` (so that a user's
own package can add a method or a task by declaring an entry point)."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from harness.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, key: Callable[[T], str] = lambda obj: obj.name):
        self.kind, self.package, self.key = kind, package, key
        self.entries: dict[str, T] = {}
        self._discovered = False

    def register(self, obj: T) -> T:
        """The decorator: ``@register_method`` over a class registers it under its ``name``."""
        name = self.key(obj)
        if name in self.entries and self.entries[name] is not obj:
            other = self.entries[name]
            if (other.__module__, other.__qualname__) != (obj.__module__, obj.__qualname__):  # not a reload
                raise ValueError(f"two {self.kind}s named {name!r}: {other.__module__} and {obj.__module__}")
        self.entries[name] = obj
        return obj

    def discover(self) -> None:
        """Import every module of the package and every entry point of ``harness.<kind>s``, once."""
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.walk_packages(package.__path__, f"{self.package}."):
            importlib.import_module(info.name)
        from importlib.metadata import entry_points

        for ep in entry_points(group=f"harness.{self.kind}s"):
            ep.load()

    def names(self) -> list[str]:
        self.discover()
        return sorted(self.entries)

    def get(self, name: str) -> T:
        """The entry named ``name``; an unknown name is one line with the closest names."""
        self.discover()
        if name not in self.entries:
            close = difflib.get_close_matches(str(name), self.entries, n=3, cutoff=0.6)  # method.name=0 is an int
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; {hint}known: {', '.join(sorted(self.entries))}")
        return self.entries[name]
