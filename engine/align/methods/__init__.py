"""The alignment methods, one module each, behind a registry: a new method is one module + one line in MODULES.

A method module defines its config dataclass (its knobs, declared with ``engine.align.knobs.knob``) and one
:class:`Method` subclass naming it. Everything else (the command line, config validation, the studio's
widgets, the study's sweep) reads the registry, so nothing else changes when a method is added.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect

from .base import Context, Method

MODULES = (  # one line per method, in the order the command line and the studio list them
    "nabla",
    "refl",
    "draft",
    "alignprop",
    "ddpo",
    "grpo",
    "nft",
    "dpo",
    "dgpo",
)

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Adds a method class to the registry after checking what the rest of the project reads from it."""
    for attr in ("name", "title", "summary", "config_field", "config", "needs"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} does not set {attr!r}; see engine/align/methods/base.py (Method).")
    if not dataclasses.is_dataclass(cls.config):
        raise TypeError(f"{cls.__name__}.config must be a dataclass of knobs, got {cls.config!r}.")
    for other in METHODS.values():
        if other is not cls and (other.name == cls.name or other.config_field == cls.config_field):
            raise ValueError(f"{cls.__name__}: name {cls.name!r} or config group {cls.config_field!r} is taken by {other.__name__}.")
    METHODS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def method_of(module) -> type[Method]:
    """The one Method subclass a method module defines."""
    found = [c for _, c in inspect.getmembers(module, inspect.isclass)
             if issubclass(c, Method) and c is not Method and c.__module__ == module.__name__]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} must define exactly one Method subclass, found {len(found)}.")
    return found[0]


for _name in MODULES:
    register(method_of(importlib.import_module(f".{_name}", __name__)))

__all__ = ["METHODS", "Method", "Context", "register", "unregister", "method_of"]
