"""MagMax: per element, the task-vector entry of largest magnitude.

Reference: Marczak et al., "MagMax: Leveraging Model Merging for Seamless Continual Learning",
ECCV 2024 (arXiv 2407.06322); official code danielm1405/magmax (``merge_max_abs``).

    tau_i = theta_i - theta_base
    tau_max[j] = tau_k[j],  k = argmax_i |tau_i[j]|
    merged = theta_base + lam * tau_max

Options:
- ``lam`` (default ``0.5``): scaling of the selected task vector, > 0. 0.5 is the value of the
  official experiment scripts (``merge_splitted.py``: ``(merge_max_abs, [0.5])``; ``merge_8datasets.py``
  per FusionBench's ``config/method/magmax/magmax.yaml``), which the paper reports to be robust across
  settings. Use ``lam=1`` to get a single expert back exactly (the closed-form check in the tests).

Ties in magnitude go to the earliest model (as ``argmax`` does in the official code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MergeMethod, interval, opt, task_vectors
from .registry import register

DEFAULT_LAM = 0.5


def max_magnitude(tvs: list[torch.Tensor]) -> torch.Tensor:
    """Per entry, the value of largest absolute value across ``tvs`` (earliest wins ties); computed one
    vector at a time, without stacking. A new tensor."""
    best = tvs[0].clone()
    best_abs = best.abs()
    for tv in tvs[1:]:
        a = tv.abs()
        take = a > best_abs
        best = torch.where(take, tv, best)
        best_abs = torch.where(take, a, best_abs)
    return best


@register("magmax")
@dataclass
class MagMax(MergeMethod):
    """base + lam * (per-entry maximum-magnitude task vector)."""

    label = "MagMax"

    elementwise = True

    lam: float = opt(DEFAULT_LAM, float, interval(0, lo_open=True), "scaling of the selected task vector")

    needs_base: ClassVar[bool] = True
    reference: ClassVar[str] = ("Marczak et al., MagMax: Leveraging Model Merging for Seamless Continual Learning, "
                                "ECCV 2024 (arXiv 2407.06322)")

    def merge_tensor(self, name, layer, base, tensors):
        return base + self.lam * max_magnitude(task_vectors(base, tensors, self.name))
