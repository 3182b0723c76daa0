"""The model pool of pool-weighted methods: the base model (optionally) followed by the models.

Shared by the methods that weight whole models (averaging, LM-Cocktail) and by RECALL, whose
multi-model pool is "base + all experts" by default (notes section 2). The order is fixed: the base
first when it takes part, then the models oldest first, so weight vectors line up with
``pool_labels``.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import TypeVar

T = TypeVar("T")


def model_pool(base: T | None, tensors: list[T], include_base: bool) -> list[T]:
    """``[base] + tensors`` when ``include_base`` and a base is given, else ``tensors`` (a new list).

    Works for tensors (inside ``merge_tensor``) as well as model paths (inside ``prepare``)."""
    if include_base and base is not None:
        return [base, *tensors]
    return list(tensors)


def pool_labels(base: str | None, models: list[str], include_base: bool) -> list[str]:
    """Labels of the pool members, in pool order: ``"base"``, then each model's folder name (the last model is the
    newest, M_N), as the Hub names the models of a merge. A name that would repeat (two folders of the same name,
    or one called ``base``) gets its position: ``"name (model 2)"``."""
    names = [PurePath(str(m)).name or str(m) for m in models]
    taken = {"base"} if base is not None and include_base else set()
    labels = []
    for i, n in enumerate(names):
        label = n if n not in taken and names.count(n) == 1 else f"{n} (model {i})"
        taken.add(label)
        labels.append(label)
    return model_pool("base" if base is not None else None, labels, include_base)


__all__ = ["model_pool", "pool_labels"]
