"""TIES-merging: TrIm, Elect Sign & merge.

Reference: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023
(arXiv 2306.01708); official code prateeksr/ties-merging.

For task vectors tau_i = theta_i - theta_base:

1. Trim: keep the top-``density`` fraction of each tau_i's entries by magnitude, zero the rest.
2. Elect: per entry, the sign of the total mass ``sum_i trimmed_tau_i`` (an entry whose mass is
   exactly 0 takes the tensor's majority sign, as in the official code).
3. Disjoint mean: per entry, the mean of the trimmed values that agree with the elected sign
   (zeros and disagreeing values excluded; 0 where none agree).
4. merged = theta_base + lam * disjoint mean.

Options (paper defaults, Sec. 5 / official code: "top-k = 20%, lambda = 1" when no validation
set is used to tune them):
- ``density`` (default ``0.2``): fraction of each task vector kept, in (0, 1] (0 would keep nothing and
  return the base).
- ``lam`` (default ``1.0``): scaling of the merged task vector, > 0.

Deviation: trimming is per tensor (each parameter's top 20%), not over the whole flattened model as
in the official code. mergekit's ``ties`` does the same; it is what lets the merge stream one tensor
at a time, and it keeps 20% of every matrix instead of letting a few large-delta tensors take the
whole budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MergeMethod, interval, opt, task_vectors
from .registry import register

DEFAULT_DENSITY = 0.2
DEFAULT_LAM = 1.0
DENSITY = interval(0, 1, lo_open=True)  # density 0 trims every entry: the merge would be the base


def trim(tv: torch.Tensor, density: float) -> torch.Tensor:
    """``tv`` with all but its top-``density`` fraction of entries (by magnitude) set to 0; a new tensor.

    Keeps ``int(density * numel)`` entries (more only when magnitudes tie at the threshold)."""
    n = tv.numel()
    keep = int(density * n)
    if keep >= n:
        return tv.clone()
    if keep <= 0:
        return torch.zeros_like(tv)
    mag = tv.abs()
    threshold = mag.flatten().kthvalue(n - keep + 1).values
    return torch.where(mag >= threshold, tv, torch.zeros_like(tv))


def elect_sign(tvs: torch.Tensor) -> torch.Tensor:
    """Elected sign (+1 / -1) per entry of stacked task vectors ``tvs`` [n_models, ...]: the sign of the
    summed mass; entries with zero mass take the majority sign of the whole tensor (+1 on a tie)."""
    sign = torch.sign(tvs.sum(dim=0))
    majority = 1.0 if float(sign.sum()) >= 0 else -1.0
    return torch.where(sign == 0, torch.full_like(sign, majority), sign)


def disjoint_mean(tvs: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over models of the entries of ``tvs`` [n_models, ...] whose sign agrees with ``sign``
    (zeros never count); 0 where no model agrees."""
    agree = torch.where(sign > 0, tvs > 0, tvs < 0)
    selected = torch.where(agree, tvs, torch.zeros_like(tvs))
    count = agree.sum(dim=0).clamp_(min=1).to(tvs.dtype)
    return selected.sum(dim=0) / count


def ties_combine(base: torch.Tensor, tvs: list[torch.Tensor], density: float, lam: float) -> torch.Tensor:
    """TIES on one tensor: trim each task vector, elect signs, disjoint mean, ``base + lam * mean``."""
    stacked = torch.stack([trim(tv, density) for tv in tvs])
    merged = disjoint_mean(stacked, elect_sign(stacked))
    return base + lam * merged


@register("ties")
@dataclass
class Ties(MergeMethod):
    """TIES-merging with per-tensor trimming."""

    label = "TIES"

    density: float = opt(DEFAULT_DENSITY, float, DENSITY, "fraction of each task vector kept (0 would keep none)")
    lam: float = opt(DEFAULT_LAM, float, interval(0, lo_open=True), "scaling of the merged task vector")

    needs_base: ClassVar[bool] = True
    reference: ClassVar[str] = ("Yadav et al., TIES-Merging: Resolving Interference When Merging Models, "
                                "NeurIPS 2023 (arXiv 2306.01708)")

    def merge_tensor(self, name, layer, base, tensors):
        return ties_combine(base, task_vectors(base, tensors, self.name), self.density, self.lam)
