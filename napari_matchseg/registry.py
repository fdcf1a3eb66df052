"""Registries of the pluggable models (retrievers, proposers, refiners): a name, a class, its options, its weights.

An entry names its class as ``"module:Class"`` and is imported on first use, so listing the names (``--help``, the
plugin's combos) imports no torch. Every user-facing list of choices and options reads these tables: adding a model
is one new file and one :meth:`Registry.register` call (see docs/adding-a-model.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Option:
    """One constructor keyword of a model and the command-line flag that sets it."""

    flag: str  # e.g. "--sam2-model"; several entries may share one flag (and then one value)
    param: str  # the keyword the class takes
    default: Any = None
    help: str = ""
    choices: tuple | None = None
    type: Callable | None = None  # bool: a switch; None: a string


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    target: str | type  # "package.module:Class" (imported on first use), or the class itself
    description: str
    options: tuple[Option, ...] = ()
    weights: tuple[str, ...] = ()  # names in weights.REGISTRY the entry may need
    takes_device: bool = True
    shares_model: str | None = None  # a proposer and a refiner of the same family can share one loaded model
    retriever: str | None = None  # a proposer's own retriever: chosen for it unless the user names another
    title: str = ""  # how messages and the plugin name it ("MatchSeg"); the name when empty

    @property
    def label(self) -> str:
        return self.title or self.name

    def load(self) -> type:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, values: dict[str, Any] | None = None, device: str | None = "auto", **extra):
        """An instance with the options' defaults, overridden by ``values`` (keyed by param) and ``extra``."""
        kwargs = {o.param: o.default for o in self.options}
        kwargs.update({k: v for k, v in (values or {}).items() if k in kwargs})
        kwargs.update(extra)
        if self.takes_device:
            kwargs["device"] = device
        return self.load()(**kwargs)


class Registry:
    """Name -> :class:`Entry`, in registration order (the first is the default)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, entry: Entry) -> Entry:
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise InputError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}") from None

    def options(self) -> list[Option]:
        """Every entry's options, one per flag (the first registration of a shared flag gives its help)."""
        seen: dict[str, Option] = {}
        for e in self:
            for o in e.options:
                seen.setdefault(o.flag, o)
        return list(seen.values())

    def owners(self, flag: str) -> list[Entry]:
        return [e for e in self if any(o.flag == flag for o in e.options)]
