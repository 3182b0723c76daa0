"""Name -> merge method class. A method is one module plus ``@register("name")``."""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import MergeError, MergeMethod

METHODS: dict[str, type[MergeMethod]] = {}


def register(name: str):
    def deco(cls: type[MergeMethod]) -> type[MergeMethod]:
        if name in METHODS:
            raise RuntimeError(f"merge method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_options(name: str) -> dict[str, Any]:
    """Option names of a method and their defaults."""
    cls = get_method_class(name)
    return {f.name: f.default for f in dataclasses.fields(cls) if not f.name.startswith("_")}


def get_method_class(name: str) -> type[MergeMethod]:
    from . import _load_all  # noqa: F401  (imports every method module once)

    try:
        return METHODS[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None


def get_method(name: str, **options: Any) -> MergeMethod:
    """An instance of method ``name`` with ``options`` (unknown options are an error)."""
    cls = get_method_class(name)
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MergeError(f"method {name!r} has no option(s) {', '.join(unknown)}; its options: "
                         f"{', '.join(f'{k}={v!r}' for k, v in known.items()) or 'none'}")
    return cls(**options)
