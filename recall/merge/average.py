"""Uniform weight averaging ("model soup" / parameter averaging).

Reference: Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022 (arXiv 2203.05482); the "parameter
averaging" baseline of the RECALL paper and MergeLM's ``average_merging``.

    merged = (1 / |P|) * sum_{theta in P} theta,   P = the models (plus the base, if ``include_base``)

Options:
- ``include_base`` (default ``False``): whether the base model, when one is given, joins the
  average. The soup / MergeLM / FusionBench "simple average" averages the fine-tuned models only,
  so the default leaves the base out; with no base given the option has no effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import MergeError, MergeMethod, opt
from .pool import model_pool
from .registry import register


def mean_of(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise mean of same-shape tensors, summed one at a time (no stacked copy); a new tensor."""
    if not tensors:
        raise MergeError("nothing to average: pass at least one model")
    out = tensors[0].clone()
    for t in tensors[1:]:
        out.add_(t)
    return out.div_(len(tensors))


@register("average")
@dataclass
class Average(MergeMethod):
    """Uniform average of the models' parameters (optionally with the base's)."""

    label = "Average"

    elementwise = True

    include_base: bool = opt(False, bool, doc="the base model, when given, joins the average")

    needs_base: ClassVar[bool] = False
    reference: ClassVar[str] = ("Wortsman et al., Model soups, ICML 2022 (arXiv 2203.05482): uniform parameter "
                                "averaging")

    def merge_tensor(self, name, layer, base, tensors):
        return mean_of(model_pool(base, tensors, self.include_base))
