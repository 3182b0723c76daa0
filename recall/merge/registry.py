"""Name -> merge method class. A method is one module of ``recall.merge`` plus ``@register("name")``:
the registry imports every module of the package once, so a new module is found without any other edit."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any

from .base import MergeError, MergeMethod, option_specs

METHODS: dict[str, type[MergeMethod]] = {}


def register(name: str):
    def deco(cls: type[MergeMethod]) -> type[MergeMethod]:
        if name in METHODS:
            raise RuntimeError(f"merge method {name!r} registered twice")
        undeclared = [f.name for f in dataclasses.fields(cls)
                      if f.init and not f.name.startswith("_") and "option" not in f.metadata]
        if undeclared:
            raise RuntimeError(f"merge method {name!r}: declare option(s) {', '.join(undeclared)} with "
                               f"recall.merge.base.opt (type, allowed values, meaning)")
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_options(name: str) -> dict[str, Any]:
    """Option names of a method and their defaults."""
    return {k: default for k, (default, _) in option_specs(get_method_class(name)).items()}


@functools.cache
def load_all() -> dict[str, type[MergeMethod]]:
    """Import every module of ``recall.merge`` (so that each ``@register`` runs); returns ``METHODS``."""
    from .. import merge

    for info in pkgutil.iter_modules(merge.__path__):  # sorted by module name
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{merge.__name__}.{info.name}")
    return METHODS


def get_method_class(name: str) -> type[MergeMethod]:
    load_all()
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
