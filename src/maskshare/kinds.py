"""Every kind the method offers, by name, in one place: grouping kinds and ablations.

A kind is a class that owns its behaviour (a grouping kind: `maskshare.grouping.base.Grouping`;
an ablation: `maskshare.masks.ablations.AblationMethod`). Adding one is its file plus one line
here. The built-in kinds are named by where they live (`module:Class`) and imported on first
use, so `config` can check a name without importing the parts that implement it; a kind made
elsewhere (a plugin, a test) registers its class at run time:

    with GROUPINGS.registered(MyGrouping):     # MyGrouping.kind = "mine"
        run_pipeline(cfg_with_grouping_kind_mine)

`KindName` subclasses (`config.GroupingKind`, `config.Ablation`) are the names as config
values: plain strings (so YAML, JSON and the run hash see exactly the string) that only a
registered name can become.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic_core import core_schema


class Registry:
    """Names -> classes of one family of kinds."""

    def __init__(self, what: str, builtin: dict[str, str]):
        self.what = what
        self._where = dict(builtin)  # name -> "module:Class", imported on first `get`
        self._classes: dict[str, type] = {}

    def names(self) -> list[str]:
        return list(self._where) + [n for n in self._classes if n not in self._where]

    def check(self, name: str) -> str:
        if name not in self._where and name not in self._classes:
            raise ValueError(f"unknown {self.what} {name!r}: use one of "
                             + ", ".join(self.names()))
        return name

    def get(self, name: str) -> type:
        """The class of kind `name` (ValueError for an unknown one)."""
        name = self.check(str(name))
        if name not in self._classes:
            module, attr = self._where[name].split(":")
            self._classes[name] = getattr(importlib.import_module(module), attr)
        return self._classes[name]

    def classes(self) -> list[type]:
        return [self.get(n) for n in self.names()]

    @contextmanager
    def registered(self, cls: type, name: str | None = None) -> Iterator[type]:
        """Register `cls` under `name` (default: its `kind`) for the duration of a block."""
        name = str(name or cls.kind)
        if name in self._where or name in self._classes:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._classes[name] = cls
        try:
            yield cls
        finally:
            del self._classes[name]


GROUPINGS = Registry("grouping kind", {
    "attention": "maskshare.grouping.attention:AttentionGrouping",
    "template": "maskshare.grouping.base:TemplateGrouping",
    "single": "maskshare.grouping.base:SingleGrouping",
    "from-end": "maskshare.grouping.base:FromEndGrouping",
    "roles": "maskshare.grouping.base:RolesGrouping",
})

ABLATIONS = Registry("ablation", {
    "slot-mean": "maskshare.masks.ablations:SlotMean",
    "global-mean": "maskshare.masks.ablations:GlobalMean",
    "zero": "maskshare.masks.ablations:Zero",
    "counterfactual": "maskshare.masks.ablations:Counterfactual",
})


class _Names(type):
    def __iter__(cls) -> Iterator[KindName]:
        """Every registered name, as an enum's members iterate."""
        return iter([cls(n) for n in cls.registry.names()])


class KindName(str, metaclass=_Names):
    """A registered kind's name: a `str` that checks its value against `registry`. As a
    pydantic field type it validates from a string and serialises as that string."""

    registry: ClassVar[Registry]

    def __new__(cls, value: Any) -> KindName:
        value = str(value)
        cls.registry.check(value)
        return super().__new__(cls, value)

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str.__str__(self)!r})"

    @classmethod
    def names(cls) -> list[str]:
        return cls.registry.names()

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str.__str__))
